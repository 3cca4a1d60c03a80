"""From a sweep in the database (or a CSV file) to fitted scaling laws that say how well they predict.

This is the glue between `scaletui.store` (where the runs are) and `scaletui.analysis` (pure fits over
arrays: the forms, the solver, form selection, bands, checks). The CLI (`scaletui fit`), the headless
run's closing fit and the app's fit pane all go through it, so a law means the same thing wherever
it is shown:

* **which runs**: finished ones only (done, early_stopped). Diverged runs have no loss worth
  fitting; they are left out and *counted*, because a size whose seeds diverge is evidence too.
* **the loss of a run**: the experiment's stated rule (final, best or smoothed test loss) unless
  another is chosen; the rule's label travels with every report.
* **x**: one of `X_CHOICES` (see `run_x` for how each is read from the runs table).
* **which law**: `form="auto"` fits every candidate form (`analysis.select.DEFAULT_FORMS`) and keeps
  the one that best predicts the sizes it was not shown (rolling origin: the largest 1, 2, ... sizes
  left out); every form's held-out error is reported side by side, with a warning when the choice
  is not clear. A form's name forces it (`offset` = M2 and `power` = M1 still work).
* **uncertainty**: a bootstrap that resamples whole groups: for a sweep all seeds of one size together
  (the group is the size), for a CSV file the values of a column (`unit`), else each row. From the
  same resamples: parameter intervals and the prediction band (calibrated, see `analysis.select.Band`).
* **prediction**: each held-out point of the nearest two origins is reported on its own (for L(N, D)
  every (N, D) that was trained), and `FitSpec.predict` asks for the law, with its band, anywhere.
* **time**: the law refitted at every evaluation step of the test-loss series; if alpha moves
  between training regimes, the law quoted at the end predicts nothing.

Imports the store and the analysis, never torch or textual: `scaletui fit` starts fast and the
app can run a fit in a thread worker of its own process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.checks import Monotonicity, check_monotone, fit_warnings
from scaletui.analysis.forms import FORMS as LAW_FORMS
from scaletui.analysis.forms import FittedLaw, form, predict
from scaletui.analysis.heldout import HeldOutReport, heldout_report
from scaletui.analysis.select import (
    DEFAULT_FORMS,
    Band,
    FormScore,
    Selection,
    SelectOptions,
    band_from_bootstrap,
    extrapolation_rate,
    select_form,
)
from scaletui.analysis.solve import (
    SPACES,
    Bootstrap,
    FitOptions,
    FitStopped,
    LossSpec,
    bootstrap,
    default_alt_spaces,
    default_loss,
)
from scaletui.analysis.stability import Stability, exponent_stability
from scaletui.core.rows import ExperimentRow, RunSummary
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import TEST_LOSS_METRIC, DebiasedEma, FitX, LossRule, RunStatus
from scaletui.services.csvdata import FitData, load_csv, row_list
from scaletui.services.fit_report import (
    BY_DEFAULT,
    BY_HELDOUT,
    FAR_BEYOND,
    FORCED,
    ONLY_FORM,
    FitReport,
    Point,
    Prediction,
    describe_heldout,
    describe_stability,
    percent_text,
    point_text,
    summarise_points,
)
from scaletui.store.reader import Reader

__all__ = [
    "AUTO",
    "FAR_BEYOND",
    "FORMS",
    "FORM_ALIASES",
    "X_CHOICES",
    "CsvFit",
    "Curves",
    "ExperimentFit",
    "FitInputError",
    "FitReport",
    "FitSpec",
    "FitStopped",
    "Point",
    "Prediction",
    "RunPoint",
    "csv_group_columns",
    "describe_heldout",
    "describe_stability",
    "fit_csv",
    "fit_curve",
    "fit_experiment",
    "form_name",
    "gather",
    "loss_at_steps",
    "resolve_experiment",
    "save_reports",
]

#: What a law can be fitted against (the x axis).
X_CHOICES: tuple[str, ...] = FitX.choices()
#: `form` that fits every candidate form and keeps the best predictor.
AUTO = "auto"
#: The names scaletui's `--form` had before forms were chosen; they still work.
FORM_ALIASES: dict[str, str] = {"offset": "M2", "power": "M1"}
#: Every accepted `form`: auto, a form of analysis.forms, or an alias.
FORMS: tuple[str, ...] = (AUTO, *LAW_FORMS, *FORM_ALIASES)
LOSS_SPACES: tuple[str, ...] = (AUTO, *SPACES)  # `FitSpec.loss_space`


class FitInputError(ValueError):
    """Bad input for a fit, as one line naming the thing (experiment, column, x ...)."""


def form_name(name: str) -> str:
    """The canonical `form`: "auto", a key of analysis.forms.FORMS, or an alias resolved; FitInputError else."""
    key = name.strip()
    if key.lower() == AUTO:
        return AUTO
    if key.lower() in FORM_ALIASES:
        return FORM_ALIASES[key.lower()]
    if key.upper() in LAW_FORMS:
        return key.upper()
    raise FitInputError(f"form: unknown form {name!r}; choose {AUTO}, {', '.join(LAW_FORMS)} "
                        "(offset = M2, power = M1)")


@dataclass(frozen=True)
class FitSpec:
    """The choices behind a fit: the same as `scaletui fit`'s flags and the fit pane's keys.

    form: "auto" or a form's name (see `form_name`). loss_space / delta: the objective ("auto": log
    residuals, and the chosen form also tried on log(1 + L) residuals, kept if it predicts the held-out
    sizes better: `SelectOptions.alt_spaces`; delta None: the measured default,
    `analysis.solve.default_loss`: 0.01 for one variable, 1e-3 for L(N, D)).
    upper_bound: the metric's known maximum (an error rate: 1), which only forms finite as x -> 0
    (M4) respect. predict: points to predict with a band: (x,) each, or (N, D) for L(N, D). run_ids:
    the runs to fit, when not all (the ledger's law of each size's best training plan).
    """

    x: str = FitX.PARAMS
    group_by: str | None = None
    loss_rule: LossRule | None = None  # None: the experiment's own rule
    form: str = AUTO
    n_bootstrap: int = 1000
    level: float = 0.9
    seed: int = 0
    stability: bool = True  # refit at every evaluation step (costs one small warm fit per step)
    loss_space: str = AUTO
    delta: float | None = None
    upper_bound: float | None = None
    predict: tuple[tuple[float, ...], ...] = ()
    run_ids: tuple[int, ...] | None = None  # fit only these runs (None: every finished run of the experiment)

    @property
    def form_name(self) -> str:
        return form_name(self.form)

    def loss(self, n_vars: int) -> LossSpec:
        """The objective forms are fitted and compared with ("auto": the default's, "log")."""
        default = default_loss(n_vars)
        space = default.space if self.loss_space == AUTO else self.loss_space
        try:
            return LossSpec(space, default.delta if self.delta is None else self.delta)
        except ValueError as exc:
            raise FitInputError(f"loss space: {exc}") from None

    def select_options(self, n_vars: int) -> SelectOptions:
        """How forms are fitted and compared for a curve of `n_vars` variables: with loss_space "auto",
        the chosen form is also tried in the default's other residual spaces (`default_alt_spaces`)."""
        name = self.form_name
        fit = FitOptions(loss=self.loss(n_vars), upper_bound=self.upper_bound)
        alt = default_alt_spaces(n_vars) if self.loss_space == AUTO else ()
        return SelectOptions(forms=DEFAULT_FORMS if name == AUTO else (name,), fit=fit, alt_spaces=alt)

    def options_json(self, n_vars: int = 1) -> dict[str, Any]:
        """What `fits.options_json` keeps: enough to refit the same way."""
        loss = self.loss(n_vars)
        return {"form": self.form_name, "group_by": self.group_by, "n_bootstrap": self.n_bootstrap,
                "level": self.level, "seed": self.seed, "loss_space": self.loss_space, "delta": loss.delta,
                "upper_bound": self.upper_bound, "predict": [list(p) for p in self.predict],
                **({} if self.run_ids is None else {"run_ids": list(self.run_ids)})}


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
    shape: tuple[int | None, int | None] = (None, None)  # the run's (width, depth)


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
    best, ema = math.inf, DebiasedEma()
    for step, value in series:
        if step <= 0 or not math.isfinite(value):
            continue
        best = min(best, value)
        smoothed = ema.update(value)
        out.append((step, {LossRule.FINAL: value, LossRule.BEST: best, LossRule.SMOOTHED: smoothed}[rule]))
    return out


def flat_config(spec: RunSpec | None) -> dict[str, Any]:
    """A run's resolved config as one flat dict: data.*, model.*, train.* (scalars) and seed."""
    if spec is None:
        return {}
    d = spec.to_dict()
    flat: dict[str, Any] = {"seed": d["seed"]}
    for section in ("data", "model", "train"):
        flat.update({k: v for k, v in d[section].items() if not isinstance(v, dict)})
    return flat


def run_x(x: str, row: RunSummary, config: dict[str, Any], step: int | None = None) -> float | None:
    """The x of one run (None when the run does not have it).

    params: trainable parameters (runs.params); width, depth: the model's; examples: the
    training-set size (data.train_size; None when the whole split was used); flops: training
    compute = runs.flops_per_example x examples seen = flops_per_example x step x batch_size,
    with `step` the steps actually trained (runs.step, or the evaluation step for the stability
    refits). flops_per_example counts the forward pass only; the usual factor 3 for forward +
    backward would rescale A and leave alpha and E unchanged.
    """
    if x == FitX.FLOPS:
        done = step if step is not None else row.step
        fpe, batch = row.flops_per_example, config.get("batch_size")
        return None if fpe is None or done is None or batch is None else float(fpe) * float(done) * float(batch)
    value = {FitX.PARAMS: row.params, FitX.WIDTH: row.width, FitX.DEPTH: row.depth,
             FitX.EXAMPLES: config.get("train_size")}[FitX(x)]
    return None if value is None else float(value)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _needs_config(spec: FitSpec) -> bool:
    """Is a run's resolved config needed: for a group column, or an x read from it? (Parsing the
    default sweep's 400 configs took 0.1 s of its point fit, so it is skipped when nothing reads them.)"""
    return spec.group_by is not None or spec.x in (FitX.EXAMPLES, FitX.FLOPS)


def _run_points(reader: Reader, row: RunSummary, spec: FitSpec, rule: LossRule) -> list[RunPoint]:
    """The point(s) one finished run contributes: one, or one per evaluation for x = steps."""
    config = flat_config(reader.run_spec(row.id)) if _needs_config(spec) else {}
    group = config.get(spec.group_by) if spec.group_by else None
    need_series = spec.x == FitX.STEPS or spec.stability
    at_steps = loss_at_steps(reader.metric_series(row.id, TEST_LOSS_METRIC), rule) if need_series else []
    if spec.x == FitX.STEPS:
        return [RunPoint(row.id, float(s), v, group) for s, v in at_steps if v > 0]
    x, loss = run_x(spec.x, row, config), row.loss_by(rule)
    if x is None or loss is None or not (_usable(x) and _usable(loss)):
        return []
    series = tuple((s, xs, v) for s, v in at_steps if (xs := run_x(spec.x, row, config, s)) is not None
                   and _usable(xs) and v > 0)
    return [RunPoint(row.id, x, loss, group, series, (row.width, row.depth))]


def resolve_experiment(reader: Reader, name: str | None) -> ExperimentRow:
    """The experiment called `name`, or the only / most recently updated one when None."""
    rows = reader.experiments()
    if not rows:
        raise FitInputError(f"{reader.path}: no experiments in the database (run a sweep first)")
    if name is None:
        return max(rows, key=lambda r: (r.updated_at or r.created_at or "", r.id))
    for r in rows:
        if r.name == name:
            return r
    raise FitInputError(f"{reader.path}: no experiment {name!r}; experiments are {[r.name for r in rows]}")


def _check_choices(spec: FitSpec) -> None:
    if spec.x not in X_CHOICES:
        raise FitInputError(f"x: unknown x {spec.x!r}; choose one of {', '.join(X_CHOICES)}")
    name = spec.form_name
    if name != AUTO and form(name).n_vars != 1:
        raise FitInputError(f"form: {name} fits two variables (N, D); a sweep is fitted against one x "
                            f"(choose {AUTO} or one of {', '.join(n for n, f in LAW_FORMS.items() if f.n_vars == 1)})")


def _check_group_by(reader: Reader, rows: list[RunSummary], group_by: str | None) -> None:
    if group_by is None or not rows:
        return
    known = flat_config(reader.run_spec(rows[0].id))
    if group_by not in known:
        raise FitInputError(f"group-by: unknown column {group_by!r}; choose one of {', '.join(sorted(known))}")


def gather(reader: Reader, experiment: str | None, spec: FitSpec) -> Curves:
    """Collect the points of one experiment's finished runs, split into curves."""
    _check_choices(spec)
    exp = resolve_experiment(reader, experiment)
    rule = spec.loss_rule or exp.loss_rule
    rows = [r for r in reader.runs(exp.name) if spec.run_ids is None or r.id in spec.run_ids]
    finished = [r for r in rows if r.ok]
    _check_group_by(reader, finished, spec.group_by)
    curves: dict[Hashable, list[RunPoint]] = defaultdict(list)
    skipped = 0
    for row in finished:
        points = _run_points(reader, row, spec, rule)
        skipped += not points
        for p in points:
            curves[p.group].append(p)
    diverged = _diverged_by_group(reader, [r for r in rows if r.status is RunStatus.DIVERGED], spec.group_by)
    ordered = dict(sorted(curves.items(), key=lambda kv: _sort_key(kv[0])))
    return Curves(exp.name, exp.id, rule, spec.x, spec.group_by, ordered, len(finished),
                  sum(diverged.values()), skipped, diverged)


def _diverged_by_group(reader: Reader, diverged: list[RunSummary], group_by: str | None) -> dict[Hashable, int]:
    """How many runs diverged in each curve: a size whose seeds diverge is evidence too."""
    counts: dict[Hashable, int] = defaultdict(int)
    for row in diverged:
        counts[flat_config(reader.run_spec(row.id)).get(group_by) if group_by else None] += 1
    return dict(counts)


def _sort_key(value: Hashable) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, int | float) else (1, 0.0, str(value))



