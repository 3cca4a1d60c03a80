"""From a width x depth sweep in the database to its scaling strategies compared at equal FLOPs.

The glue between the runs table and `analysis.strategies`: which runs count (finished ones, as for every fit),
"the loss of a run" (the experiment's rule unless another is chosen), a run's size in parameters and in training
FLOPs (`fitting.run_x`: flops_per_example x steps trained x batch size, forward pass only), and what the
bootstrap resamples (seeds, all runs of a seed together; sizes when the sweep has one seed). The CLI's
`scaletui fit --strategies` and the fit pane's strategies view both go through `compare_experiment`.

Imports the store and the analysis, never torch or textual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.forms import form
from scaletui.analysis.solve import FitOptions
from scaletui.analysis.strategies import FLOPS, PARAMS, AxisFit, Comparison, FitPlan, Grid, compare_strategies
from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import FitX, LossRule
from scaletui.services.fit_report import json_clean
from scaletui.services.fitting import AUTO, FitInputError, FitSpec, flat_config, resolve_experiment, run_x
from scaletui.store.reader import Reader

__all__ = ["DEFAULT_FORM", "FLOPS", "PARAMS", "GridRead", "StrategiesReport", "compare_experiment", "interval_text",
           "law_form", "parse_path", "plan_of", "read_grid", "resample_unit", "verdict_lines"]

#: The form every strategy is fitted with when `auto` is asked for: one form for all, so their costs compare,
#: and M2 (E + A x^-alpha) has the floor that decides whether a strategy can reach a loss at all.
DEFAULT_FORM = "M2"
StopCheck = Callable[[], bool]
Cell = tuple[int, int]


def law_form(spec: FitSpec) -> str:
    """The one-variable form every strategy (or regime) is fitted with: the forced one, or M2 for auto."""
    name = spec.form_name
    if name == AUTO:
        return DEFAULT_FORM
    if form(name).n_vars != 1:
        raise FitInputError(f"form: {name} fits two variables (N, D); strategies and regimes fit one x")
    return name


def plan_of(spec: FitSpec, name: str) -> FitPlan:
    options = FitOptions(loss=spec.loss(1), upper_bound=spec.upper_bound)
    return FitPlan(name, options, spec.n_bootstrap, spec.seed, spec.level)


def parse_path(text: str) -> tuple[Cell, ...]:
    """`"48,1;80,2;96,3"` as cells (width, depth); FitInputError naming --path otherwise."""
    cells = []
    for part in (p for p in text.split(";") if p.strip()):
        try:
            w, d = (int(v) for v in part.split(","))
        except ValueError:
            raise FitInputError(f"--path {text!r}: {part.strip()!r} is not WIDTH,DEPTH (e.g. --path \"48,1;80,2\")") \
                from None
        cells.append((w, d))
    if len(cells) < 2:
        raise FitInputError(f"--path {text!r}: a path needs at least 2 sizes, WIDTH,DEPTH;WIDTH,DEPTH;...")
    if len(set(cells)) != len(cells):
        raise FitInputError(f"--path {text!r}: a size appears twice")
    return tuple(cells)


def resample_unit(seeds: np.ndarray) -> str:
    """What a resample draws: seeds when there are several, else sizes."""
    return "seeds" if np.unique(seeds).size >= 2 else "sizes"


@dataclass(frozen=True)
class StrategiesReport:
    """One experiment's strategies compared: the comparison plus where its numbers came from."""

    experiment: str
    loss_label: str
    unit: str  # "seeds" | "sizes"
    n_runs: int
    n_skipped: int  # finished runs without a width, depth, params, flops or loss
    comparison: Comparison

    def to_json(self) -> dict[str, Any]:
        c = self.comparison
        out: dict[str, Any] = json_clean({
                       "experiment": self.experiment, "loss": self.loss_label, "resampled": self.unit,
                       "runs": self.n_runs, "skipped_runs": self.n_skipped, "form": c.form,
                       "flops": "flops_per_example x steps trained x batch_size (forward pass)",
                       "target_loss": c.target, "target_given": c.target_given, "cheapest": c.cheapest,
                       "cheapest_by_params": c.cheapest_by_params, "paired_resamples": c.paired,
                       "bootstrap": c.n_resamples, "level": c.level, "stopped": c.stopped, "notes": list(c.notes),
                       "strategies": [_strategy_json(f, c) for f in c.fits]})
        return out


def _strategy_json(f: Any, c: Comparison) -> dict[str, Any]:
    return {"name": f.strategy.name, "grows": f.strategy.kind, "sizes": [list(cell) for cell in f.strategy.cells],
            "error": f.error, "p_cheapest": c.p_cheapest.get(f.strategy.name),
            "measured": [{"width": cell[0], "depth": cell[1], "params": p, "flops": fl, "loss": loss}
                         for cell, p, fl, loss in f.cells],
            "fits": {axis: _axis_json(fit) for axis, fit in f.fits.items()}}


