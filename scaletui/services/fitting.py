"""From a sweep in the database (or a CSV file) to fitted scaling laws that say how well they predict.

This is the glue between `scaletui.store` (where the runs are) and `scaletui.analysis.powerlaw`
(pure fits over arrays). The CLI (`scaletui fit`), the headless run's closing fit and the app's
fit pane all go through it, so a law means the same thing wherever it is shown:

* **which runs**: finished ones only (done, early_stopped). Diverged runs have no loss worth
  fitting; they are left out and *counted*, because a size whose seeds diverge is evidence too.
* **the loss of a run**: the experiment's stated rule (final, best or smoothed test loss) unless
  another is chosen; the rule's label travels with every report.
* **x**: one of `X_CHOICES` (see `run_x` for how each is read from the runs table).
* **uncertainty**: bootstrap over runs (a resample draws whole runs, never steps of one run);
  for a CSV file over rows, or over the values of a column (`unit`: a run or seed column), so
  that rows of one run, or copies of one row, are drawn together.
* **prediction**: the largest size (all its seeds) left out, fitted on the rest and predicted;
  then the two largest. Each left-out point is judged on its own: for L(N, D) every (N, D)
  that was trained, never a mean over D that no run had.
* **time**: the law refitted at every evaluation step of the test-loss series; if alpha moves
  between training regimes, the law quoted at the end predicts nothing.

Imports the store and the analysis, never torch or textual: `scaletui fit` starts fast and the
app can run a fit in a thread worker of its own process.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.powerlaw import (
    BootstrapResult,
    FitData,
    FitOptions,
    Form,
    HeldOut,
    LawFit,
    Monotonicity,
    PredictiveCheck,
    Stability,
    bootstrap_law,
    check_monotone,
    exponent_stability,
    fit_law,
    fit_warnings,
    load_csv,
    predictive_check,
    row_list,
    to_fit_result,
)
from scaletui.records import FitResult, LossRule
from scaletui.store.fits import FitInputs
from scaletui.store.reader import Reader

__all__ = [
    "X_CHOICES", "FORMS", "FitInputError", "FitSpec", "RunPoint", "Point", "Curves", "FitReport",
    "ExperimentFit", "CsvFit", "gather", "fit_curve", "fit_experiment", "fit_csv", "csv_group_columns", "save_reports",
    "resolve_experiment", "loss_at_steps", "describe_heldout", "describe_stability",
]

#: What a law can be fitted against (the x axis).
X_CHOICES: tuple[str, ...] = ("params", "width", "depth", "flops", "examples", "steps")
#: `--form` names of the one-variable laws.
FORMS: dict[str, Form] = {"offset": Form.OFFSET, "power": Form.POWER}
#: Statuses whose runs are fitted; `diverged` ones are counted instead.
FITTED_STATUSES = ("done", "early_stopped")
#: Mirrors scaletui.engine.loop.EMA_BETA (not imported: the engine pulls in torch).
EMA_BETA = 0.9


class FitInputError(ValueError):
    """Bad input for a fit, as one line naming the thing (experiment, column, x ...)."""


@dataclass(frozen=True)
class FitSpec:
    """The choices behind a fit: the same as `scaletui fit`'s flags and the fit pane's keys."""

    x: str = "params"
    group_by: str | None = None
    loss_rule: LossRule | None = None  # None: the experiment's own rule
    form: Form = Form.OFFSET
    n_bootstrap: int = 1000
    level: float = 0.9
    seed: int = 0
    stability: bool = True  # refit at every evaluation step (costs one small fit per step)
    options: FitOptions = FitOptions()

    def options_json(self) -> dict[str, Any]:
        """What `fits.options_json` keeps: enough to refit the same way."""
        return {"form": self.form.value, "group_by": self.group_by, "n_bootstrap": self.n_bootstrap,
                "level": self.level, "seed": self.seed, "delta": self.options.delta,
                "n_starts": self.options.n_starts}


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class RunPoint:
    """One fitted point: a run's x and loss, plus its trajectory for the stability refits.

    `series` holds (step, x at that step, loss at that step under the rule) for every evaluation
    after step 0; x changes with the step only for x = flops (compute grows as training goes on).
    """

    run_id: int
    x: float
    loss: float
    group: Hashable
    series: tuple[tuple[int, float, float], ...] = ()


@dataclass(frozen=True)
class Point:
    """Mean loss and spread over the runs (seeds) at one x."""

    x: float
    mean: float
    sd: float  # sample sd over runs (ddof=1); NaN for a single run
    lo: float
    hi: float
    n: int


def summarise_points(x: np.ndarray, loss: np.ndarray) -> tuple[Point, ...]:
    """One `Point` per distinct x, ascending."""
    out = []
    for xv in np.unique(x):
        v = loss[x == xv]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out.append(Point(float(xv), float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size)))
    return tuple(out)


@dataclass(frozen=True)
class Curves:
    """The points of one experiment, split into curves (one per group value; key None = no grouping)."""

    experiment: str
    experiment_id: int
    loss_rule: LossRule
    x: str
    group_by: str | None
    curves: dict[Hashable, list[RunPoint]]
    n_finished: int
    n_diverged: int
    n_skipped: int  # finished runs without a usable loss or x
    diverged_by_group: dict[Hashable, int] = field(default_factory=dict)


def loss_at_steps(series: Sequence[tuple[int, float]], rule: LossRule) -> list[tuple[int, float]]:
    """"The loss of the run" as it would have been reported had training ended at each evaluation.

    final: the test loss at that step; best: the lowest so far; smoothed: the debiased EMA
    (beta 0.9) of the evaluations after step 0, as the training loop computes it. Step 0 (the
    untrained model) is dropped, and so are NaN evaluations.
    """
    out: list[tuple[int, float]] = []
    best, ema, count = math.inf, 0.0, 0
    for step, value in series:
        if step <= 0 or not math.isfinite(value):
            continue
        best = min(best, value)
        ema, count = EMA_BETA * ema + (1 - EMA_BETA) * value, count + 1
        smoothed = ema / (1 - EMA_BETA**count)
        out.append((step, {LossRule.FINAL: value, LossRule.BEST: best, LossRule.SMOOTHED: smoothed}[rule]))
    return out


_RULE_COLUMN = {LossRule.FINAL: "final_test_loss", LossRule.BEST: "best_test_loss",
                LossRule.SMOOTHED: "smoothed_test_loss"}


def _flat_config(config_json: str | None) -> dict[str, Any]:
    """A run's resolved config as one flat dict: data.*, model.*, train.* (scalars) and seed."""
    d = json.loads(config_json or "{}")
    flat: dict[str, Any] = {"seed": d.get("seed")}
    for section in ("data", "model", "train"):
        flat.update({k: v for k, v in d.get(section, {}).items() if not isinstance(v, dict)})
    return flat


