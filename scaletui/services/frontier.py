"""From a sweep with a data axis in the database to its compute-optimal frontier: N_opt(C) and D_opt(C) with
intervals, and which trained run came closest to optimal.

The glue between the runs table and `analysis.frontier` (the closed forms of Hoffmann et al. 2022, Approach 3).
`scaletui fit --frontier` goes through `frontier_experiment`. The choices, each stated in the report:

* **which runs**: finished ones (done, early_stopped), as for every fit; "the loss of a run" is the
  experiment's rule unless another is chosen.
* **N** = trainable parameters (runs.params).
* **D** = examples seen = steps trained x batch_size, repeats included. Hoffmann et al.'s D is the tokens
  seen in training (one epoch, so seen = unique there), and their data term is, in their words, the cost of
  taking only a finite number of optimisation steps; C = 6 N D prices every example *seen*. Unique examples
  (data.train_size) would give two runs of different compute the same D, and a sweep that varies only
  train_size at fixed steps spends the same compute on every D: it has no compute frontier, and is refused.
  A run that repeats its data (more than one epoch) is warned about: repeated examples are worth less than
  new ones (Muennighoff et al. 2023), so the frontier is the one of this pool of data.
* **C** = k N D with k = 3 x flops_per_example / N, the median over the runs: runs.flops_per_example counts
  the forward pass (a multiply-add is 2 FLOPs) and training costs about 3x that (forward + backward). For a
  dense net k is about 6, Hoffmann et al.'s C = 6 N D; a convolution reuses each weight at every position, so a
  ResNet's k is far above 6 and 6 N D would understate its compute. A run's own compute is
  3 x flops_per_example x D; a warning says when k differs between runs by more than 20% (then no single
  C = k N D describes the sweep and the closed form is approximate). Without flops_per_example, k = 6.
* **the law** L(N, D) = E + A/N^alpha + B/D^beta is fitted by `solve` with the two-variable objective
  (Huber 1e-3 on log residuals, Besiroglu et al. 2024), and bootstrapped by (N, D) point: a resample draws
  whole points, all seeds of a point together, like a sweep's fit draws whole sizes.

Imports the store and the analysis, never torch or textual. Nothing is stored.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.checks import fit_warnings
from scaletui.analysis.forms import FittedLaw
from scaletui.analysis.frontier import (
    HOFFMANN_K,
    Placement,
    PolicyBands,
    allocation,
    closest,
    d_opt,
    frontier_loss,
    n_opt,
    place_points,
    policy_bands,
)
from scaletui.analysis.solve import Bootstrap, FitOptions, bootstrap, fit_law
from scaletui.core.datasets import DATASETS
from scaletui.core.rows import RunSummary
from scaletui.services.fit_report import json_clean
from scaletui.services.fitting import AUTO, FitInputError, FitSpec, flat_config, resolve_experiment
from scaletui.store.reader import Reader

__all__ = [
    "FAR_BEYOND",
    "FLAG",
    "BudgetRow",
    "FrontierReport",
    "FrontierRun",
    "PointRow",
    "default_budgets",
    "frontier_experiment",
    "frontier_from_runs",
    "read_runs",
]

FLAG = "--frontier"
FORM = "CHINCHILLA"
N_PARAMS = 5  # E, A, alpha, B, beta
FAR_BEYOND = 100.0  # a budget this many times the largest run's compute is a guess (as for --predict)
K_SPREAD = 1.2  # runs whose k differ by more than this factor: no single C = k N D
D_TEXT = "examples seen = steps trained x batch_size (repeats included)"


@dataclass(frozen=True)
class FrontierRun:
    """One finished run as the frontier sees it: N, D, its training compute and its loss."""

    run_id: int
    n: float
    d: float
    compute: float | None  # 3 x flops_per_example x D; None without flops_per_example
    loss: float
    width: int | None = None
    depth: int | None = None
    steps: int | None = None
    epochs: float | None = None  # D / training-set size

    @property
    def k(self) -> float | None:
        """FLOPs per parameter per example: C / (N D)."""
        return None if self.compute is None else self.compute / (self.n * self.d)


def _train_size(row: RunSummary, config: dict[str, Any]) -> int | None:
    """The training set's size: data.train_size, else the whole split of a known dataset."""
    size = config.get("train_size") or row.train_size
    if size:
        return int(size)
    info = DATASETS.get(str(config.get("dataset") or row.dataset or ""))
    return None if info is None else info.train_examples


