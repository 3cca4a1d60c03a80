"""From a sweep in the database to its law at every training length: exponent, ranking of sizes, crossings.

The glue between the runs and metrics tables and `analysis.regimes`. A *regime* is a training length: when the
experiment sweeps `steps`, each value is one (the loss of a run is then its loss by the experiment's rule at its
own end of training); otherwise each evaluation step that every size shares is one, and the loss of a run there
is what the rule would have reported had training ended at that step (`fitting.loss_at_steps`). x is
`FitSpec.x` (params, width, depth, or flops at that step); a size is a (width, depth) shape. The bootstrap
resamples seeds (sizes when there is one seed). `scaletui fit --regimes` and the fit pane's regimes view both go
through `regimes_experiment`.

Imports the store and the analysis, never torch or textual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.regimes import Regimes, fit_regimes
from scaletui.analysis.solve import FitOptions
from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import TEST_LOSS_METRIC, FitX, LossRule
from scaletui.services.fit_report import json_clean
from scaletui.services.fitting import FitInputError, FitSpec, flat_config, loss_at_steps, resolve_experiment, run_x
from scaletui.services.strategies import law_form, resample_unit
from scaletui.store.reader import Reader

__all__ = ["EVAL_STEP", "REGIME_X", "STEPS", "RegimesReport", "regime_lines", "regimes_experiment", "size_label"]

EVAL_STEP, STEPS = "evaluation step", "steps"  # what a regime is
#: What the law can be fitted against at each regime (examples and steps are not model sizes).
REGIME_X: tuple[str, ...] = (FitX.PARAMS, FitX.WIDTH, FitX.DEPTH, FitX.FLOPS)
StopCheck = Callable[[], bool]


def size_label(row: RunSummary) -> str:
    """"160x6" (width x depth), or the parameter count when the run has no shape."""
    return f"{row.width}x{row.depth}" if row.width is not None and row.depth is not None else f"{row.params}p"


@dataclass(frozen=True)
class _Point:
    size: str
    x: float
    loss: float
    regime: float
    seed: int


@dataclass(frozen=True)
class RegimesReport:
    """One experiment's regimes: the analysis plus where its numbers came from."""

    experiment: str
    loss_label: str
    x: str
    unit: str  # what a resample draws: "seeds" | "sizes"
    n_runs: int
    dropped_steps: tuple[int, ...]  # evaluation steps that not every size has
    regimes: Regimes

    def to_json(self) -> dict[str, Any]:
        r, t = self.regimes, self.regimes.table
        ranks = t.ranks()
        out: dict[str, Any] = json_clean({
            "experiment": self.experiment, "loss": self.loss_label, "x": self.x, "regime": r.axis,
            "resampled": self.unit, "runs": self.n_runs, "form": r.form, "dropped_steps": list(self.dropped_steps),
            "alpha_relative_range": r.alpha_rel_range, "stopped": r.stopped,
            "fits": [{"regime": f.regime, "sizes": f.n_sizes, "error": f.error,
                      "law": None if f.law is None else {"form": f.law.form, **f.law.params},
                      "alpha_interval": list(f.alpha_interval)} for f in r.fits],
            "sizes": [{"size": s, "x": float(t.x[j]), "mean_loss": t.mean[:, j].tolist(), "rank": ranks[:, j].tolist()}
                      for j, s in enumerate(t.sizes)],
            "regimes": t.regimes.tolist(), "bigger_wins_share": t.agreement().tolist(),
            "crossings": [{"bigger": c.bigger, "smaller": c.smaller, "bigger_loses_at": list(c.loses_at),
                           "bigger_wins_at": list(c.wins_at), "flips_between": [list(f) for f in c.flips]}
                          for c in r.crossings]})  # fmt: skip
        return out


def _usable(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) and v > 0 for v in values)


def _final_points(reader: Reader, rows: list[RunSummary], spec: FitSpec, rule: LossRule) -> list[_Point]:
    """`steps` swept: one point per run at its own end of training."""
    out = []
    for row in rows:
        x, loss = run_x(spec.x, row, flat_config(reader.run_spec(row.id))), row.loss_by(rule)
        if _usable(x, loss) and row.steps is not None:
            assert x is not None and loss is not None
            out.append(_Point(size_label(row), x, loss, float(row.steps), _seed(row)))
    return out