def run_x(x: str, row: dict[str, Any], config: dict[str, Any], step: int | None = None) -> float | None:
    """The x of one run (None when the run does not have it).

    params: trainable parameters (runs.params); width, depth: the model's; examples: the
    training-set size (data.train_size; None when the whole split was used); flops: training
    compute = runs.flops_per_example x examples seen = flops_per_example x step x batch_size,
    with `step` the steps actually trained (runs.step, or the evaluation step for the stability
    refits). flops_per_example counts the forward pass only; the usual factor 3 for forward +
    backward would rescale A and leave alpha and E unchanged.
    """
    if x == "flops":
        done = step if step is not None else row.get("step")
        fpe, batch = row.get("flops_per_example"), config.get("batch_size")
        return None if None in (fpe, done, batch) else float(fpe) * float(done) * float(batch)
    value = {"params": row.get("params"), "width": row.get("width"), "depth": row.get("depth"),
             "examples": config.get("train_size")}[x]
    return None if value is None else float(value)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _run_points(reader: Reader, row: dict[str, Any], spec: FitSpec, rule: LossRule) -> list[RunPoint]:
    """The point(s) one finished run contributes: one, or one per evaluation for x = steps."""
    config = _flat_config(reader.run_config(row["id"]))
    group = config.get(spec.group_by) if spec.group_by else None
    need_series = spec.x == "steps" or spec.stability
    at_steps = loss_at_steps(reader.metric_series(row["id"], "test_loss"), rule) if need_series else []
    if spec.x == "steps":
        return [RunPoint(row["id"], float(s), v, group) for s, v in at_steps if v > 0]
    x, loss = run_x(spec.x, row, config), row.get(_RULE_COLUMN[rule])
    if not (_usable(x) and _usable(loss)):
        return []
    series = tuple((s, xs, v) for s, v in at_steps if _usable(xs := run_x(spec.x, row, config, s)) and v > 0)
    return [RunPoint(row["id"], float(x), float(loss), group, series)]  # type: ignore[arg-type]


