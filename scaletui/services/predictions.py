"""The predictions ledger: say what the next size will reach before training it, then keep score.

The research notes ask one question over and over: what happens at the next size, and was it worth
it? A law that fits the sizes it was shown proves little; one that predicted a size *before* it was
trained, with a band, and was then checked, is evidence. So a prediction is recorded in the
`predictions` table with the law, its inputs and the training plan it was fitted under, and is scored
automatically once every run of that size (under that plan) has finished:

* **which law**: the law of the target's depth (the runs of that depth, against params) when the
  sweep has that depth with enough sizes to fit; else the law over every run, said in `curve`. Its
  form is chosen by held-out error, its band is the calibrated bootstrap band (services.fitting).
* **which size**: `width` x `depth`; its parameter count is read from the runs table when any run of
  that size exists, else counted without torch (mlp and resmlp), else given (`params`).
* **refused**: a size that is already trained (that is a fit, not a prediction: `scaletui fit
  --predict`), and one more than `MAX_EXTRAPOLATION` times beyond the sizes fitted.
* **the truth**: the mean loss, by the experiment's rule, of the finished runs of that size whose
  training plan (config without size, seed and device) is one the law was fitted under. Runs under
  another plan (more steps, other data) leave it `unscorable`, with what changed in `note`; a change
  of the experiment's loss rule does too. Diverged runs are left out of the mean and counted.
* **when**: the runner scores after each run finishes; `scaletui predict` and the fit pane score
  before they show the ledger. Scoring closes an entry once; it never changes after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaletui.analysis.configurator import mlp_params
from scaletui.core.config import Sweep
from scaletui.core.datasets import DATASETS
from scaletui.core.plans import plan_hash, plan_of
from scaletui.core.rows import PredictionRow, RunSummary
from scaletui.core.vocabulary import (
    DENSE_ARCHS,
    MAX_EXTRAPOLATION,
    OK,
    FitX,
    PredictionKind,
    PredictionSource,
    PredictionStatus,
    RunStatus,
)
from scaletui.services.fit_report import FitReport
from scaletui.services.fitting import FitInputError, FitSpec, StopCheck, fit_experiment, resolve_experiment
from scaletui.store import Reader
from scaletui.store.predictions import NewPrediction, PredictionScore

#: `inputs` key of a prediction scored on another experiment's runs (a suggestion's own sweep).
SCORED_IN = "scored_in"
#: Statuses of a run that may still change its loss (interrupted runs resume).
_UNFINISHED = {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.INTERRUPTED}


class PredictError(ValueError):
    """A prediction that cannot be made (bad size, nothing to fit, too far): one line for the user."""


@dataclass(frozen=True)
class Target:
    """The size to predict: width x depth and its value on the law's axis (params)."""

    width: int
    depth: int
    params: int


# ----------------------------------------------------------------------------- plans


def plan_diff(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """What changed between two plans, as `train.steps 750 -> 1500` lines."""
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += plan_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key} {a!r} -> {b!r}")
    return lines


def _run_plan(reader: Reader, run: RunSummary) -> dict[str, Any]:
    return plan_of(reader.run_spec(run.id), reader.user_config(run.id))


# ----------------------------------------------------------------------------- recording


def target_size(reader: Reader, runs: Sequence[RunSummary], width: int, depth: int, params: int | None) -> Target:
    """The size to predict, with its parameter count (given, read from a run of that size, or counted)."""
    if width < 1 or depth < 1:
        raise PredictError(f"width and depth must be positive integers, got width {width}, depth {depth}")
    if params is not None:
        if params < 1:
            raise PredictError(f"params must be a positive integer, got {params}")
        return Target(width, depth, params)
    same = [r.params for r in runs if r.width == width and r.depth == depth and r.params]
    if same:
        return Target(width, depth, int(same[0]))
    return Target(width, depth, _counted_params(reader, runs, width, depth))