# ----------------------------------------------------------------------------- fitting one curve

StopCheck = Callable[[], bool]
BAND_POINTS = 64  # band grid over the data's range, for plots


@dataclass(frozen=True)
class _Curve:
    """One curve to fit: points, resampling groups (None: every point), and its name for messages."""

    xs: tuple[np.ndarray, ...]
    loss: np.ndarray
    groups: np.ndarray | None
    what: str  # "law (depth=2)", "d.csv (model=tiny)"


@dataclass(frozen=True)
class _Fitted:
    """What analysis says about one curve (the parts of a FitReport that do not depend on the source)."""

    law: FittedLaw
    scores: tuple[FormScore, ...]
    chosen_by: str
    boot: Bootstrap | None
    band: Band | None
    predictions: tuple[Prediction, ...]
    heldout: HeldOutReport
    warnings: tuple[str, ...]


def _check_sizes(x: np.ndarray, what: str) -> None:
    sizes = np.unique(x).size
    if sizes < 2:
        raise FitInputError(f"{what}: only {sizes} distinct value(s) of x; a fit needs at least 2 sizes")


def _no_law(what: str, selection: Selection) -> FitInputError:
    """No form could be fitted: one line with every form's reason (once, when they all agree)."""
    reasons = [(s.form, s.skipped or "not fitted") for s in selection.scores]
    if len({why for _, why in reasons}) == 1:
        return FitInputError(f"{what}: {reasons[0][1]}")
    listed = "; ".join(why if why.startswith(name) else f"{name}: {why}" for name, why in reasons)
    return FitInputError(f"{what}: no form could be fitted ({listed})")


