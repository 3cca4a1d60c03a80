"""`pred. final`: each running run's final test loss, predicted at each of its evaluations.

The sweep's monitor (services.monitor) calls `CurveForecaster.forecast` when a run it watches has a new
test-loss evaluation before its last step; the forecaster learns from the finished runs of the same
sweep and the same training plan (config without size and seed: the same steps, schedule and data, so
the same evaluation steps) and from where the run's size stands at that evaluation (the losses of its
peers: the sweep's other running runs of its size and plan, which the monitor passes in, and finished ones)
through `analysis.curve_forecast`, and returns the prediction as a ledger
entry (`predictions` table, kind curve) for the monitor to store. The runner scores it when the run
ends (services.predictions); the app shows the latest one of each running run.

Finished runs' evaluations are read once and kept (they do not change); a run that finished without
reaching its last step (early stopping) teaches nothing about the end of a full run and is left out.

`finished_smaller` gives the monitor what `train.stop_when_hopeless` compares a running run with
(analysis.hopeless): the final test losses of the kept runs of its plan and depth that are smaller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scaletui.analysis.curve_forecast import BY_DEPTH, FinalForecast, Finished, forecast_final
from scaletui.analysis.hopeless import FinishedSize
from scaletui.core.rows import RunSummary
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import CURVE_FORM, FitX, LossRule, PredictionKind, PredictionSource, RunStatus
from scaletui.services.predictions import plan_hash, plan_of
from scaletui.store import Reader
from scaletui.store.predictions import NewPrediction

TEST_LOSS = "test_loss"


class CurveForecaster:
    """Learns from one sweep's finished runs; predicts its running runs' final test loss."""

    def __init__(self, experiment_id: int, level: float = 0.9) -> None:
        self.experiment_id = experiment_id
        self.level = level
        self._finished: dict[int, tuple[str, RunSummary, dict[int, float]]] = {}  # run id -> (plan, row, evals)
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
        """Keep a finished run as a reference (once): its plan, size and test-loss evaluations."""
        if row.id in self._finished or row.status is not RunStatus.DONE or not row.params or not row.depth:
            self._skipped.add(row.id)
            return
        evals = {p.step: p.value for p in reader.metric_series(row.id, TEST_LOSS)}
        if spec.train.steps in evals:
            self._finished[row.id] = (plan_hash(plan_of(spec, None)), row, evals)
        else:
            self._skipped.add(row.id)  # stopped early: says nothing about the end of a full run

    def forecast(self, row: RunSummary, spec: RunSpec, evals: Mapping[int, float],
                 running: Iterable[tuple[RunSummary, RunSpec, Mapping[int, float]]] = ()) -> NewPrediction | None:
        """The run's final test loss predicted from its latest evaluation before its last step, or None
        when it has none yet or the finished runs cannot say. `running`: the sweep's other running runs
        with their test-loss evaluations so far; those of the run's size and plan that have reached its
        step are its peers (analysis.curve_forecast: where its size stands at that step)."""
        steps = spec.train.steps
        seen = [s for s in evals if 0 < s < steps]
        if not seen or not row.params or not row.depth:
            return None
        step = max(seen)
        plan = plan_hash(plan_of(spec, None))
        refs = self._references(plan, step, steps)
        peers = self._peers(row, plan, step, running)
        result = forecast_final(evals[step], float(row.params), int(row.depth), refs, self.level, peers)
        return None if result is None else self._entry(row, spec, step, result)

    def _peers(self, row: RunSummary, plan: str, step: int,
               running: Iterable[tuple[RunSummary, RunSpec, Mapping[int, float]]]) -> list[float]:
        """The losses at `step` of the other runs of the run's size and plan, running or finished."""
        def same_size(other: RunSummary) -> bool:
            return other.id != row.id and (other.params, other.depth) == (row.params, row.depth)
        finished = [evals[step] for p, r, evals in self._finished.values()
                    if p == plan and same_size(r) and step in evals]
        live = [evals[step] for r, spec, evals in running
                if same_size(r) and step in evals and plan_hash(plan_of(spec, None)) == plan]
        return finished + live

    def finished_smaller(self, row: RunSummary, spec: RunSpec) -> list[FinishedSize]:
        """The run's group that is smaller: kept runs of its plan and depth (those the forecaster learns from
        for that depth) with fewer parameters, each with its final test loss (at its last step)."""
        if not row.params or not row.depth:
            return []
        plan, steps = plan_hash(plan_of(spec, None)), spec.train.steps
        return [FinishedSize(float(r.params or 0), evals[steps], f"{r.width}x{r.depth}")
                for p, r, evals in self._finished.values()
                if p == plan and r.depth == row.depth and 0 < (r.params or 0) < row.params]

    def _references(self, plan: str, step: int, steps: int) -> list[Finished]:
        return [Finished(float(r.params or 0), int(r.depth or 0), evals[step], evals[steps])
                for p, r, evals in self._finished.values() if p == plan and step in evals]

    def _entry(self, row: RunSummary, spec: RunSpec, step: int, f: FinalForecast) -> NewPrediction:
        curve = f"depth={row.depth}" if f.basis == BY_DEPTH else "every depth"
        inputs: dict[str, Any] = {"basis": f.basis, "n_runs": f.n_runs, "n_sizes": f.n_sizes,
                                  "coef": list(f.coef), "shrink": f.shrink, "n_peers": f.n_peers,
                                  "fraction": step / spec.train.steps,
                                  "loss_label": "final test loss"}
        plan = plan_of(spec, None)
        return NewPrediction(self.experiment_id, PredictionSource.MONITOR, row.width, row.depth, FitX.PARAMS.value,
                             float(row.params or 0), curve, LossRule.FINAL.value, f.predicted, f.lo, f.hi, f.level,
                             None, {"hashes": [plan_hash(plan)], "plans": {plan_hash(plan): plan}}, inputs,
                             kind=PredictionKind.CURVE, run_id=row.id, at_step=step, steps=spec.train.steps,
                             form=CURVE_FORM)