def resolve_experiment(reader: Reader, name: str | None) -> dict[str, Any]:
    """The experiment row called `name`, or the only / most recently updated one when None."""
    rows = reader.experiments()
    if not rows:
        raise FitInputError(f"{reader.path}: no experiments in the database (run a sweep first)")
    if name is None:
        return max(rows, key=lambda r: (r.get("updated_at") or r.get("created_at") or "", r["id"]))
    for r in rows:
        if r["name"] == name:
            return r
    raise FitInputError(f"{reader.path}: no experiment {name!r}; experiments are {[r['name'] for r in rows]}")


def _check_choices(spec: FitSpec) -> None:
    if spec.x not in X_CHOICES:
        raise FitInputError(f"x: unknown x {spec.x!r}; choose one of {', '.join(X_CHOICES)}")
    if spec.form.n_vars != 1:
        raise FitInputError("form: a sweep is fitted with a one-variable law (offset or power)")


def _check_group_by(reader: Reader, rows: list[dict[str, Any]], group_by: str | None) -> None:
    if group_by is None or not rows:
        return
    known = _flat_config(reader.run_config(rows[0]["id"]))
    if group_by not in known:
        raise FitInputError(f"group-by: unknown column {group_by!r}; choose one of {', '.join(sorted(known))}")


def gather(reader: Reader, experiment: str | None, spec: FitSpec) -> Curves:
    """Collect the points of one experiment's finished runs, split into curves."""
    _check_choices(spec)
    exp = resolve_experiment(reader, experiment)
    rule = spec.loss_rule or LossRule(exp["loss_rule"])
    rows = reader.runs(exp["name"])
    finished = [r for r in rows if r["status"] in FITTED_STATUSES]
    _check_group_by(reader, finished, spec.group_by)
    curves: dict[Hashable, list[RunPoint]] = defaultdict(list)
    skipped = 0
    for row in finished:
        points = _run_points(reader, row, spec, rule)
        skipped += not points
        for p in points:
            curves[p.group].append(p)
    diverged = _diverged_by_group(reader, [r for r in rows if r["status"] == "diverged"], spec.group_by)
    ordered = dict(sorted(curves.items(), key=lambda kv: _sort_key(kv[0])))
    return Curves(exp["name"], int(exp["id"]), rule, spec.x, spec.group_by, ordered, len(finished),
                  sum(diverged.values()), skipped, diverged)


def _diverged_by_group(reader: Reader, diverged: list[dict[str, Any]], group_by: str | None) -> dict[Hashable, int]:
    """How many runs diverged in each curve: a size whose seeds diverge is evidence too."""
    counts: dict[Hashable, int] = defaultdict(int)
    for row in diverged:
        counts[_flat_config(reader.run_config(row["id"])).get(group_by) if group_by else None] += 1
    return dict(counts)


def _sort_key(value: Hashable) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, int | float) else (1, 0.0, str(value))