def _select(curve: _Curve, spec: FitSpec, stop: StopCheck | None) -> tuple[FormScore, Selection, SelectOptions]:
    opts = spec.select_options(len(curve.xs))
    selection = select_form(curve.xs, curve.loss, opts, stop)
    if selection.best is None or selection.best.law is None:
        raise _no_law(curve.what, selection)
    law = selection.best.law  # its bootstrap and band refit it on the residuals it was chosen with
    return selection.best, selection, replace(opts, fit=replace(opts.fit, loss=LossSpec(law.loss_space, law.delta)))


def _selection_warnings(selection: Selection) -> list[str]:
    """The selection's warnings less the per-form skip lines (the forms table says those)."""
    skip_lines = {f"{s.form} {kind}: {s.skipped}" for s in selection.scores for kind in ("skipped", "not scored")}
    return [w for w in selection.warnings if w not in skip_lines]


def _fit_curve_arrays(curve: _Curve, spec: FitSpec, stop: StopCheck | None) -> _Fitted:
    """Select (or force) the form, bootstrap it, band it, judge it; raises FitInputError when no form fits
    and FitStopped when `stop()` says so before there is a law (a bootstrap stopped later keeps its
    resamples so far)."""
    _check_sizes(curve.xs[0], curve.what)
    targets = _prediction_points(spec.predict, len(curve.xs), curve.what)
    score, selection, opts = _select(curve, spec, stop)
    assert score.law is not None
    gen = np.random.default_rng(spec.seed)
    boot = _bootstrap(score.law, curve, spec, opts, gen, stop)
    band = _band(score, boot, curve, targets, opts, spec.level, gen)
    intervals = {n: boot.interval(n, spec.level) for n in boot.names} if boot is not None and boot.n_done else {}
    law_warnings = fit_warnings(score.law, curve.xs, curve.loss, intervals=intervals, level=spec.level)
    law = replace(score.law, warnings=law_warnings)
    predictions = _predictions(law, band, targets, spec.level)
    warnings = (*_selection_warnings(selection), *law_warnings, *_prediction_warnings(predictions))
    chosen_by = _chosen_by(spec, score, selection)
    return _Fitted(law, selection.scores, chosen_by, boot, band, predictions,
                   heldout_report(score, curve.xs, curve.loss), tuple(warnings))