def _run(row: RunSummary, config: dict[str, Any], loss: float | None) -> FrontierRun | None:
    """A finished run's N, D, compute and loss; None when it lacks one of them."""
    batch, steps = config.get("batch_size"), row.step
    values = (row.params, batch, steps, loss)
    if any(v is None for v in values) or not all(math.isfinite(float(v)) and float(v) > 0  # type: ignore[arg-type]
                                                 for v in values):
        return None
    assert row.params is not None and batch is not None and steps is not None and loss is not None
    d = float(steps) * float(batch)
    fpe = row.flops_per_example
    compute = 3.0 * float(fpe) * d if fpe else None
    size = _train_size(row, config)
    return FrontierRun(row.id, float(row.params), d, compute, float(loss), row.width, row.depth, int(steps),
                       d / size if size else None)


@dataclass(frozen=True)
class _Read:
    experiment: str
    loss_label: str
    runs: list[FrontierRun]
    n_finished: int


def read_runs(db_path: str | Path, experiment: str | None, spec: FitSpec) -> _Read:
    """The finished runs of one experiment with their N, D, compute and loss."""
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        rule = spec.loss_rule or exp.loss_rule
        rows = [r for r in reader.runs(exp.name) if r.ok]
        runs = [run for r in rows if (run := _run(r, flat_config(reader.run_spec(r.id)), r.loss_by(rule)))]
    return _Read(exp.name, rule.label, runs, len(rows))


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class BudgetRow:
    """The policy at one budget: N_opt, D_opt, the frontier's loss and D_opt/N_opt, each with its interval.

    beyond: the budget / the largest run's compute. outside: which of N_opt, D_opt lies outside the range the
    sweep trained (the law is extrapolated there)."""

    compute: float
    n_opt: float
    n_interval: tuple[float, float]
    d_opt: float
    d_interval: tuple[float, float]
    loss: float
    loss_interval: tuple[float, float]
    d_per_n: float
    d_per_n_interval: tuple[float, float]
    beyond: float
    outside: tuple[str, ...] = ()

    @property
    def far(self) -> bool:
        return self.beyond > FAR_BEYOND

    def to_json(self) -> dict[str, Any]:
        return {"compute": self.compute, "N_opt": self.n_opt, "N_opt_interval": list(self.n_interval),
                "D_opt": self.d_opt, "D_opt_interval": list(self.d_interval), "loss": self.loss,
                "loss_interval": list(self.loss_interval), "D_per_N": self.d_per_n,
                "D_per_N_interval": list(self.d_per_n_interval), "beyond_largest_run": self.beyond,
                "far_beyond_the_data": self.far, "outside_the_sweep": list(self.outside)}


@dataclass(frozen=True)
class PointRow:
    """One trained (N, D), seeds averaged, placed against the frontier at its compute."""

    placement: Placement
    loss_range: tuple[float, float]  # min, max over seeds
    run_ids: tuple[int, ...]
    width: int | None
    depth: int | None
    steps: int | None
    epochs: float | None

    def to_json(self) -> dict[str, Any]:
        p = self.placement
        return {"N": p.n, "D": p.d, "compute": p.compute, "loss": p.loss, "loss_range": list(self.loss_range),
                "runs": list(self.run_ids), "width": self.width, "depth": self.depth, "steps": self.steps,
                "epochs": self.epochs, "frontier_loss": p.frontier_loss, "loss_ratio": p.ratio,
                "law_ratio": p.law_ratio, "log10_N_over_N_opt": p.log10_n_ratio}


@dataclass(frozen=True)
class FrontierReport:
    """One experiment's compute-optimal frontier: the law, the policy at each budget, the runs against it."""

    experiment: str
    loss_label: str
    law: FittedLaw
    intervals: dict[str, tuple[float, float]]
    k: float
    k_range: tuple[float, float]
    a: float
    b: float
    a_interval: tuple[float, float]
    b_interval: tuple[float, float]
    budgets: tuple[BudgetRow, ...]
    points: tuple[PointRow, ...]
    closest: int  # index into points: the smallest loss ratio
    closest_by_size: int  # the smallest |log N / N_opt(C)|
    n_runs: int
    n_skipped: int  # finished runs without params, steps, batch size or loss
    n_resamples: int  # bootstrap draws used (0: no intervals)
    n_degenerate: int  # draws without an interior optimum, left out
    level: float
    rms_log_error: float  # of the law on the runs: how well L(N, D) describes them
    boot: Bootstrap | None = field(default=None, repr=False, compare=False)
    warnings: tuple[str, ...] = ()

    @property
    def compute_text(self) -> str:
        return (f"C = k N D, k = 3 x flops_per_example / N = {self.k:.3g} (median over runs; forward FLOPs x 3 "
                "for forward + backward; Hoffmann et al.'s C = 6 N D is k = 6)")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json_clean({
            "experiment": self.experiment, "loss": self.loss_label, "form": self.law.form,
            "law": self.law.params, "intervals": {n: list(v) for n, v in self.intervals.items()},
            "N": "params", "D": D_TEXT, "compute": self.compute_text, "k": self.k, "k_range": list(self.k_range),
            "a": self.a, "b": self.b, "a_interval": list(self.a_interval), "b_interval": list(self.b_interval),
            "level": self.level, "bootstrap": self.n_resamples, "degenerate_resamples": self.n_degenerate,
            "resampled": "(N, D) points", "runs": self.n_runs, "skipped_runs": self.n_skipped,
            "rms_log_error": self.rms_log_error, "budgets": [b.to_json() for b in self.budgets],
            "points": [p.to_json() for p in self.points], "closest": self.points[self.closest].to_json(),
            "closest_by_size": self.points[self.closest_by_size].to_json(), "warnings": list(self.warnings)})
        return out