def _step_points(reader: Reader, rows: list[RunSummary], spec: FitSpec, rule: LossRule) -> list[_Point]:
    """One point per run and evaluation step (step 0 and NaN evaluations left out, as for every fit)."""
    out = []
    for row in rows:
        config = flat_config(reader.run_spec(row.id))
        for step, loss in loss_at_steps(reader.metric_series(row.id, TEST_LOSS_METRIC), rule):
            x = run_x(spec.x, row, config, step)
            if _usable(x, loss):
                assert x is not None
                out.append(_Point(size_label(row), x, loss, float(step), _seed(row)))
    return out


def _seed(row: RunSummary) -> int:
    return row.seed if row.seed is not None else row.id


def _shared(points: list[_Point]) -> tuple[list[_Point], tuple[int, ...]]:
    """Keep the regimes every size has; return them and the steps dropped."""
    by_size: dict[str, set[float]] = {}
    for p in points:
        by_size.setdefault(p.size, set()).add(p.regime)
    shared = set.intersection(*by_size.values()) if by_size else set()
    dropped = tuple(sorted(int(r) for r in set().union(*by_size.values()) - shared)) if by_size else ()
    return [p for p in points if p.regime in shared], dropped


def regimes_experiment(db_path: str | Path, experiment: str | None, spec: FitSpec, *,
                       should_stop: StopCheck | None = None) -> RegimesReport:
    """Fit the law at every training length of one experiment (see the module docstring)."""
    if spec.x not in REGIME_X:
        raise FitInputError(f"x: regimes fit the law against a model size ({', '.join(REGIME_X)}), not {spec.x}")
    name = law_form(spec)
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        rule = spec.loss_rule or exp.loss_rule
        rows = [r for r in reader.runs(exp.name) if r.ok]
        swept = len({r.steps for r in rows}) > 1
        points = (_final_points if swept else _step_points)(reader, rows, spec, rule)
    points, dropped = _shared(points)
    if not points:
        raise FitInputError(f"experiment {exp.name!r}: no training length that every size shares has a "
                            f"{rule.label} ({len(rows)} finished runs)")
    seeds = np.array([p.seed for p in points])
    unit = resample_unit(seeds)
    groups = seeds if unit == "seeds" else np.array([p.size for p in points])
    options = FitOptions(loss=spec.loss(1), upper_bound=spec.upper_bound)
    regimes = fit_regimes([p.size for p in points], [p.x for p in points], [p.loss for p in points],
                          [p.regime for p in points], groups, axis=STEPS if swept else EVAL_STEP, form=name,
                          options=options, n_resamples=spec.n_bootstrap, seed=spec.seed, level=spec.level,
                          should_stop=should_stop)
    return RegimesReport(exp.name, rule.label, spec.x, unit, len(rows), dropped, regimes)


# ----------------------------------------------------------------------------- plain text


def _steps_text(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def regime_lines(report: RegimesReport) -> list[str]:
    """alpha's movement, the steps left out and every crossing, as plain lines (the CLI's, the app's notes)."""
    r = report.regimes
    lines = []
    alphas = [f.alpha for f in r.fits if math.isfinite(f.alpha)]
    if len(alphas) >= 2:
        lines.append(f"alpha moved from {alphas[0]:.3g} to {alphas[-1]:.3g} (range {r.alpha_rel_range:.0%} of its "
                     f"median) over {len(alphas)} regimes")
    if report.dropped_steps:
        lines.append(f"steps not shared by every size, left out: {_steps_text(report.dropped_steps)}")
    lines.append(f"{len(r.crossings)} crossing(s): a bigger size losing beyond the seed noise at some "
                 f"{r.axis}s and winning at others" + (":" if r.crossings else ""))
    for c in r.crossings:
        flips = "; ".join(f"{a:g}-{b:g}" for a, b in c.flips)
        lines.append(f"  {c.bigger} vs smaller {c.smaller}: loses at {_steps_text(c.loses_at)}, wins at "
                     f"{_steps_text(c.wins_at)}; order flips between {flips}")
    return lines
