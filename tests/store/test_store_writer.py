"""The runner's Store (registration, states, orphans) and the worker's StoreSink (records)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from scaletui.core.records import LayerStats, MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.services.runner import pid_alive  # the liveness check the runner hands to reap_orphans
from scaletui.store import Reader, Store, StoreSink, UnknownRun

Spec = Callable[..., RunSpec]
INFO = ModelInfo(params=1234, flops_per_example=4321, layer_names=("fc0", "fc1"), lr=2e-3)


def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read with the plain stdlib driver, independent of the code under test."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def statuses(path: Path) -> dict[int, str]:
    return dict(query(path, "SELECT id, status FROM runs"))  # type: ignore[arg-type]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- registration


def test_register_inserts_queued_runs_with_their_config(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", "experiments.toml", "[experiment]", "final")
    specs = [spec(width=w, seed=s) for w in (8, 16) for s in (0, 1)]
    todo = store.register_runs(experiment, specs, fresh=False)
    assert [s for _, s in todo] == specs
    rows = query(db_path, "SELECT id, key, status, width, seed, experiment_id, config_json FROM runs ORDER BY id")
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (run_id, s.key, "queued", s.model.width, s.seed, experiment) for run_id, s in todo
    ]
    assert RunSpec.from_dict(json.loads(str(rows[0][6]))) == specs[0]
    assert query(db_path, "SELECT count(*) FROM events WHERE kind = 'queued'") == [(4,)]


def test_register_skips_finished_runs_and_returns_the_rest(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    specs = [spec(seed=s) for s in range(7)]
    ids = [run_id for run_id, _ in store.register_runs(experiment, specs, fresh=False)]
    store.finish_run(ids[0], RunOutcome(RunStatus.DONE, 100, final_test_loss=0.1))
    store.finish_run(ids[1], RunOutcome(RunStatus.EARLY_STOPPED, 50, final_test_loss=0.2))
    store.finish_run(ids[2], RunOutcome(RunStatus.DIVERGED, 10, final_test_loss=math.inf))
    store.mark_interrupted(ids[3], "SIGTERM")
    store.mark_failed(ids[4], "Traceback...\nValueError: bad")
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("UPDATE runs SET status = 'stale' WHERE id = ?", (ids[5],))
    # ids[6] stays queued

    todo = store.register_runs(experiment, specs, fresh=False)
    assert [run_id for run_id, _ in todo] == ids[3:]
    assert [s for _, s in todo] == specs[3:]
    assert query(db_path, "SELECT count(*) FROM runs") == [(7,)]


def test_register_leaves_running_rows_to_their_owner(store: Store, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, s)] = store.register_runs(experiment, [spec()], fresh=False)
    store.mark_running(run_id, os.getpid(), "here")
    assert store.register_runs(experiment, [s], fresh=False) == []


def test_register_fresh_wipes_records_and_requeues(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    specs = [spec(seed=0), spec(seed=1)]
    ids = [run_id for run_id, _ in store.register_runs(experiment, specs, fresh=False)]
    for run_id in ids:
        store.mark_running(run_id, os.getpid(), "here")
        with StoreSink(db_path, run_id) as sink:
            sink.started(INFO, 0)
            sink.metrics([MetricRecord(step, "train_loss", 1.0) for step in range(10)])
            sink.layer_stats([LayerStats(5, 0, "fc0", 1.0, 1.0, 0.1, 0)])
        store.finish_run(run_id, RunOutcome(RunStatus.DONE, 10, final_test_loss=0.3))
    assert store.register_runs(experiment, specs, fresh=False) == []

    todo = store.register_runs(experiment, specs, fresh=True)
    assert [run_id for run_id, _ in todo] == ids
    assert statuses(db_path) == {ids[0]: "queued", ids[1]: "queued"}
    assert query(db_path, "SELECT count(*) FROM metrics") == [(0,)]
    assert query(db_path, "SELECT count(*) FROM layer_stats") == [(0,)]
    assert query(db_path, "SELECT kind FROM events ORDER BY id") == [("queued",), ("queued",)]
    assert query(db_path, "SELECT step, params, final_test_loss, finished_at FROM runs") == [(None,) * 4] * 2


def test_a_run_listed_by_another_experiment_moves_to_it(store: Store, db_path: Path, spec: Spec) -> None:
    first = store.upsert_experiment("first", None, None, "final")
    second = store.upsert_experiment("second", None, None, "final")
    [(run_id, _)] = store.register_runs(first, [spec(experiment="first")], fresh=False)
    [(again, _)] = store.register_runs(second, [spec(experiment="second")], fresh=False)
    assert again == run_id
    assert query(db_path, "SELECT experiment_id FROM runs") == [(second,)]


# --------------------------------------------------------------------------- state changes


def test_every_state_change_appends_an_event(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    store.mark_running(run_id, 4242, "node1")
    store.mark_interrupted(run_id, "stopped by user")
    store.mark_queued([run_id])
    store.mark_running(run_id, 4243, "node1")
    store.mark_failed(run_id, "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA OOM")
    store.finish_run(run_id, RunOutcome(RunStatus.DONE, 100, final_test_loss=0.5))
    events = query(db_path, "SELECT kind, message FROM events WHERE run_id = ? ORDER BY id", (run_id,))
    assert [kind for kind, _ in events] == ["queued", "started", "interrupted", "queued", "started", "failed", "done"]
    assert events[2][1] == "stopped by user"
    assert events[5][1] == "RuntimeError: CUDA OOM"
    assert query(db_path, "SELECT status, pid, host, step, final_test_loss FROM runs") == [
        ("done", 4243, "node1", 100, 0.5)
    ]


def test_state_change_of_an_unknown_run_raises_and_writes_nothing(store: Store, db_path: Path) -> None:
    with pytest.raises(UnknownRun):
        store.mark_running(999, 1, "here")
    assert query(db_path, "SELECT count(*) FROM events") == [(0,)]


def test_upsert_experiment_updates_in_place(store: Store, db_path: Path) -> None:
    first = store.upsert_experiment("exp", "a.toml", "x = 1", "final")
    again = store.upsert_experiment("exp", "b.toml", "x = 2", "smoothed")
    assert first == again
    assert query(db_path, "SELECT name, config_path, config_toml, loss_rule FROM experiments") == [
        ("exp", "b.toml", "x = 2", "smoothed")
    ]
    with pytest.raises(ValueError):
        store.upsert_experiment("exp", None, None, "median")


def test_reap_orphans(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    alive, dead, remote_silent, remote_fresh, done = (
        run_id for run_id, _ in store.register_runs(experiment, [spec(seed=s) for s in range(5)], fresh=False)
    )
    store.mark_running(alive, os.getpid(), "here")
    store.mark_running(dead, dead_pid(), "here")
    store.mark_running(remote_silent, os.getpid(), "elsewhere")
    store.mark_running(remote_fresh, 1, "elsewhere")
    store.mark_running(done, dead_pid(), "here")
    store.finish_run(done, RunOutcome(RunStatus.DONE, 100))
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", (remote_silent,))

    reaped = store.reap_orphans("here", pid_alive, stale_after_s=3600)
    assert sorted(reaped) == sorted([dead, remote_silent])
    assert statuses(db_path) == {
        alive: "running", dead: "interrupted", remote_silent: "stale", remote_fresh: "running", done: "done",
    }  # fmt: skip
    kinds = query(db_path, "SELECT run_id, kind FROM events WHERE kind IN ('interrupted', 'stale')")
    assert sorted(kinds) == sorted([(dead, "interrupted"), (remote_silent, "stale")])
    assert store.reap_orphans("here", pid_alive, stale_after_s=3600) == []
    # A stale run whose worker turns out to be alive comes back to `running` at its next flush.
    with StoreSink(db_path, remote_silent) as sink:
        sink.metrics([MetricRecord(1, "train_loss", 1.0)])
    assert statuses(db_path)[remote_silent] == "running"


# --------------------------------------------------------------------------- StoreSink


@pytest.fixture
def run_id(store: Store, spec: Spec) -> int:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    store.mark_running(run_id, os.getpid(), "here")
    return run_id


def test_sink_round_trips_metrics_and_layer_stats_with_nan_and_inf(db_path: Path, run_id: int) -> None:
    values = [0.5, math.nan, math.inf, -math.inf, 1e-300, -0.0]
    layers = [
        LayerStats(4, 0, "fc0", math.nan, 2.0, math.inf, 3),
        LayerStats(4, 1, "fc1", 0.25, -math.inf, 1e-8, 0),
    ]
    with StoreSink(db_path, run_id) as sink:
        sink.started(INFO, 0)
        sink.metrics([MetricRecord(step, "train_loss", v) for step, v in enumerate(values)])
        sink.layer_stats(layers)

    with Reader(db_path) as reader:
        got = reader.metric_series(run_id, "train_loss")
        assert [s for s, _ in got] == list(range(len(values)))
        for (_, a), b in zip(got, values, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b
        back = reader.layer_stats_since(run_id, -1)
        assert back[1] == layers[1]
        assert math.isnan(back[0].grad_norm) and back[0].update_ratio == math.inf and back[0].nonfinite == 3
        assert reader.run(run_id).params == INFO.params  # type: ignore[union-attr]
    # The documented storage: NaN is NULL, infinities are REAL infinities (9e999 in SQL).
    assert query(db_path, "SELECT step FROM metrics WHERE value IS NULL") == [(1,)]
    assert query(db_path, "SELECT step FROM metrics WHERE value = 9e999") == [(2,)]
    assert query(db_path, "SELECT step FROM metrics WHERE value = -9e999") == [(3,)]
    assert query(db_path, "SELECT typeof(value) FROM metrics WHERE step = 2") == [("real",)]


def test_sink_buffers_until_flush_rows_or_flush(db_path: Path, run_id: int) -> None:
    sink = StoreSink(db_path, run_id, flush_rows=10, flush_seconds=3600)
    sink.metrics([MetricRecord(step, "train_loss", 1.0) for step in range(9)])
    assert query(db_path, "SELECT count(*) FROM metrics") == [(0,)]
    sink.metrics([MetricRecord(9, "train_loss", 1.0)])
    assert query(db_path, "SELECT count(*) FROM metrics") == [(10,)]
    sink.metrics([MetricRecord(10, "train_loss", 1.0)])
    sink.flush()
    assert query(db_path, "SELECT count(*), max(step) FROM metrics") == [(11, 10)]
    assert query(db_path, "SELECT step FROM runs WHERE id = ?", (run_id,)) == [(10,)]
    sink.close()


def test_sink_flushes_after_flush_seconds(db_path: Path, run_id: int) -> None:
    sink = StoreSink(db_path, run_id, flush_rows=10_000, flush_seconds=0.05)
    sink.metrics([MetricRecord(0, "train_loss", 1.0)])
    time.sleep(0.1)
    sink.metrics([MetricRecord(1, "train_loss", 1.0)])
    assert query(db_path, "SELECT count(*) FROM metrics") == [(2,)]
    sink.close()


def test_sink_events_are_written_at_once_with_the_records_before_them(db_path: Path, run_id: int) -> None:
    sink = StoreSink(db_path, run_id, flush_rows=10_000, flush_seconds=3600)
    sink.metrics([MetricRecord(0, "train_loss", 1.0)])
    sink.event("checkpoint", "step 0")
    assert query(db_path, "SELECT count(*) FROM metrics") == [(1,)]
    assert query(db_path, "SELECT kind, message FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)) == [
        ("checkpoint", "step 0")
    ]
    sink.close()


def test_resume_drops_rows_after_the_checkpoint_and_replay_does_not_duplicate(db_path: Path, run_id: int) -> None:
    with StoreSink(db_path, run_id, flush_rows=50) as sink:
        sink.started(INFO, 0)
        for step in range(100):
            sink.metrics([MetricRecord(step, "train_loss", 1.0), MetricRecord(step, "lr", 0.1)])
            sink.layer_stats([LayerStats(step, layer, f"fc{layer}", 1.0, 1.0, 0.1, 0) for layer in range(2)])

    with StoreSink(db_path, run_id, flush_rows=50) as sink:  # the worker restarted from a checkpoint at 60
        sink.started(INFO, resumed_from=60)
        assert query(db_path, "SELECT max(step), count(*) FROM metrics") == [(60, 61 * 2)]
        assert query(db_path, "SELECT max(step), count(*) FROM layer_stats") == [(60, 61 * 2)]
        assert query(db_path, "SELECT step FROM runs WHERE id = ?", (run_id,)) == [(60,)]
        for step in range(55, 100):  # replays a few steps it already had, too
            sink.metrics([MetricRecord(step, "train_loss", 2.0), MetricRecord(step, "lr", 0.1)])
            sink.layer_stats([LayerStats(step, layer, f"fc{layer}", 2.0, 1.0, 0.1, 0) for layer in range(2)])

    assert query(db_path, "SELECT count(*), count(DISTINCT step || '/' || key) FROM metrics") == [(200, 200)]
    assert query(db_path, "SELECT count(*) FROM layer_stats") == [(200,)]
    assert query(db_path, "SELECT min(step) FROM metrics WHERE value = 2.0") == [(55,)]
    assert query(db_path, "SELECT step FROM runs WHERE id = ?", (run_id,)) == [(99,)]
    kinds = [k for (k,) in query(db_path, "SELECT kind FROM events WHERE run_id = ? ORDER BY id", (run_id,))]
    assert kinds[-2:] == ["model", "resumed"]


def test_sink_heartbeat_advances_on_flush(db_path: Path, run_id: int) -> None:
    [(before,)] = query(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))
    time.sleep(0.01)
    with StoreSink(db_path, run_id) as sink:
        sink.flush()
    [(after,)] = query(db_path, "SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))
    assert isinstance(before, str) and isinstance(after, str) and after > before


def test_recorded_step_is_what_the_sink_flushed(store: Store, db_path: Path, run_id: int, spec: Spec) -> None:
    """What a resume may rely on: 0 before any record, then the last flushed step, back to the resume point."""
    assert store.recorded_step(run_id) == 0
    with StoreSink(db_path, run_id, flush_rows=10_000, flush_seconds=3600) as sink:
        sink.started(INFO, resumed_from=0)
        sink.metrics([MetricRecord(step, "train_loss", 1.0) for step in range(1, 41)])
        assert store.recorded_step(run_id) == 0  # buffered, not in the database yet
        sink.flush()
        assert store.recorded_step(run_id) == 40
        sink.started(INFO, resumed_from=20)
        assert store.recorded_step(run_id) == 20
    experiment = store.upsert_experiment("exp", None, None, "final")
    store.register_runs(experiment, [spec()], fresh=True)
    assert store.recorded_step(run_id) == 0
    with pytest.raises(UnknownRun):
        store.recorded_step(run_id + 1000)


def test_registering_the_same_sweep_again_changes_nothing(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    specs = [spec(seed=s) for s in range(3)]
    store.register_runs(experiment, specs, fresh=False)
    before = query(db_path, "SELECT * FROM runs ORDER BY id")
    assert len(store.register_runs(experiment, specs, fresh=False)) == 3
    assert query(db_path, "SELECT * FROM runs ORDER BY id") == before
    moved = [spec(seed=0, device="cpu")]  # same key (the key ignores the device), new spec to run with
    store.register_runs(experiment, moved, fresh=False)
    assert query(db_path, "SELECT device FROM runs ORDER BY id") == [("cpu",), ("auto",), ("auto",)]