# ----------------------------------------------------------------------------- checks


def _distinct(values: Sequence[float]) -> list[float]:
    """Values more than 0.1% apart (the sizes convention of `scaletui fit`)."""
    out: list[float] = []
    for v in sorted(values):
        if not out or v > out[-1] * 1.001:
            out.append(v)
    return out


def _check_axes(runs: Sequence[FrontierRun], experiment: str, n_finished: int, loss_label: str) -> None:
    """One line naming --frontier when the runs cannot give a frontier: no runs, no data or size axis, too
    few (N, D) points for five parameters."""
    what = f"{FLAG}: experiment {experiment!r}"
    if not runs:
        raise FitInputError(f"{what}: no finished runs with params, steps trained, batch size and {loss_label} "
                            f"({n_finished} finished)")
    ds, ns = _distinct([r.d for r in runs]), _distinct([r.n for r in runs])
    if len(ds) < 2:
        raise FitInputError(f"{what}: every run saw D = {ds[0]:.4g} examples (steps x batch_size); the frontier "
                            "needs a data axis: sweep train.steps (or train.batch_size). data.train_size alone "
                            "changes which examples are seen, not how many, and so not the compute")
    if len(ns) < 2:
        raise FitInputError(f"{what}: every run has N = {ns[0]:.4g} params; the frontier needs a model-size axis "
                            "(sweep model.width or model.depth)")
    cells = len({(round(math.log(r.n), 3), round(math.log(r.d), 3)) for r in runs})
    if cells < N_PARAMS + 1:
        raise FitInputError(f"{what}: only {cells} distinct (N, D) points; L(N, D) has {N_PARAMS} parameters "
                            f"and needs at least {N_PARAMS + 1}")


def _check_spec(spec: FitSpec) -> None:
    if spec.form_name not in (AUTO, FORM):
        raise FitInputError(f"--form: {spec.form_name} fits one x; {FLAG} fits L(N, D) = {FORM} (drop --form)")
    if spec.upper_bound is not None:
        raise FitInputError(f"--upper-bound: not with {FLAG} (L(N, D) has no starting plateau to bound)")


def default_budgets(computes: Sequence[float]) -> tuple[float, ...]:
    """Without --budget: the smallest and largest run's compute, their geometric middle, and 10x the largest."""
    lo, hi = min(computes), max(computes)
    return (lo, math.sqrt(lo * hi), hi, 10.0 * hi)


def _check_budgets(budgets: Sequence[float]) -> None:
    for c in budgets:
        if not (math.isfinite(c) and c > 0):
            raise FitInputError(f"--budget {c:g}: a compute budget must be a finite number of FLOPs > 0")


# ----------------------------------------------------------------------------- fitting


def _fit(n: np.ndarray, d: np.ndarray, loss: np.ndarray, groups: np.ndarray,
         spec: FitSpec) -> tuple[FittedLaw, Bootstrap | None]:
    """L(N, D) by the one solver, with its bootstrap over (N, D) points when asked for."""
    options = FitOptions(loss=spec.loss(2))
    try:
        if spec.n_bootstrap <= 0:
            return fit_law(FORM, (n, d), loss, options=options, variables=("N", "D")), None
        boot = bootstrap(FORM, (n, d), loss, groups=groups, n_resamples=spec.n_bootstrap,
                         rng=np.random.default_rng(spec.seed), options=options)
    except ValueError as exc:
        raise FitInputError(f"{FLAG}: {exc}") from None
    return boot.law, boot


