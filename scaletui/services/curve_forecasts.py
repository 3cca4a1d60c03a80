"""`pred. final`: each running run's final test loss, predicted while it trains.

The sweep's monitor (services.monitor) calls `CurveForecaster.forecast` when a run it watches has a new
test-loss evaluation before its last step, or, before its first evaluation, a new log window of train
losses in a new tenth of its steps; the forecaster learns from the finished runs of the same sweep and
the same training plan (config without size and seed: the same steps, schedule and data, so the same
evaluation steps and log windows) and from where the run's size stands at that step (the losses of its
peers: the sweep's other running runs of its size and plan, which the monitor passes in, and finished
ones) through `analysis.curve_forecast`, and returns the prediction as a ledger entry (`predictions`
table, kind curve) for the monitor to store. The runner scores it when the run ends
(services.predictions); the app shows the latest one of each running run.

What a prediction starts from (its `anchor`, kept in the entry's inputs): the test loss at the run's
latest evaluation; before the first one, the mean train loss of its latest log window (the
`log_every` steps ending there), so that a run is predicted from its first tenth even when evaluations
are rare (the default sweep evaluates at step 100 of 750). Both predict the final *test* loss: what is
learned is the finished runs' drop from the same anchor at the same step to their final test loss.

Finished runs' evaluations and early log windows are read once and kept (they do not change); a run
that finished without reaching its last step (early stopping) teaches nothing about the end of a full
run and is left out.

`finished_smaller` gives the monitor what `train.stop_when_hopeless` compares a running run with
(analysis.hopeless): the final test losses of the kept runs of its plan and depth that are smaller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scaletui.analysis.curve_forecast import (
    BY_DEPTH,
    FinalForecast,
    Finished,
    forecast_final,
    latest_window,
    window_mean,
    window_means,
)
from scaletui.analysis.hopeless import FinishedSize
from scaletui.core.plans import plan_hash, plan_of
from scaletui.core.rows import RunSummary
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import (
    CURVE_FORM,
    TEST_LOSS_METRIC,
    TRAIN_LOSS_METRIC,
    FitX,
    LossRule,
    PredictionKind,
    PredictionSource,
    RunStatus,
)
from scaletui.store import Reader
from scaletui.store.predictions import NewPrediction


@dataclass(frozen=True)
class LiveRun:
    """A running run as the monitor has read it: its losses so far (step -> value). `train` is only
    needed before its first evaluation and may be left empty after it."""

    row: RunSummary
    spec: RunSpec
    test: Mapping[int, float]
    train: Mapping[int, float] = field(default_factory=dict)

    def at(self, kind: str, step: int) -> float | None:
        """The anchor value of `kind` at `step`: the test loss there, or the mean of the train-loss log
        window ending there."""
        if kind == TEST_LOSS_METRIC:
            return self.test.get(step)
        return window_mean(self.train, step, self.spec.train.log_every)


@dataclass(frozen=True)
class _Reference:
    """A finished run kept to learn from: its plan, row, test-loss evaluations and the train-loss
    window means at its log steps before its first evaluation (windows of `log_every` steps: the
    plan leaves the logging cadence out, so a run asks only for windows as wide as its own)."""

    plan: str
    row: RunSummary
    evals: dict[int, float]
    windows: dict[int, float]
    log_every: int

    def at(self, anchor: str, step: int, log_every: int) -> float | None:
        if anchor == TEST_LOSS_METRIC:
            return self.evals.get(step)
        return self.windows.get(step) if log_every == self.log_every else None


def first_evaluation(spec: RunSpec) -> int:
    """The first step after 0 with a test evaluation: every `eval_every` steps, and at the last step."""
    return min(spec.train.eval_every, spec.train.steps)


def anchor_of(run: LiveRun) -> tuple[str, int] | None:
    """What the run's prediction starts from now: its latest evaluation before its last step, else its
    latest complete log window of train losses before its first evaluation, else None."""
    steps = run.spec.train.steps
    seen = [s for s in run.test if 0 < s < steps]
    if seen:
        return TEST_LOSS_METRIC, max(seen)
    step = latest_window(run.train, run.spec.train.log_every, before=first_evaluation(run.spec))
    return None if step is None else (TRAIN_LOSS_METRIC, step)


class CurveForecaster:
    """Learns from one sweep's finished runs; predicts its running runs' final test loss."""

    def __init__(self, experiment_id: int, level: float = 0.9) -> None:
        self.experiment_id = experiment_id
        self.level = level
        self._finished: dict[int, _Reference] = {}  # run id -> what it teaches
        self._skipped: set[int] = set()  # finished runs that teach nothing (read once)

    def learn_experiment(self, reader: Reader, experiment: str) -> None:
        """Keep every finished run of the experiment not kept yet, from this sweep or an earlier one (a
        follow-up sweep of one new size learns from the sizes trained before it)."""
        for row in reader.runs(experiment):
            if row.id not in self._finished and row.id not in self._skipped and row.status is RunStatus.DONE:
                spec = reader.run_spec(row.id)
                if spec is None:  # a run of one's own loop: no plan to compare
                    self._skipped.add(row.id)
                    continue
                self.learn(reader, row, spec)

    def learn(self, reader: Reader, row: RunSummary, spec: RunSpec) -> None:
        """Keep a finished run as a reference (once): its plan, size, test-loss evaluations and the
        train-loss window means before its first evaluation."""
        if row.id in self._finished or row.status is not RunStatus.DONE or not row.params or not row.depth:
            self._skipped.add(row.id)
            return
        evals = {p.step: p.value for p in reader.metric_series(row.id, TEST_LOSS_METRIC)}
        if spec.train.steps not in evals:
            self._skipped.add(row.id)  # stopped early: says nothing about the end of a full run
            return
        first = first_evaluation(spec)
        early = {p.step: p.value for p in reader.metrics_since(row.id, TRAIN_LOSS_METRIC, 0, up_to=first)}
        windows = window_means(early, spec.train.log_every, before=first)
        self._finished[row.id] = _Reference(plan_hash(plan_of(spec, None)), row, evals, windows, spec.train.log_every)

    def forecast(self, run: LiveRun, running: Iterable[LiveRun] = ()) -> NewPrediction | None:
        """The run's final test loss predicted from where it stands now (`anchor_of`), or None when it
        has nothing to start from yet or the finished runs cannot say. `running`: the sweep's other
        running runs; those of the run's size and plan that have reached its step are its peers
        (analysis.curve_forecast: where its size stands at that step)."""
        row, spec = run.row, run.spec
        anchor = anchor_of(run)
        if anchor is None or not row.params or not row.depth:
            return None
        kind, step = anchor
        now = run.at(kind, step)
        plan = plan_hash(plan_of(spec, None))
        refs = [Finished(float(r.row.params or 0), int(r.row.depth or 0), value, r.evals[spec.train.steps])
                for r in self._finished.values()
                if r.plan == plan and (value := r.at(kind, step, spec.train.log_every)) is not None]
        peers = self._peers(run, plan, kind, step, running)
        result = None if now is None else forecast_final(now, float(row.params), int(row.depth), refs,
                                                         self.level, peers)
        return None if result is None else self._entry(row, spec, kind, step, result)

    def _peers(self, run: LiveRun, plan: str, kind: str, step: int, running: Iterable[LiveRun]) -> list[float]:
        """The losses at `step` (of the anchor's kind) of the other runs of the run's size and plan,
        finished or running."""
        def same_size(other: RunSummary) -> bool:
            return other.id != run.row.id and (other.params, other.depth) == (run.row.params, run.row.depth)
        width = run.spec.train.log_every
        finished = [value for r in self._finished.values()
                    if r.plan == plan and same_size(r.row) and (value := r.at(kind, step, width)) is not None]
        live = [value for other in running
                if same_size(other.row) and (kind == TEST_LOSS_METRIC or other.spec.train.log_every == width)
                and (value := other.at(kind, step)) is not None
                and plan_hash(plan_of(other.spec, None)) == plan]
        return finished + live

    def finished_smaller(self, row: RunSummary, spec: RunSpec) -> list[FinishedSize]:
        """The run's group that is smaller: kept runs of its plan and depth (those the forecaster learns from
        for that depth) with fewer parameters, each with its final test loss (at its last step)."""
        if not row.params or not row.depth:
            return []
        plan, steps = plan_hash(plan_of(spec, None)), spec.train.steps
        return [FinishedSize(float(r.row.params or 0), r.evals[steps], f"{r.row.width}x{r.row.depth}")
                for r in self._finished.values()
                if r.plan == plan and r.row.depth == row.depth and 0 < (r.row.params or 0) < row.params]

    def _entry(self, row: RunSummary, spec: RunSpec, kind: str, step: int, f: FinalForecast) -> NewPrediction:
        curve = f"depth={row.depth}" if f.basis == BY_DEPTH else "every depth"
        inputs: dict[str, Any] = {"basis": f.basis, "n_runs": f.n_runs, "n_sizes": f.n_sizes,
                                  "coef": list(f.coef), "shrink": f.shrink, "n_peers": f.n_peers,
                                  "anchor": kind, "anchor_steps": _anchor_steps(kind, step, spec),
                                  "fraction": step / spec.train.steps,
                                  "loss_label": "final test loss"}
        plan = plan_of(spec, None)
        return NewPrediction(self.experiment_id, PredictionSource.MONITOR, row.width, row.depth, FitX.PARAMS.value,
                             float(row.params or 0), curve, LossRule.FINAL.value, f.predicted, f.lo, f.hi, f.level,
                             None, {"hashes": [plan_hash(plan)], "plans": {plan_hash(plan): plan}}, inputs,
                             kind=PredictionKind.CURVE, run_id=row.id, at_step=step, steps=spec.train.steps,
                             form=CURVE_FORM)


def _anchor_steps(kind: str, step: int, spec: RunSpec) -> list[int]:
    """The steps the anchor summarises: the evaluation's, or the first and last of the log window."""
    return [step] if kind == TEST_LOSS_METRIC else [step - spec.train.log_every + 1, step]