def _counted_params(reader: Reader, runs: Sequence[RunSummary], width: int, depth: int) -> int:
    spec = next((s for s in (reader.run_spec(r.id) for r in runs) if s is not None), None)
    if spec is None or spec.model.arch not in DENSE_ARCHS:
        arch = spec.model.arch if spec is not None else "these runs' model"
        raise PredictError(f"cannot count the parameters of a {arch} without building it: give --params")
    info = DATASETS[spec.data.dataset]
    return mlp_params(math.prod(info.input_shape), width, depth, info.num_classes, spec.model.arch, spec.model.norm)


def record_prediction(db_path: str | Path, experiment: str | None, width: int, depth: int, *,
                      params: int | None = None, source: PredictionSource = PredictionSource.PREDICT,
                      form: str = "auto", n_bootstrap: int = 1000, level: float = 0.9,
                      should_stop: StopCheck | None = None) -> PredictionRow:
    """Fit the experiment, predict the loss of a `width` x `depth` model with its band, and record it."""
    upgrade(db_path)
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        runs = reader.runs(exp.name)
        target = target_size(reader, runs, width, depth, params)
        _refuse_trained(runs, target)
    report = _law_for(db_path, exp.name, target, form, n_bootstrap, level, should_stop)
    _refuse_far(report, target)
    entry = _new_prediction(db_path, report, target, source, level)
    from scaletui.store.writer import Store

    with Store(db_path) as store:
        prediction_id = store.add_prediction(entry)
    assert prediction_id is not None  # only curve predictions are ever refused as repeats
    return _one(db_path, prediction_id)


def upgrade(db_path: str | Path) -> None:
    """Bring an existing database to the current schema (the ledger is a table of schema v6)."""
    from scaletui.store.writer import Store

    with Store(db_path):
        pass


def next_size(db_path: str | Path, experiment: str | None) -> tuple[int, int]:
    """The size one step past the sweep: the next width at its deepest depth, where the next width
    continues the last step of the finished widths (160 after 128 -> 200; a single width doubles)."""
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        done = [r for r in reader.runs(exp.name) if r.status in OK and r.width and r.depth]
    if not done:
        raise PredictError(f"experiment {exp.name!r}: no finished runs with a width and depth to step past")
    widths = sorted({int(r.width or 0) for r in done})
    step = widths[-1] / widths[-2] if len(widths) > 1 else 2.0
    return max(widths[-1] + 1, round(widths[-1] * step)), max(int(r.depth or 0) for r in done)


def _refuse_trained(runs: Sequence[RunSummary], target: Target) -> None:
    done = [r for r in runs if r.width == target.width and r.depth == target.depth and r.status in OK]
    if done:
        raise PredictError(f"{target.width}x{target.depth} is already trained ({len(done)} finished run(s)): a "
                           "prediction is for a size the law has not seen; `scaletui fit --predict X` gives the "
                           "law's value there")


def _law_for(db_path: str | Path, experiment: str, target: Target, form: str, n_bootstrap: int, level: float,
             should_stop: StopCheck | None, run_ids: tuple[int, ...] | None = None) -> FitReport:
    """The law of the target's depth when it can be fitted, else the law over every run (of `run_ids`
    when given)."""
    at = ((float(target.params),),)
    try:
        by_depth = fit_experiment(db_path, experiment, FitSpec(group_by="depth", form=form, n_bootstrap=n_bootstrap,
                                                               level=level, predict=at, stability=False,
                                                               run_ids=run_ids),
                                  should_stop=should_stop)
        wanted = f"depth={target.depth}"
        for report in by_depth.reports:
            if report.group == wanted:
                return report
    except FitInputError:
        pass  # no per-depth law: fall back to the law over every run, which says why if it fails too
    try:
        pooled = fit_experiment(db_path, experiment, FitSpec(form=form, n_bootstrap=n_bootstrap, level=level,
                                                             predict=at, stability=False, run_ids=run_ids),
                                should_stop=should_stop)
    except FitInputError as exc:
        raise PredictError(str(exc)) from None
    return pooled.reports[0]