def _axis_json(fit: AxisFit) -> dict[str, Any]:
    return {"law": {"form": fit.law.form, **fit.law.params}, "alpha_interval": list(fit.alpha_interval),
            "cost": fit.cost, "cost_interval": list(fit.cost_interval), "reach": fit.reach, "where": fit.where,
            "x_range": list(fit.x_range)}


# ----------------------------------------------------------------------------- reading the grid


@dataclass(frozen=True)
class _Run:
    width: int
    depth: int
    params: float
    flops: float
    loss: float
    seed: int


def _run(reader: Reader, row: RunSummary, rule: LossRule) -> _Run | None:
    """A finished run's shape, sizes and loss; None when it lacks any of them."""
    flops = run_x(FitX.FLOPS, row, flat_config(reader.run_spec(row.id)))
    loss = row.loss_by(rule)
    values = (row.width, row.depth, row.params, flops, loss)
    if any(v is None for v in values) or not all(math.isfinite(float(v)) and float(v) > 0  # type: ignore[arg-type]
                                                 for v in values):
        return None
    assert row.width is not None and row.depth is not None and row.params is not None
    assert flops is not None and loss is not None
    return _Run(row.width, row.depth, float(row.params), flops, loss, row.seed if row.seed is not None else row.id)


@dataclass(frozen=True)
class GridRead:
    """An experiment's finished runs as a grid, with what the bootstrap resamples and how many runs were left out."""

    experiment: str
    loss_label: str
    grid: Grid
    unit: str  # "seeds" | "sizes"
    skipped: int


def read_grid(db_path: str | Path, experiment: str | None, spec: FitSpec) -> GridRead:
    """The grid of an experiment's finished runs; FitInputError when none has a shape, sizes and a loss."""
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        rule = spec.loss_rule or exp.loss_rule
        rows = [r for r in reader.runs(exp.name) if r.ok]
        runs = [run for r in rows if (run := _run(reader, r, rule)) is not None]
    if not runs:
        raise FitInputError(f"experiment {exp.name!r}: no finished runs with a width, depth, params, flops and "
                            f"{rule.label} ({len(rows)} finished)")
    seeds = np.array([r.seed for r in runs])
    what = resample_unit(seeds)
    unit = seeds if what == "seeds" else np.array([r.width * 100_000 + r.depth for r in runs])
    grid = Grid.build([r.width for r in runs], [r.depth for r in runs], [r.params for r in runs],
                      [r.flops for r in runs], [r.loss for r in runs], unit)
    return GridRead(exp.name, rule.label, grid, what, len(rows) - len(runs))


def compare_experiment(db_path: str | Path, experiment: str | None, spec: FitSpec, *,
                       target_loss: float | None = None, path: tuple[Cell, ...] | None = None,
                       should_stop: StopCheck | None = None) -> StrategiesReport:
    """Compare the scaling strategies of one experiment's width x depth grid (see analysis.strategies)."""
    name = law_form(spec)
    read = read_grid(db_path, experiment, spec)
    try:
        comparison = compare_strategies(read.grid, target=target_loss, path=path, plan=plan_of(spec, name),
                                        should_stop=should_stop)
    except ValueError as exc:
        what = "--path" if path is not None and "not in the sweep" in str(exc) else f"experiment {read.experiment!r}"
        raise FitInputError(f"{what}: {exc}") from None
    return StrategiesReport(read.experiment, read.loss_label, read.unit, read.grid.width.size, read.skipped,
                            comparison)


# ----------------------------------------------------------------------------- plain text


def interval_text(lo: float, hi: float, digits: int = 3) -> str:
    """"[1.2e+09, 1.5e+09]", or "-" without an interval."""
    return "-" if math.isnan(lo) else f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def verdict_lines(c: Comparison) -> list[str]:
    """Which strategy reaches the target for the fewest FLOPs, how sure, and the caveats (the CLI's lines after
    its table, the app's notes)."""
    if c.cheapest is None:
        return [f"no strategy's law reaches loss {c.target:.4g}", *c.notes]
    fit = next(f for f in c.fits if f.strategy.name == c.cheapest).fits[FLOPS]
    share = c.p_cheapest.get(c.cheapest)
    sure = f", the cheapest in {share:.0%} of resamples" if share is not None else ""
    return [f"fewest FLOPs to loss {c.target:.4g}: {c.cheapest}, {fit.cost:.4g} FLOPs "
            f"{interval_text(*fit.cost_interval)} ({fit.where}){sure}",
            "FLOPs = flops_per_example x steps trained x batch_size (forward pass); compared at equal FLOPs, so "
            "shapes whose parameters cost different compute (a ResNet's width doubling per stage) compare fairly",
            *c.notes]