# ----------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class FitReport:
    """Everything known about one fitted curve: points, law, intervals, prediction, checks."""

    source: str  # experiment name or CSV path
    x_name: str
    loss_label: str | None  # e.g. "final test loss"; None for CSV fits
    group: str | None  # e.g. "depth=4"
    form: Form
    xs: tuple[np.ndarray, ...]  # x, or (N, D) for the two-variable law
    loss: np.ndarray
    run_ids: tuple[int, ...]
    points: tuple[Point, ...]
    fit: LawFit
    boot: BootstrapResult | None
    check: PredictiveCheck
    monotonicity: Monotonicity | None
    stability: Stability | None
    warnings: tuple[str, ...]
    n_diverged: int = 0
    experiment_id: int | None = None
    loss_rule: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fit_id: int | None = None
    resample_unit: str = ""  # what the bootstrap drew: "runs", "rows", "6 values of 'seed'"

    @property
    def result(self) -> FitResult:
        return to_fit_result(self.fit, self.x_name, boot=self.boot, check=self.check, warnings=self.warnings)

    @property
    def n_sizes(self) -> int:
        return int(np.unique(self.xs[0]).size)

    def inputs(self) -> FitInputs:
        """What the `fits` table keeps about where this fit came from."""
        extra = {"D": self.xs[1].tolist()} if len(self.xs) == 2 else {}
        # Every held-out point travels with the options: the fits table keeps the worst one as a column.
        options = {**self.options, "heldout": _clean(_heldout_json(self.check))}
        return FitInputs(source=self.source, x=self.xs[0].tolist(), loss=self.loss.tolist(),
                         experiment_id=self.experiment_id, loss_rule=self.loss_rule, grouping=self.group,
                         run_ids=self.run_ids, extra_x=extra, options=options)

    def to_json(self) -> dict[str, Any]:
        """A plain, JSON-ready summary (NaN and infinities become null)."""
        return _clean(_report_json(self))


def _heldout_json(check: PredictiveCheck) -> list[dict[str, Any]]:
    """One entry per check (largest 1, largest 2 left out); its lists hold one value per held-out point
    (x, or N with D for the two-variable law; n = the rows averaged into `actual`)."""
    out = []
    for k, h in ((1, check.leave_one), (2, check.leave_two)):
        if h is None:
            continue
        entry: dict[str, Any] = {"left_out": k, "x": list(h.x_out)}
        if h.points and len(h.points[0]) == 2:
            entry["D"] = [p[1] for p in h.points]
        entry.update({"predicted": list(h.predicted), "actual": list(h.actual), "rel_error": list(h.rel_error),
                      "n": list(h.n_obs), "max_rel_error": h.max_rel_error, "params": dict(h.fit.params)})
        out.append(entry)
    return out


def _stability_json(s: Stability | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"steps": s.steps.tolist(), "alpha": s.alpha.tolist(), "last_k": s.last_k, "alpha_range": s.alpha_range,
            "rel_range": s.rel_range, "rel_tol": s.rel_tol, "stable": s.stable, "notes": list(s.notes)}


def _report_json(r: FitReport) -> dict[str, Any]:
    boot = r.boot
    return {
        "fit_id": r.fit_id, "source": r.source, "x": r.x_name, "group": r.group, "form": r.form.value,
        "loss_rule": r.loss_rule, "loss_label": r.loss_label, "n_points": r.fit.n_points, "n_sizes": r.n_sizes,
        "n_diverged": r.n_diverged, "resample_unit": r.resample_unit, "params": dict(r.fit.params),
        "converged": r.fit.converged,
        "objective": r.fit.objective, "level": boot.level if boot else None,
        "n_bootstrap": boot.n_done if boot else 0,
        "intervals": {k: list(v) for k, v in boot.intervals.items()} if boot else {},
        "std_errors": dict(boot.std_errors) if boot else {},
        "heldout": _heldout_json(r.check), "heldout_notes": list(r.check.notes),
        "monotone": None if r.monotonicity is None else r.monotonicity.ok,
        "stability": _stability_json(r.stability), "warnings": list(r.warnings),
        "points": [vars(p) for p in r.points],
    }  # fmt: skip


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- fitting one curve