def _cells(runs: Sequence[FrontierRun]) -> dict[tuple[float, float], list[FrontierRun]]:
    """Runs grouped by (N, D): the seeds of one point."""
    out: dict[tuple[float, float], list[FrontierRun]] = defaultdict(list)
    for r in runs:
        out[(r.n, r.d)].append(r)
    return dict(sorted(out.items()))


def _k(runs: Sequence[FrontierRun]) -> tuple[float, tuple[float, float]]:
    ks = [k for r in runs if (k := r.k) is not None]
    if not ks:
        return HOFFMANN_K, (HOFFMANN_K, HOFFMANN_K)
    return statistics.median(ks), (min(ks), max(ks))


@dataclass(frozen=True)
class _Fitted:
    """The law fitted to the runs' points, its bootstrap, and what the draws say about the policy."""

    law: FittedLaw
    boot: Bootstrap | None
    intervals: dict[str, tuple[float, float]]
    policy: PolicyBands | None  # a, b and the draws used / left out (budgets are banded per row)
    warnings: tuple[str, ...]
    rms_log_error: float  # of the law on the runs: how well L(N, D) describes them


def _fit_runs(runs: Sequence[FrontierRun], cells: dict[tuple[float, float], list[FrontierRun]], spec: FitSpec,
              k: float, experiment: str) -> _Fitted:
    """Fit L(N, D) to every run (the bootstrap draws whole points), and refuse a law without an optimum."""
    index = {key: i for i, key in enumerate(cells)}
    n, d, loss = (np.array([getattr(r, f) for r in runs]) for f in ("n", "d", "loss"))
    law, boot = _fit(n, d, loss, np.array([index[(r.n, r.d)] for r in runs]), spec)
    if not bool(allocation(law.params).ok):
        raise FitInputError(f"{FLAG}: experiment {experiment!r}: the fitted law has no compute-optimal split "
                            f"({_law_line(law)}): one of N and D does not lower the loss, so the whole budget "
                            "would go to the other")
    drawn = boot is not None and boot.n_done > 0
    intervals = {name: boot.interval(name, spec.level) for name in boot.names} if boot and drawn else {}
    policy = policy_bands(boot.names, boot.samples, [1.0], k=k, level=spec.level) if boot and drawn else None
    warnings = tuple(fit_warnings(law, (n, d), loss, intervals=intervals, level=spec.level))
    return _Fitted(law, boot, intervals, policy, warnings, _rms_log_error(law, n, d, loss))


def frontier_from_runs(runs: Sequence[FrontierRun], spec: FitSpec, *, experiment: str, loss_label: str,
                       budgets: Sequence[float] = (), n_finished: int | None = None) -> FrontierReport:
    """Fit L(N, D) to the runs and report the frontier at each budget (default: `default_budgets`)."""
    _check_spec(spec)
    _check_budgets(budgets)
    finished = len(runs) if n_finished is None else n_finished
    _check_axes(runs, experiment, finished, loss_label)
    cells = _cells(runs)
    k, k_range = _k(runs)
    fitted = _fit_runs(runs, cells, spec, k, experiment)
    law, policy = fitted.law, fitted.policy
    points = _points(cells, law, k)
    rows = _budget_rows(law, fitted.boot, tuple(budgets) or default_budgets([p.placement.compute for p in points]),
                        k, spec.level, runs)
    warnings = (*fitted.warnings, *_warnings(runs, k_range, rows, policy.n_degenerate if policy else 0))
    al, nan2, placed = allocation(law.params), (math.nan, math.nan), [p.placement for p in points]
    return FrontierReport(
        experiment, loss_label, law, fitted.intervals, k, k_range, float(al.a), float(al.b),
        policy.a if policy else nan2, policy.b if policy else nan2, rows, points, closest(placed),
        closest(placed, by="log_n"), len(runs), finished - len(runs), policy.n_draws if policy else 0,
        policy.n_degenerate if policy else 0, spec.level, fitted.rms_log_error, fitted.boot, tuple(warnings))


def _law_line(law: FittedLaw) -> str:
    p = law.params
    return f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}"