def _refuse_far(report: FitReport, target: Target) -> None:
    sizes = report.xs[0]
    top, bottom = float(max(sizes)), float(min(sizes))
    if target.params > MAX_EXTRAPOLATION * top or target.params * MAX_EXTRAPOLATION < bottom:
        ratio = target.params / top if target.params > top else bottom / target.params
        raise PredictError(f"{target.width}x{target.depth} ({target.params:,} params) is {ratio:.0f}x beyond the "
                           f"sizes the law was fitted on ({bottom:,.0f} to {top:,.0f} params): a prediction that far "
                           f"says nothing (the limit is {MAX_EXTRAPOLATION:.0f}x)")


def _new_prediction(db_path: str | Path, report: FitReport, target: Target, source: PredictionSource,
                    level: float, plans: dict[str, dict[str, Any]] | None = None,
                    extra: dict[str, Any] | None = None) -> NewPrediction:
    """The ledger entry for `report`'s prediction at `target`, in the law's experiment: scored against the
    plans it was fitted under, or against `plans` (by hash) when given."""
    pred = report.predictions[0]
    if plans is None:
        with Reader(db_path) as reader:
            by_id = {r.id: r for r in reader.runs(report.source)}
            plans = {plan_hash(p): p for p in (_run_plan(reader, by_id[i]) for i in report.run_ids if i in by_id)}
    band = (pred.lo, pred.hi) if math.isfinite(pred.lo) and math.isfinite(pred.hi) else (None, None)
    inputs = {"run_ids": list(report.run_ids), "sizes": sorted({float(v) for v in report.xs[0]}),
              "options": report.options, "warnings": list(report.warnings), "loss_label": report.loss_label,
              **(extra or {})}
    return NewPrediction(report.experiment_id or 0, source, target.width, target.depth, FitX.PARAMS.value,
                         float(target.params), report.group, report.loss_rule or "", float(pred.value), band[0],
                         band[1], level if band[0] is not None else None, report.law,
                         {"hashes": sorted(plans), "plans": plans}, inputs)


def record_for_sweep(db_path: str | Path, experiment: str | None, sweep: Sweep, *, n_bootstrap: int = 1000,
                     level: float = 0.9) -> PredictionRow:
    """Predict the loss of the one size `sweep` trains (a sweep `scaletui suggest --append` wrote) from
    `experiment`'s runs, and record it in `experiment`'s ledger, to be scored on the sweep's own runs:
    `inputs.scored_in` names the sweep's experiment, whose runner scores it when they finish.

    Which law: the law of each size's best training plan (`best_plan_runs`): with a learning-rate (or
    dropout) sweep, the loss a size reaches at its best rate, which is what a suggested rate aims for;
    the law over every run would average in the rates that were far off. Which truth: the mean loss of
    the sweep's runs (every seed), under the sweep's plan only."""
    upgrade(db_path)
    sizes = {(s.model.width, s.model.depth) for s in sweep.runs}
    if len(sizes) != 1:
        raise PredictError(f"{sweep.name}: the sweep trains {len(sizes)} sizes; a prediction is for one")
    (width, depth), = sizes
    with Reader(db_path) as reader:
        exp = resolve_experiment(reader, experiment)
        runs = reader.runs(exp.name)
        target = target_size(reader, runs, width, depth, None)
        _refuse_trained(runs, target)
        context = (sweep.runs[0].data.dataset, sweep.runs[0].model.arch, sweep.runs[0].train.optimizer)
        ids = best_plan_runs(reader, [r for r in runs if (r.dataset, r.arch, r.optimizer) == context])
    report = _law_for(db_path, exp.name, target, "auto", n_bootstrap, level, None, ids)
    _refuse_far(report, target)
    plans = {plan_hash(p): p for p in (plan_of(spec, None) for spec in sweep.runs)}
    from scaletui.store.writer import Store

    entry = _new_prediction(db_path, report, target, PredictionSource.SUGGEST, level, plans,
                            {SCORED_IN: sweep.name, "fitted_on": "each size's best training plan"})
    with Store(db_path) as store:
        prediction_id = store.add_prediction(entry)
    assert prediction_id is not None
    return _one(db_path, prediction_id)