StopCheck = Callable[[], bool]


def _monotonicity_warnings(mono: Monotonicity | None) -> list[str]:
    if mono is None:
        return []
    out = []
    for v in mono.violations:
        beyond = {True: "beyond the seed spread", False: "within the seed spread",
                  None: "single seed"}[v.exceeds_spread]
        out.append(f"loss rises from x={v.x_small:.4g} ({v.loss_small:.4g}) to x={v.x_large:.4g} "
                   f"({v.loss_large:.4g}), {beyond}")
    return out


def _stability_warnings(s: Stability | None) -> list[str]:
    if s is None or s.stable or math.isnan(s.rel_range):
        return []
    n = min(s.last_k, int(np.isfinite(s.alpha).sum()))
    return [f"alpha moved by {_share(s.rel_range)} of its median over the last {n} evaluations "
            f"(tolerance {s.rel_tol:.0%}): the exponent is not stable over training"]


def _share(ratio: float) -> str:
    """A ratio as a percentage; an infinite one (alpha's median is 0) says so."""
    return f"{ratio:.0%}" if math.isfinite(ratio) else "more than 100% (median 0)"


def _stability(points: Sequence[RunPoint], spec: FitSpec, stop: StopCheck | None) -> Stability | None:
    """Refit at every evaluation step; None when x = steps (the series *is* the data) or no series."""
    if spec.x == "steps" or not spec.stability or (stop is not None and stop()):
        return None
    rows = [(xs, v, s) for p in points for s, xs, v in p.series]
    if not rows:
        return None
    x, y, step = (np.array(c, dtype=float) for c in zip(*rows))
    return exponent_stability(x, y, step, form=spec.form, options=replace(spec.options, n_starts=8))


def _check_sizes(x: np.ndarray, what: str) -> None:
    sizes = np.unique(x).size
    if sizes < 2:
        raise FitInputError(f"{what}: only {sizes} distinct value(s) of x; a fit needs at least 2 sizes")


def _check_points(n_points: int, form: Form, what: str) -> None:
    if n_points < form.n_params:
        raise FitInputError(f"{what}: only {n_points} points; {form.value} has {form.n_params} parameters")


def _fit_arrays(form: Form, xs: tuple[np.ndarray, ...], y: np.ndarray, groups: np.ndarray | None,
                spec: FitSpec, stop: StopCheck | None) -> tuple[LawFit, BootstrapResult | None, PredictiveCheck]:
    """The law, its bootstrap (over `groups`: runs or seeds) and the held-out check."""
    arg = xs[0] if len(xs) == 1 else xs
    try:
        fit = fit_law(form, arg, y, options=spec.options)
    except ValueError as exc:
        raise FitInputError(str(exc)) from exc
    boot = None
    if spec.n_bootstrap > 0:
        boot = bootstrap_law(form, arg, y, groups=groups, n_resamples=spec.n_bootstrap, level=spec.level,
                             rng=spec.seed, fit=fit, options=spec.options, should_stop=stop)
    return fit, boot, predictive_check(form, arg, y, options=spec.options)


