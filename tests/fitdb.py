"""A real scaletui database whose finished runs follow a known scaling law, for the fit tests.

Runs are registered, started, fed metrics and finished through the store's own writers
(`Store`, `StoreSink`), exactly as the runner does, so the fit code reads what a sweep writes.

The law: at evaluation step t, test loss = E + A * params^-ALPHA + DRIFT / t, times a small
per-seed factor. The exponent does not change over training (only the floor drifts), so the
stability refits must find alpha constant; the final loss is the value at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scaletui.core.records import MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.store import Store, StoreSink

E, A, ALPHA, DRIFT = 0.3, 40.0, 0.5, 5.0
WIDTHS = (8, 16, 32, 64, 128)
EVAL_STEPS = (0, 100, 200, 300, 400, 500)
SEED_FACTOR = {0: 1.0, 1: 1.004}


def params_of(width: int, depth: int) -> int:
    """Parameters of the fake model: grows with width and depth."""
    return 100 * width * width * depth


def loss_at(params: int, step: int, seed: int) -> float:
    if step == 0:
        return 2.5  # the untrained model: ignored by every rule
    return (E + A * params**-ALPHA + DRIFT / step) * SEED_FACTOR[seed]


@dataclass(frozen=True)
class Planned:
    width: int
    depth: int
    seed: int
    status: RunStatus = RunStatus.DONE


def plan(widths: Sequence[int] = WIDTHS, depths: Sequence[int] = (1,), seeds: Sequence[int] = (0, 1),
         diverged: Sequence[tuple[int, int, int]] = ()) -> list[Planned]:
    out = []
    for w in widths:
        for d in depths:
            for s in seeds:
                status = RunStatus.DIVERGED if (w, d, s) in diverged else RunStatus.DONE
                out.append(Planned(w, d, s, status))
    return out


def spec(p: Planned, experiment: str) -> RunSpec:
    return RunSpec(experiment, DataSpec(train_size=512), ModelSpec(arch="mlp", width=p.width, depth=p.depth),
                   TrainSpec(batch_size=32, steps=EVAL_STEPS[-1], eval_every=100), seed=p.seed)


def _outcome(p: Planned, series: list[tuple[int, float]]) -> RunOutcome:
    if p.status is RunStatus.DIVERGED:
        return RunOutcome(RunStatus.DIVERGED, 150, error="loss became NaN")
    after = [v for s, v in series if s > 0]
    ema, n = 0.0, 0
    for v in after:
        ema, n = 0.9 * ema + 0.1 * v, n + 1
    return RunOutcome(RunStatus.DONE, EVAL_STEPS[-1], final_test_loss=series[-1][1], best_test_loss=min(after),
                      best_step=EVAL_STEPS[-1], smoothed_test_loss=ema / (1 - 0.9**n), final_train_loss=after[-1])


def fill(db: Path, planned: Sequence[Planned], experiment: str = "law", loss_rule: LossRule = LossRule.FINAL) -> Path:
    """Register and 'train' every planned run; returns the database path."""
    with Store(db) as store:
        exp_id = store.upsert_experiment(experiment, None, None, loss_rule)
        todo = store.register_runs(exp_id, [spec(p, experiment) for p in planned], fresh=False)
        by_key = {s.key: run_id for run_id, s in todo}
        for p in planned:
            run_id = by_key[spec(p, experiment).key]
            store.mark_running(run_id, pid=1, host="test")
            n = params_of(p.width, p.depth)
            series = [(s, loss_at(n, s, p.seed)) for s in EVAL_STEPS]
            if p.status is RunStatus.DIVERGED:
                series = [(0, 2.5), (100, math.nan)]
            with StoreSink(db, run_id) as sink:
                sink.started(ModelInfo(n, 2 * n, ("l0",), 1e-3), 0)
                sink.metrics([MetricRecord(s, "test_loss", v) for s, v in series])
            store.finish_run(run_id, _outcome(p, series))
    return db