def best_plan_runs(reader: Reader, runs: Sequence[RunSummary]) -> tuple[int, ...]:
    """The finished runs of each size's best training plan: per width x depth, the plan (config without
    size, seed and device) whose runs' mean loss, by the experiment's rule, is lowest. Runs that diverged
    are not finished-with-a-loss and do not count (a plan whose seeds all diverged has no mean)."""
    by_size: dict[tuple[int | None, int | None], dict[str, list[RunSummary]]] = {}
    for run in runs:
        if run.status in OK and run.loss is not None and math.isfinite(run.loss):
            by_size.setdefault((run.width, run.depth), {}).setdefault(plan_hash(_run_plan(reader, run)), []).append(run)
    best = [min(plans.values(), key=lambda rs: sum(float(r.loss or 0.0) for r in rs) / len(rs))
            for plans in by_size.values()]
    return tuple(sorted(r.id for group in best for r in group))


def _one(db_path: str | Path, prediction_id: int) -> PredictionRow:
    with Reader(db_path) as reader:
        return next(p for p in reader.predictions() if p.id == prediction_id)


# ----------------------------------------------------------------------------- scoring


def score_predictions(db_path: str | Path, experiment: str | None = None) -> list[PredictionRow]:
    """Score every open prediction that can be; returns the entries closed by this call."""
    with Reader(db_path) as reader:
        open_ = [p for p in reader.predictions(status=PredictionStatus.OPEN)
                 if experiment is None or experiment in (p.experiment, scored_in(p))]
        if not open_:
            return []
        view = _RunsView(reader)
        outcomes = [(p, _score(view, p)) for p in open_]
    closed = [(p, s) for p, s in outcomes if s is not None]
    if not closed:
        return []
    from scaletui.store.writer import Store

    with Store(db_path) as store:
        ids = {p.id for p, s in closed if store.score_prediction(p.id, s)}
    first = min(ids, default=0)  # read back only from the first closed one: the ledger grows to thousands
    with Reader(db_path) as reader:
        return [p for p in reader.predictions(after_id=first - 1) if p.id in ids]


class _RunsView:
    """The runs a scoring pass reads, each experiment's and each run's plan read once per pass."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._runs: dict[str | None, list[RunSummary]] = {}
        self._plans: dict[int, str] = {}
        self.rules = {e.name: str(e.loss_rule) for e in reader.experiments()}

    def runs(self, experiment: str | None) -> list[RunSummary]:
        if experiment not in self._runs:
            self._runs[experiment] = self.reader.runs(experiment)
        return self._runs[experiment]

    def plan_hash(self, run: RunSummary) -> str:
        if run.id not in self._plans:
            self._plans[run.id] = plan_hash(_run_plan(self.reader, run))
        return self._plans[run.id]


def _score(view: _RunsView, p: PredictionRow) -> PredictionScore | None:
    """The outcome of one open prediction, or None while what it predicts has not finished."""
    if p.kind is PredictionKind.CURVE:
        return _score_curve(view, p)
    where = scored_in(p)
    runs = [r for r in view.runs(where) if r.width == p.width and r.depth == p.depth]
    hashes = set(p.plan.get("hashes", []))
    matching = [r for r in runs if view.plan_hash(r) in hashes]
    if any(r.status in _UNFINISHED for r in matching):
        return None
    if not matching:
        return _unscorable_plan(view.reader, [r for r in runs if r not in matching], p)
    rule = view.rules.get(where or "")
    if rule is not None and rule != p.loss_rule:
        return PredictionScore(PredictionStatus.UNSCORABLE, note=f"the experiment's loss rule changed since the "
                                                                 f"prediction ({p.loss_rule} -> {rule})")
    return _truth_score(matching, p)


def scored_in(p: PredictionRow) -> str | None:
    """The experiment whose runs score `p`: its own, or the sweep a suggestion wrote (`record_for_sweep`)."""
    where = p.inputs.get(SCORED_IN) if isinstance(p.inputs, dict) else None
    return str(where) if where else p.experiment


def _score_curve(view: _RunsView, p: PredictionRow) -> PredictionScore | None:
    """A running run's final loss: scored by its final test loss once it has run to its last step."""
    run = next((r for r in view.runs(p.experiment) if r.id == p.run_id), None)
    if run is None:
        return PredictionScore(PredictionStatus.UNSCORABLE, note="the run is no longer in the database")
    if run.status in _UNFINISHED:
        return None
    if run.status is not RunStatus.DONE or run.final_test_loss is None or not math.isfinite(run.final_test_loss):
        return PredictionScore(PredictionStatus.UNSCORABLE, note=f"the run ended {run.status} before its last step")
    truth = float(run.final_test_loss)
    inside = None if p.lo is None or p.hi is None else bool(p.lo <= truth <= p.hi)
    return PredictionScore(PredictionStatus.SCORED, truth, 1, (p.predicted - truth) / truth, inside)