def fit_curve(points: Sequence[RunPoint], spec: FitSpec, *, source: str, loss_rule: LossRule,
              group: str | None = None, n_diverged: int = 0, experiment_id: int | None = None,
              should_stop: StopCheck | None = None) -> FitReport:
    """Fit one curve of run points: the law, bootstrap over runs, held-out errors, checks."""
    x = np.array([p.x for p in points], dtype=float)
    y = np.array([p.loss for p in points], dtype=float)
    run_ids = np.array([p.run_id for p in points])
    what = f"{source}{f' ({group})' if group else ''}"
    _check_sizes(x, what)
    _check_points(x.size, spec.form, what)
    fit, boot, check = _fit_arrays(spec.form, (x,), y, run_ids, spec, should_stop)
    mono = check_monotone(x, y)
    stability = _stability(points, spec, should_stop)
    warnings = (*fit_warnings(fit, x, y, boot=boot), *_monotonicity_warnings(mono), *_stability_warnings(stability))
    return FitReport(source, spec.x, loss_rule.label, group, spec.form, (x,), y, tuple(int(i) for i in run_ids),
                     summarise_points(x, y), fit, boot, check, mono, stability, tuple(warnings), n_diverged,
                     experiment_id, loss_rule.value, spec.options_json(), resample_unit="runs")


# ----------------------------------------------------------------------------- experiments and CSV files


@dataclass(frozen=True)
class ExperimentFit:
    """The fits of one experiment: one report per curve, and curves that could not be fitted."""

    curves: Curves
    reports: tuple[FitReport, ...]
    skipped: tuple[str, ...]  # "depth=8: only 1 distinct value(s) of x ..."


def _group_label(group_by: str | None, value: Hashable) -> str | None:
    return None if group_by is None else f"{group_by}={value}"


def fit_experiment(db_path: str | Path, experiment: str | None, spec: FitSpec, *,
                   should_stop: StopCheck | None = None) -> ExperimentFit:
    """Gather the finished runs of `experiment` and fit each curve (nothing is stored; see save_reports)."""
    with Reader(db_path) as reader:
        curves = gather(reader, experiment, spec)
    if not curves.curves:
        raise FitInputError(f"experiment {curves.experiment!r}: no finished runs with a {curves.loss_rule.label} "
                            f"to fit ({curves.n_finished} finished, {curves.n_diverged} diverged)")
    reports, skipped = [], []
    for value, points in curves.curves.items():
        label = _group_label(spec.group_by, value)
        try:
            reports.append(fit_curve(points, spec, source=curves.experiment, loss_rule=curves.loss_rule, group=label,
                                     n_diverged=curves.diverged_by_group.get(value, 0),
                                     experiment_id=curves.experiment_id,
                                     should_stop=should_stop))
        except FitInputError as exc:
            if spec.group_by is None:
                raise
            skipped.append(str(exc))
    if not reports:
        raise FitInputError(f"experiment {curves.experiment!r}: no curve has 2 sizes to fit ({'; '.join(skipped)})")
    return ExperimentFit(curves, tuple(reports), tuple(skipped))


@dataclass(frozen=True)
class CsvFit:
    """The fits of one CSV file: one report per curve (per value of `group_by`), and curves that
    could not be fitted ("d.csv (model=tiny): only 1 distinct value(s) of x ...")."""

    reports: tuple[FitReport, ...]
    skipped: tuple[str, ...]


def csv_group_columns(group_by: str | None) -> tuple[str, ...]:
    """`group_by` for a CSV file: one column, or several joined by commas ("Task,Model")."""
    return () if group_by is None else tuple(c.strip() for c in group_by.split(","))


def fit_csv(path: str | Path, *, x: str, y: str, d: str | None = None, compute: str | None = None,
            unit: str | None = None, drop_highest: int = 0, spec: FitSpec = FitSpec()) -> CsvFit:
    """Fit columns of any CSV file through the same code: x (one variable), or x = N with D
    (`d`, or `compute` giving D = C / (6N)) for the two-variable law.

    `spec.group_by` splits the rows into curves (a column, or several joined by commas), one law
    each, like a sweep's; curves that cannot be fitted are listed in `skipped`. `unit` is the
    column whose values the bootstrap resamples (a run or seed column); without it each row is
    a unit. What load_csv refuses or leaves out is in its docstring.
    """
    two_vars = d is not None or compute is not None
    if two_vars and spec.form is Form.POWER:
        raise FitInputError(f"{path}: form {Form.POWER.value} fits one variable; N and D are fitted with "
                            f"{Form.TWO_VAR.value}")
    columns = csv_group_columns(spec.group_by)
    try:
        data = (load_csv(path, n=x, d=d, compute=compute, loss=y, group=unit, split=columns,
                         drop_highest=drop_highest) if two_vars
                else load_csv(path, x=x, loss=y, group=unit, split=columns, drop_highest=drop_highest))
    except (OSError, ValueError) as exc:
        raise FitInputError(str(exc)) from exc
    form = Form.TWO_VAR if two_vars else spec.form
    options = {**spec.options_json(), "form": form.value, "csv_y": y, "csv_d": d, "csv_compute": compute,
               "csv_group": unit, "drop_highest": drop_highest}
    csv_spec = _CsvSpec(str(path), y, unit, columns, form, spec, options)
    return _fit_csv_curves(data, csv_spec)