def _chosen_by(spec: FitSpec, score: FormScore, selection: Selection) -> str:
    if spec.form_name != AUTO:
        return FORCED
    if not score.ok:
        return BY_DEFAULT
    return ONLY_FORM if sum(s.law is not None for s in selection.scores) == 1 else BY_HELDOUT


def _bootstrap(law: FittedLaw, curve: _Curve, spec: FitSpec, opts: SelectOptions, gen: np.random.Generator,
               stop: StopCheck | None) -> Bootstrap | None:
    """The group bootstrap of the chosen form (None when not asked for)."""
    if spec.n_bootstrap <= 0:
        return None
    try:
        return bootstrap(law.form, curve.xs, curve.loss, groups=curve.groups, n_resamples=spec.n_bootstrap,
                         rng=gen, options=opts.fit, should_stop=stop)
    except ValueError as exc:  # the points passed selection, so this is not expected; still one line
        raise FitInputError(f"{curve.what}: bootstrap: {exc}") from None


def _prediction_points(predict_at: Sequence[tuple[float, ...]], n_vars: int, what: str) -> np.ndarray:
    """The points to predict at, (k, n_vars); FitInputError for a point of the wrong arity or not > 0."""
    for point in predict_at:
        if len(point) != n_vars:
            shape = "N,D" if n_vars == 2 else "one x"
            raise FitInputError(f"{what}: predict {','.join(f'{v:g}' for v in point)}: this law takes {shape}")
        if not all(math.isfinite(v) and v > 0 for v in point):
            raise FitInputError(f"{what}: predict {','.join(f'{v:g}' for v in point)}: sizes must be finite and > 0")
    return np.array(predict_at, dtype=float).reshape(-1, n_vars)