def _unscorable_plan(reader: Reader, other: list[RunSummary], p: PredictionRow) -> PredictionScore | None:
    finished = [r for r in other if r.status not in _UNFINISHED]
    if not finished:
        return None
    plans = list(p.plan.get("plans", {}).values())
    changes = plan_diff(plans[0], _run_plan(reader, finished[0])) if plans else []
    what = "; ".join(changes[:3]) or "its configuration"
    return PredictionScore(PredictionStatus.UNSCORABLE,
                           note=f"runs of {p.size_label} trained under another plan than the law's ({what})")


def _truth_score(matching: list[RunSummary], p: PredictionRow) -> PredictionScore:
    losses = [float(r.loss) for r in matching if r.status in OK and r.loss is not None and math.isfinite(r.loss)]
    left_out = len(matching) - len(losses)
    note = f"{left_out} of {len(matching)} run(s) diverged or had no loss, left out" if left_out else None
    if not losses:
        return PredictionScore(PredictionStatus.UNSCORABLE, n_truth=0, note=note)
    truth = sum(losses) / len(losses)
    inside = None if p.lo is None or p.hi is None else bool(p.lo <= truth <= p.hi)
    return PredictionScore(PredictionStatus.SCORED, truth, len(losses), (p.predicted - truth) / truth, inside, note)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TrackRecord:
    """How the ledger's scored predictions did: the numbers the fit pane and `predict --list` show."""

    entries: tuple[PredictionRow, ...]

    @property
    def scored(self) -> tuple[PredictionRow, ...]:
        return tuple(p for p in self.entries if p.status is PredictionStatus.SCORED)

    @property
    def median_abs_error(self) -> float | None:
        errors = sorted(abs(p.error) for p in self.scored if p.error is not None)
        if not errors:
            return None
        mid = len(errors) // 2
        return errors[mid] if len(errors) % 2 else (errors[mid - 1] + errors[mid]) / 2

    @property
    def band_held(self) -> tuple[int, int]:
        """(inside the band, scored with a band)."""
        banded = [p for p in self.scored if p.inside is not None]
        return sum(1 for p in banded if p.inside), len(banded)


def ledger(db_path: str | Path, experiment: str | None = None, *, score: bool = True) -> TrackRecord:
    """The experiment's next-size predictions (every experiment's when None), scored first where they can be.
    (The curve predictions of its runs are scored too; `curve_record` reads them.)"""
    if score:
        upgrade(db_path)
        score_predictions(db_path, experiment)
    with Reader(db_path) as reader:
        name = resolve_experiment(reader, experiment).name if experiment is not None else None
        return TrackRecord(tuple(reader.predictions(name, kind=PredictionKind.SIZE)))
