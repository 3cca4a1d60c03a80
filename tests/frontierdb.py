"""A real scaletui database with a data axis (width x steps) whose final losses follow a known L(N, D).

Runs are registered, started, fed metrics and finished through the store's own writers (`Store`, `StoreSink`),
as tests/fitdb.py does, so `scaletui fit --frontier` reads what a sweep writes. N = 100 w^2 parameters,
flops_per_example = 2 N (so C = 3 x 2 N x D = 6 N D, Hoffmann et al.'s convention), D = steps x BATCH examples
seen, and the final test loss is E + A/N^ALPHA + B/D^BETA times a fixed factor per (N, D) point (NOISE, log-normal
with sd 1%, the same every time) and a per-seed factor: a law exact to the point would give every bootstrap
resample the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.core.records import MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.store import Store, StoreSink

LAW = {"E": 0.4, "A": 40.0, "alpha": 0.5, "B": 20.0, "beta": 0.4}
WIDTHS = (8, 16, 32, 64, 128)
STEPS = (100, 200, 400, 800, 1600)
BATCH = 32
TRAIN_SIZE = 4096
SEED_FACTOR = {0: 1.0, 1: 1.003}
NOISE = 0.01


def point_factor(width: int, steps: int) -> float:
    """The fixed noise of one (N, D) point: the same in every database, so the tests are deterministic."""
    return float(np.exp(np.random.default_rng(width * 100_003 + steps).normal(0.0, NOISE)))


def params_of(width: int) -> int:
    return 100 * width * width


def true_loss(n: Any, d: Any) -> Any:
    """The law at (N, D): floats or numpy arrays."""
    return LAW["E"] + LAW["A"] * n ** -LAW["alpha"] + LAW["B"] * d ** -LAW["beta"]


def _spec(width: int, steps: int, seed: int, experiment: str) -> RunSpec:
    return RunSpec(experiment, DataSpec(train_size=TRAIN_SIZE), ModelSpec(arch="mlp", width=width, depth=1),
                   TrainSpec(batch_size=BATCH, steps=steps, eval_every=steps // 2), seed=seed)


def _outcome(steps: int, final: float, mid: float) -> RunOutcome:
    ema = (0.1 * 0.9 * mid + 0.1 * final) / (1 - 0.9**2)  # the debiased EMA of the two evaluations
    return RunOutcome(RunStatus.DONE, steps, final_test_loss=final, best_test_loss=min(final, mid), best_step=steps,
                      smoothed_test_loss=ema, final_train_loss=final)


def fill(db: Path, widths: Sequence[int] = WIDTHS, steps: Sequence[int] = STEPS, seeds: Sequence[int] = (0, 1),
         experiment: str = "frontier") -> Path:
    """Register and 'train' a width x steps x seeds grid; returns the database path."""
    grid = [(w, s, seed) for w in widths for s in steps for seed in seeds]
    with Store(db) as store:
        exp_id = store.upsert_experiment(experiment, None, None, LossRule.FINAL)
        todo = store.register_runs(exp_id, [_spec(w, s, seed, experiment) for w, s, seed in grid], fresh=False)
        by_key = {spec.key: run_id for run_id, spec in todo}
        for w, s, seed in grid:
            run_id = by_key[_spec(w, s, seed, experiment).key]
            store.mark_running(run_id, pid=1, host="test")
            n = params_of(w)
            factor = point_factor(w, s) * SEED_FACTOR[seed]
            final, mid = float(true_loss(n, s * BATCH) * factor), float(true_loss(n, s * BATCH / 2) * factor)
            with StoreSink(db, run_id) as sink:
                sink.started(ModelInfo(n, 2 * n, ("l0",), 1e-3), 0)
                sink.metrics([MetricRecord(0, "test_loss", 2.5), MetricRecord(s // 2, "test_loss", mid),
                              MetricRecord(s, "test_loss", final)])
            store.finish_run(run_id, _outcome(s, final, mid))
    return db