def _band(score: FormScore, boot: Bootstrap | None, curve: _Curve, targets: np.ndarray, opts: SelectOptions,
          level: float, gen: np.random.Generator) -> Band | None:
    """The calibrated band over the data's range (one variable) and at the predictions, from the bootstrap."""
    if boot is None or boot.n_done == 0 or score.law is None:
        return None
    if len(curve.xs) == 1:
        top = max(float(curve.xs[0].max()), float(targets.max()) if targets.size else 0.0)
        grid = np.geomspace(float(curve.xs[0].min()), top, BAND_POINTS)
        x_new: tuple[np.ndarray, ...] = (np.unique(np.concatenate([grid, targets[:, 0]])),)  # sorted, for plots
    elif targets.size:
        x_new = (targets[:, 0], targets[:, 1])
    else:
        return None
    rate = extrapolation_rate(score.law, curve.xs, curve.loss, opts, score.origin_laws)
    return band_from_bootstrap(score.law, boot, x_new, curve.xs, curve.loss, rate=rate, level=level, rng=gen)


def _predictions(law: FittedLaw, band: Band | None, targets: np.ndarray, level: float) -> tuple[Prediction, ...]:
    """The law at each target, with the band's bounds there (one variable: the band's grid holds every
    target; two: the band is computed at the targets, in order)."""
    out = []
    for i, point in enumerate(targets):
        value = float(predict(law, *point)[()])
        lo = hi = math.nan
        if band is not None:
            at = i if len(point) == 2 else int(np.flatnonzero(band.x[0] == point[0])[0])
            lo, hi = float(band.lo[at]), float(band.hi[at])
        out.append(Prediction(tuple(map(float, point)), value, lo, hi, level, float(point[0]) / law.x_range[1]))
    return tuple(out)