@dataclass(frozen=True)
class _CsvSpec:
    """How the curves of one CSV file are fitted (the columns and the fit's choices)."""

    source: str
    loss_column: str
    unit: str | None
    group_columns: tuple[str, ...]
    form: Form
    spec: FitSpec
    options: dict[str, Any]


def _fit_csv_curves(data: FitData, cs: _CsvSpec) -> CsvFit:
    reports, skipped = [], []
    for values, index in _csv_curves(data).items():
        label = _csv_label(cs.group_columns, values)
        try:
            reports.append(_csv_report(data.take(index), values, label, cs))
        except FitInputError as exc:
            if not cs.group_columns:
                raise
            skipped.append(str(exc))
    for values, rows in _lossless_curves(data).items():
        skipped.append(f"{cs.source} ({_csv_label(cs.group_columns, values)}): no row has a loss in column "
                       f"{cs.loss_column!r} (rows {row_list(rows)}: empty, NaN or inf)")
    if not reports:
        raise FitInputError(f"{cs.source}: no curve could be fitted ({skipped[0]}"
                            + (f"; and {len(skipped) - 1} more)" if len(skipped) > 1 else ")"))
    return CsvFit(tuple(reports), tuple(skipped))


def _csv_curves(data: FitData) -> dict[tuple[str, ...], np.ndarray]:
    """Point indices of each curve, in the order curves first appear in the file."""
    by: dict[tuple[str, ...], list[int]] = {}
    for i, values in enumerate(data.split):
        by.setdefault(values, []).append(i)
    return {values: np.array(index) for values, index in by.items()}


def _lossless_curves(data: FitData) -> dict[tuple[str, ...], list[int]]:
    """Curves whose every row was left out for having no loss: the rows of each."""
    fitted = set(data.split)
    out: dict[tuple[str, ...], list[int]] = {}
    for row, values in data.dropped:
        if values not in fitted:
            out.setdefault(values, []).append(row)
    return out


def _csv_label(columns: tuple[str, ...], values: tuple[str, ...]) -> str | None:
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values)) if columns else None


def _csv_report(data: FitData, values: tuple[str, ...], label: str | None, cs: _CsvSpec) -> FitReport:
    """One curve of a CSV file: the law, its bootstrap over `cs.unit` (or rows), held-out errors, checks."""
    what = f"{cs.source}{f' ({label})' if label else ''}"
    _check_sizes(data.xs[0], what)
    _check_points(data.loss.size, cs.form, what)
    spec, unit_text, unit_warnings = _resampling(data, cs)
    fit, boot, check = _fit_arrays(cs.form, data.xs, data.loss, data.groups, spec, None)
    one = cs.form.n_vars == 1
    mono = check_monotone(data.xs[0], data.loss) if one else None
    dropped = [row for row, v in data.dropped if v == values]
    warnings = (*fit_warnings(fit, data.xs[0] if one else data.xs, data.loss, boot=boot),
                *_monotonicity_warnings(mono), *unit_warnings, *_row_warnings(data, dropped, cs))
    x_name = data.names[0] if one else f"{data.names[0]},{data.names[1]}"
    points = summarise_points(data.xs[0], data.loss) if one else ()
    return FitReport(cs.source, x_name, None, label, cs.form, data.xs, data.loss, (), points, fit, boot, check,
                     mono, None, tuple(warnings), options=cs.options, resample_unit=unit_text)


