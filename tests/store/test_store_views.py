"""The named views, read through the Reader: run_summary, final_losses, latest_layer_stats."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from scaletui.core.records import LayerStats, ModelInfo, RunOutcome
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.store import Reader, Store, StoreSink

Spec = Callable[..., RunSpec]


def outcome(status: RunStatus = RunStatus.DONE, *, final: float, best: float, smoothed: float) -> RunOutcome:
    return RunOutcome(
        status, 100, final_train_loss=final / 2, final_test_loss=final, best_test_loss=best,
        best_step=50, smoothed_test_loss=smoothed, final_test_acc=0.9,
    )  # fmt: skip


@pytest.mark.parametrize(("rule", "expected"), [(LossRule.FINAL, 0.3), (LossRule.BEST, 0.1), (LossRule.SMOOTHED, 0.2)])
def test_run_summary_applies_the_experiments_loss_rule(
    store: Store, db_path: Path, spec: Spec, rule: LossRule, expected: float
) -> None:
    experiment = store.upsert_experiment("exp", None, None, rule)
    [(run_id, s)] = store.register_runs(experiment, [spec()], fresh=False)
    store.finish_run(run_id, outcome(final=0.3, best=0.1, smoothed=0.2))
    with Reader(db_path) as reader:
        row = reader.run(run_id)
    assert row is not None
    assert (row.loss, row.loss_rule, row.experiment, row.label) == (expected, rule.value, "exp", s.label)
    assert (row.final_test_loss, row.best_test_loss, row.smoothed_test_loss) == (0.3, 0.1, 0.2)


def test_changing_the_rule_changes_the_loss_and_marks_the_runs_changed(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    store.finish_run(run_id, outcome(final=0.3, best=0.1, smoothed=0.2))
    with Reader(db_path) as reader:
        cursor, _ = reader.changed_runs_since(0)
        store.upsert_experiment("exp", None, None, "best")
        cursor2, changed = reader.changed_runs_since(cursor)
    assert cursor2 > cursor
    assert [(row.id, row.loss) for row in changed] == [(run_id, 0.1)]


def test_final_losses_aggregates_over_seeds(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    specs = [spec(width=w, seed=s) for w in (8, 16) for s in range(4)] + [spec(width=8, seed=0, lr=1e-2)]
    ids = {(s.model.width, s.seed, s.train.lr): run_id for run_id, s in store.register_runs(experiment, specs, False)}
    losses = {(8, 0): 1.0, (8, 1): 2.0, (8, 2): 6.0, (16, 0): 0.5, (16, 1): 0.7}
    for (width, seed), loss in losses.items():
        store.finish_run(ids[width, seed, 1e-3], outcome(final=loss, best=loss, smoothed=loss))
    store.finish_run(ids[8, 3, 1e-3], outcome(RunStatus.DIVERGED, final=math.inf, best=5.0, smoothed=math.inf))
    store.mark_running(ids[16, 2, 1e-3], os.getpid(), "here")  # unfinished: not counted
    store.mark_failed(ids[16, 3, 1e-3], "boom")  # failed: not counted
    store.finish_run(ids[8, 0, 1e-2], outcome(final=9.0, best=9.0, smoothed=9.0))  # another sweep point
    with StoreSink(db_path, ids[8, 0, 1e-3]) as sink:
        sink.started(ModelInfo(params=100, flops_per_example=200, layer_names=(), lr=1e-3), 0)

    with Reader(db_path) as reader:
        rows = {(row.width, row.hyperparameters["lr"]): row for row in reader.final_losses("exp")}
    assert set(rows) == {(8, 1e-3), (16, 1e-3), (8, 1e-2)}
    w8 = rows[8, 1e-3]
    assert (w8.n_seeds, w8.n_diverged) == (3, 1)
    assert w8.mean_loss == pytest.approx(3.0)
    assert (w8.min_loss, w8.max_loss) == (1.0, 6.0)
    assert w8.params == 100.0
    assert "seed" not in w8.hyperparameters and "device" not in w8.hyperparameters
    w16 = rows[16, 1e-3]
    assert (w16.n_seeds, w16.n_diverged, w16.mean_loss) == (2, 0, pytest.approx(0.6))
    assert (rows[8, 1e-2].n_seeds, rows[8, 1e-2].mean_loss) == (1, 9.0)


def test_latest_layer_stats_is_the_last_logged_step_per_run(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    ids = [run_id for run_id, _ in store.register_runs(experiment, [spec(seed=0), spec(seed=1)], fresh=False)]
    for run_id, last in zip(ids, (30, 20), strict=True):
        with StoreSink(db_path, run_id) as sink:
            for step in range(0, last + 1, 10):
                rows = [LayerStats(step, layer, f"fc{layer}", step + layer, 1.0, 0.1, 0) for layer in range(3)]
                sink.layer_stats(rows)
    with Reader(db_path) as reader:
        latest = {run_id: reader.latest_layer_stats(run_id) for run_id in ids}
        raw = reader.db.execute("SELECT run_id, step, layer FROM latest_layer_stats ORDER BY run_id, layer").fetchall()
    assert [(s.step, s.layer, s.grad_norm) for s in latest[ids[0]]] == [(30, 0, 30.0), (30, 1, 31.0), (30, 2, 32.0)]
    assert [(s.step, s.layer) for s in latest[ids[1]]] == [(20, 0), (20, 1), (20, 2)]
    assert raw == [(ids[0], 30, layer) for layer in range(3)] + [(ids[1], 20, layer) for layer in range(3)]