def _prediction_warnings(predictions: Sequence[Prediction]) -> list[str]:
    return [f"PREDICTION FAR BEYOND THE DATA: {point_text(p.at)} is {p.beyond:.3g}x the largest fitted size; "
            f"the law and its band assume the form holds that far (more than {FAR_BEYOND:g}x is a guess)"
            for p in predictions if p.far]


def _mixes_shapes(points: Sequence[RunPoint]) -> bool:
    """Several widths and several depths on one curve: loss need not fall with x alone (a shallow net
    of some size loses to a deeper one of the same size), so x-order violations are expected there."""
    widths = {p.shape[0] for p in points if p.shape[0] is not None}
    depths = {p.shape[1] for p in points if p.shape[1] is not None}
    return len(widths) > 1 and len(depths) > 1


def _mixed_shape_warning(mono: Monotonicity | None, x: str) -> list[str]:
    """One line for a pooled curve's x-order violations instead of one per pair: they say the curve
    mixes model families, not that a family scales badly (the per-depth laws check that)."""
    beyond = [v for v in (mono.violations if mono else ()) if v.exceeds_spread]
    if not beyond:
        return []
    worst = max(beyond, key=lambda v: v.loss_large / v.loss_small)
    return [f"loss is not a function of {x} alone: {len(beyond)} times a larger model loses to a smaller one "
            f"of another shape beyond the seed spread (worst: x={worst.x_small:.4g} {worst.loss_small:.4g} vs "
            f"x={worst.x_large:.4g} {worst.loss_large:.4g}); this law pools every shape: fit one per depth "
            "(--group-by depth) to check each family"]


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
    return [f"alpha moved by {percent_text(s.rel_range)} of its median over the last {n} evaluations "
            f"(tolerance {s.rel_tol:.0%}): the exponent is not stable over training"]