def _rms_log_error(law: FittedLaw, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> float:
    from scaletui.analysis.forms import predict

    return float(np.sqrt(np.mean((np.log(predict(law, n, d)) - np.log(loss)) ** 2)))


def _points(cells: dict[tuple[float, float], list[FrontierRun]], law: FittedLaw, k: float) -> tuple[PointRow, ...]:
    """Each (N, D) point, seeds averaged, placed against the frontier at its own compute (its runs' mean
    3 x flops_per_example x D, or k N D without it)."""
    keys = list(cells)
    mean = [statistics.fmean(r.loss for r in cells[key]) for key in keys]
    compute = [statistics.fmean(r.compute if r.compute is not None else k * r.n * r.d for r in cells[key])
               for key in keys]
    placed = place_points(law.params, [key[0] for key in keys], [key[1] for key in keys], compute, mean, k=k)
    out = []
    for key, p in zip(keys, placed, strict=True):
        rs = cells[key]
        epochs = [r.epochs for r in rs if r.epochs is not None]
        out.append(PointRow(p, (min(r.loss for r in rs), max(r.loss for r in rs)), tuple(r.run_id for r in rs),
                            rs[0].width, rs[0].depth, rs[0].steps, max(epochs) if epochs else None))
    return tuple(out)


def _budget_rows(law: FittedLaw, boot: Bootstrap | None, budgets: Sequence[float], k: float, level: float,
                 runs: Sequence[FrontierRun]) -> tuple[BudgetRow, ...]:
    c = np.array(budgets, dtype=float)
    n_best, d_best, best = n_opt(law.params, c, k), d_opt(law.params, c, k), frontier_loss(law.params, c, k)
    nan = np.full(c.shape, np.nan)
    bands = policy_bands(boot.names, boot.samples, c, k=k, level=level) if boot and boot.n_done else None
    n_iv, d_iv, l_iv, r_iv = ((bands.n_opt, bands.d_opt, bands.loss, bands.d_per_n) if bands
                              else ((nan, nan),) * 4)
    largest = max(r.compute if r.compute is not None else k * r.n * r.d for r in runs)
    n_range = (min(r.n for r in runs), max(r.n for r in runs))
    d_range = (min(r.d for r in runs), max(r.d for r in runs))
    rows = []
    for i, ci in enumerate(c):
        outside = tuple(name for name, v, (lo, hi) in (("N", n_best[i], n_range), ("D", d_best[i], d_range))
                        if not lo / 1.001 <= v <= hi * 1.001)
        rows.append(BudgetRow(float(ci), float(n_best[i]), _pair(n_iv, i), float(d_best[i]), _pair(d_iv, i),
                              float(best[i]), _pair(l_iv, i), float(d_best[i] / n_best[i]), _pair(r_iv, i),
                              float(ci / largest), outside))
    return tuple(rows)


def _pair(interval: tuple[np.ndarray, np.ndarray], i: int) -> tuple[float, float]:
    return float(interval[0][i]), float(interval[1][i])


def _warnings(runs: Sequence[FrontierRun], k_range: tuple[float, float], rows: Sequence[BudgetRow],
              degenerate: int) -> list[str]:
    out = []
    epochs = [r.epochs for r in runs if r.epochs is not None]
    if epochs and max(epochs) > 1.0:
        out.append(f"runs repeat their data (up to {max(epochs):.3g} epochs of the training set): D counts examples "
                   "seen, repeats included, and a repeated example is worth less than a new one, so this frontier "
                   "holds for this pool of data (Muennighoff et al. 2023)")
    if k_range[0] > 0 and k_range[1] / k_range[0] > K_SPREAD:
        out.append(f"FLOPs per parameter per example differ between runs ({k_range[0]:.3g} to {k_range[1]:.3g}): "
                   "no single C = k N D describes the sweep, so N_opt and D_opt are approximate")
    if degenerate:
        out.append(f"{degenerate} bootstrap resamples had no compute-optimal split (alpha, beta, A or B at 0) and "
                   "are left out of the intervals")
    for r in rows:
        if r.far:
            out.append(f"BUDGET FAR BEYOND THE DATA: C = {r.compute:.3g} is {r.beyond:.3g}x the largest run's "
                       f"compute; the law is assumed to hold that far (more than {FAR_BEYOND:g}x is a guess)")
        elif r.outside:
            which = " and ".join(f"{v}_opt" for v in r.outside)
            out.append(f"at C = {r.compute:.3g}, {which} {'lies' if len(r.outside) == 1 else 'lie'} outside the "
                       "range the sweep trained: extrapolated")
    return out


def frontier_experiment(db_path: str | Path, experiment: str | None, spec: FitSpec,
                        budgets: Sequence[float] = ()) -> FrontierReport:
    """The compute-optimal frontier of one experiment's finished runs (see the module docstring)."""
    _check_spec(spec)
    _check_budgets(budgets)
    read = read_runs(db_path, experiment, spec)
    return frontier_from_runs(read.runs, spec, experiment=read.experiment, loss_label=read.loss_label,
                              budgets=budgets, n_finished=read.n_finished)