def _resampling(data: FitData, cs: _CsvSpec) -> tuple[FitSpec, str, list[str]]:
    """The spec to fit with, what the bootstrap draws, and why there is no bootstrap (one unit only)."""
    if cs.unit is None or data.groups is None:
        return cs.spec, "rows", []
    n_units = int(np.unique(data.groups).size)
    if n_units < 2 and cs.spec.n_bootstrap > 0:
        why = f"no bootstrap: only 1 value of {cs.unit!r} in this curve; intervals need at least 2 resampling units"
        return replace(cs.spec, n_bootstrap=0), "", [why]
    return cs.spec, f"{n_units} value{'s' if n_units != 1 else ''} of {cs.unit!r}", []


def _row_warnings(data: FitData, dropped: list[int], cs: _CsvSpec) -> list[str]:
    """Rows left out for want of a loss, and exact copies of rows (which pose as independent evidence)."""
    out = []
    if dropped:
        rows = "1 row" if len(dropped) == 1 else f"{len(dropped)} rows"
        out.append(f"{rows} without a loss in column {cs.loss_column!r} (empty, NaN or inf) left out: "
                   f"rows {row_list(dropped)}")
    copies = int(data.duplicate.sum())
    if copies:
        what = "1 row is an exact duplicate of an earlier row" if copies == 1 else \
            f"{copies} rows are exact duplicates of earlier rows"
        effect = ("each copy weighs in the fit again" if cs.unit is not None else
                  "the bootstrap counts every copy as independent evidence, so its intervals are too narrow; "
                  "remove them, or resample by a run or seed column (--csv-group)")
        out.append(f"{what}: {effect}")
    return out


def save_reports(db_path: str | Path, reports: Sequence[FitReport]) -> list[FitReport]:
    """Store every report in the `fits` table; returns them with `fit_id` set."""
    from scaletui.store.writer import Store

    with Store(db_path) as store:
        return [replace(r, fit_id=store.add_fit(r.result, r.inputs())) for r in reports]


# ----------------------------------------------------------------------------- plain-text summaries


def describe_heldout(check: PredictiveCheck) -> list[str]:
    """One line per held-out point: what was left out, predicted vs actual, relative error."""
    lines = []
    for k, h in ((1, check.leave_one), (2, check.leave_two)):
        if h is None:
            continue
        for i, (p, a, e) in enumerate(zip(h.predicted, h.actual, h.rel_error)):
            lines.append(f"largest {k} left out: {_point_text(h, i)}: predicted {p:.4g}, actual {a:.4g} ({e:.1%})")
    return lines + list(check.notes)


def _point_text(h: HeldOut, i: int) -> str:
    """"x=1024", or "N=1e+09, D=2e+10" for the two-variable law."""
    point = h.points[i] if h.points else (h.x_out[i],)
    names = ("x",) if len(point) == 1 else ("N", "D")
    return ", ".join(f"{name}={v:.4g}" for name, v in zip(names, point))


def describe_stability(s: Stability | None) -> str:
    """alpha over the last evaluations, e.g. "alpha 0.31..0.33 over the last 5 evals (6%): stable"."""
    if s is None:
        return "not computed (no test-loss series, or x = steps)"
    if s.notes:
        return "; ".join(s.notes)
    tail = s.alpha[np.isfinite(s.alpha)][-s.last_k:]
    verdict = "stable" if s.stable else "UNSTABLE"
    return (f"alpha {tail.min():.3g}..{tail.max():.3g} over the last {tail.size} evaluations "
            f"(range {_share(s.rel_range)} of median, tolerance {s.rel_tol:.0%}): {verdict}")