def _stability(points: Sequence[RunPoint], spec: FitSpec, law: FittedLaw,
               stop: StopCheck | None) -> Stability | None:
    """Refit the chosen form at every evaluation step; None when x = steps (the series *is* the data),
    without series, or when stopped."""
    if spec.x == FitX.STEPS or not spec.stability or (stop is not None and stop()):
        return None
    rows = [(xs, v, s) for p in points for s, xs, v in p.series]
    if not rows:
        return None
    x, y, step = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    options = FitOptions(loss=LossSpec(law.loss_space, law.delta), upper_bound=law.upper_bound)
    try:
        return exponent_stability(x, y, step, form=law.form, options=options, should_stop=stop)
    except FitStopped:  # the law stands; only its stability over training is unknown
        return None


def fit_curve(points: Sequence[RunPoint], spec: FitSpec, *, source: str, loss_rule: LossRule,
              group: str | None = None, n_diverged: int = 0, experiment_id: int | None = None,
              should_stop: StopCheck | None = None) -> FitReport:
    """Fit one curve of run points: the form, its bootstrap over sizes, held-out errors, checks.

    `should_stop` is consulted at every solver iteration: stopped before the law is chosen, this
    raises FitStopped; stopped later, the report keeps the bootstrap resamples done (and no stability)."""
    x = np.array([p.x for p in points], dtype=float)
    y = np.array([p.loss for p in points], dtype=float)
    what = f"{source}{f' ({group})' if group else ''}"
    fitted = _fit_curve_arrays(_Curve((x,), y, x, what), spec, should_stop)
    mono = check_monotone(x, y)
    stability = _stability(points, spec, fitted.law, should_stop)
    shape_warnings = (_mixed_shape_warning(mono, FitX(spec.x).value) if _mixes_shapes(points)
                      else _monotonicity_warnings(mono))
    warnings = (*fitted.warnings, *shape_warnings, *_stability_warnings(stability))
    unit = f"{np.unique(x).size} sizes"  # a resample draws sizes; a size brings all its seeds
    return FitReport(source, spec.x, loss_rule.label, group, fitted.law, (x,), y, tuple(p.run_id for p in points),
                     summarise_points(x, y), fitted.scores, fitted.chosen_by, fitted.boot, fitted.band,
                     fitted.predictions, fitted.heldout, mono, stability, tuple(warnings), spec.level, n_diverged,
                     experiment_id, loss_rule.value, spec.options_json(), resample_unit=unit)


# ----------------------------------------------------------------------------- experiments and CSV files


@dataclass(frozen=True)
class ExperimentFit:
    """The fits of one experiment: one report per curve, and curves that could not be fitted."""

    curves: Curves
    reports: tuple[FitReport, ...]
    skipped: tuple[str, ...]  # "depth=8: only 1 distinct value(s) of x ..."
    stopped: bool = False  # should_stop() said stop during a bootstrap: the curves fitted up to it


def _group_label(group_by: str | None, value: Hashable) -> str | None:
    return None if group_by is None else f"{group_by}={value}"


def fit_experiment(db_path: str | Path, experiment: str | None, spec: FitSpec, *,
                   should_stop: StopCheck | None = None) -> ExperimentFit:
    """Gather the finished runs of `experiment` and fit each curve (nothing is stored; see save_reports).

    `should_stop` (the app's cancel, from another thread) is consulted at every solver iteration: stopped
    while a curve's law is being chosen, this raises FitStopped (so every ExperimentFit holds at least one
    report); stopped during a curve's bootstrap, that report keeps the resamples done, no further curve
    is fitted, and the result has `stopped` set."""
    with Reader(db_path) as reader:
        curves = gather(reader, experiment, spec)
    if not curves.curves:
        raise FitInputError(f"experiment {curves.experiment!r}: no finished runs with a {curves.loss_rule.label} "
                            f"to fit ({curves.n_finished} finished, {curves.n_diverged} diverged)")
    reports: list[FitReport] = []
    skipped: list[str] = []
    for value, points in curves.curves.items():
        label = _group_label(spec.group_by, value)
        try:
            reports.append(fit_curve(points, spec, source=curves.experiment, loss_rule=curves.loss_rule, group=label,
                                     n_diverged=curves.diverged_by_group.get(value, 0),
                                     experiment_id=curves.experiment_id, should_stop=should_stop))
        except FitInputError as exc:
            if spec.group_by is None:
                raise
            skipped.append(str(exc))
        if should_stop is not None and should_stop():  # a bootstrap cut short: this curve is done, no more
            return ExperimentFit(curves, tuple(reports), tuple(skipped), stopped=True)
    if not reports:
        raise FitInputError(f"experiment {curves.experiment!r}: no curve could be fitted ({'; '.join(skipped)})")
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
    name = spec.form_name
    if name != AUTO and (form(name).n_vars == 2) != two_vars:
        wanted = "N and D (--csv-d or --csv-compute)" if form(name).n_vars == 2 else "one x"
        raise FitInputError(f"{path}: form {name} fits {wanted}; {'N, D' if two_vars else 'one x'} given"
                            + (" (L(N, D) is CHINCHILLA: drop --form)" if two_vars else ""))
    columns = csv_group_columns(spec.group_by)
    try:
        data = (load_csv(path, n=x, d=d, compute=compute, loss=y, group=unit, split=columns,
                         drop_highest=drop_highest) if two_vars
                else load_csv(path, x=x, loss=y, group=unit, split=columns, drop_highest=drop_highest))
    except (OSError, ValueError) as exc:
        raise FitInputError(str(exc)) from exc
    options = {**spec.options_json(2 if two_vars else 1), "csv_y": y, "csv_d": d, "csv_compute": compute,
               "csv_group": unit, "drop_highest": drop_highest}
    return _fit_csv_curves(data, _CsvSpec(str(path), y, unit, columns, spec, options))


@dataclass(frozen=True)
class _CsvSpec:
    """How the curves of one CSV file are fitted (the columns and the fit's choices)."""

    source: str
    loss_column: str
    unit: str | None
    group_columns: tuple[str, ...]
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
    return ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True)) if columns else None


def _csv_report(data: FitData, values: tuple[str, ...], label: str | None, cs: _CsvSpec) -> FitReport:
    """One curve of a CSV file: the form, its bootstrap over `cs.unit` (or rows), held-out errors, checks."""
    what = f"{cs.source}{f' ({label})' if label else ''}"
    spec, unit_text, unit_warnings = _resampling(data, cs)
    fitted = _fit_curve_arrays(_Curve(data.xs, data.loss, data.groups, what), spec, None)
    one = not data.two_variable
    mono = check_monotone(data.xs[0], data.loss) if one else None
    dropped = [row for row, v in data.dropped if v == values]
    warnings = (*fitted.warnings, *_monotonicity_warnings(mono), *unit_warnings, *_row_warnings(data, dropped, cs))
    x_name = data.names[0] if one else f"{data.names[0]},{data.names[1]}"
    points = summarise_points(data.xs[0], data.loss) if one else ()
    return FitReport(cs.source, x_name, None, label, fitted.law, data.xs, data.loss, (), points, fitted.scores,
                     fitted.chosen_by, fitted.boot, fitted.band, fitted.predictions, fitted.heldout, mono, None,
                     tuple(warnings), spec.level, options=cs.options, resample_unit=unit_text)


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
        effect = ("the point fit counts each once; the bootstrap draws them with their "
                  f"{cs.unit!r} value" if cs.unit is not None else
                  "the point fit counts each once, but the bootstrap counts every copy as independent evidence, "
                  "so its intervals are too narrow; remove them, or resample by a run or seed column (--csv-group)")
        out.append(f"{what}: {effect}")
    return out


def save_reports(db_path: str | Path, reports: Sequence[FitReport]) -> list[FitReport]:
    """Store every report in the `fits` table; returns them with `fit_id` set."""
    from scaletui.store.writer import Store

    with Store(db_path) as store:
        return [replace(r, fit_id=store.add_fit(r)) for r in reports]
