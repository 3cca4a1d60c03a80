"""Incremental reads: each poll returns exactly what is new since its cursor."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from scaletui.core.records import LayerStats, MetricRecord, RunOutcome
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.store import Reader, Store, StoreSink

Spec = Callable[..., RunSpec]


def test_metrics_since_returns_only_newer_steps_of_one_key(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _), (other, _)] = store.register_runs(experiment, [spec(seed=0), spec(seed=1)], fresh=False)
    reader = Reader(db_path)
    sink = StoreSink(db_path, run_id, flush_rows=1)
    noise = StoreSink(db_path, other, flush_rows=1)
    seen: list[tuple[int, float]] = []
    cursor = -1
    for chunk in range(5):
        steps = range(chunk * 10, chunk * 10 + 10)
        sink.metrics([MetricRecord(s, k, float(s)) for s in steps for k in ("train_loss", "test_loss")])
        noise.metrics([MetricRecord(s, "train_loss", -1.0) for s in steps])
        new = reader.metrics_since(run_id, "train_loss", cursor)
        assert [step for step, _ in new] == list(steps)
        seen += new
        cursor = new[-1][0]
    assert reader.metrics_since(run_id, "train_loss", cursor) == []
    assert seen == reader.metric_series(run_id, "train_loss") == [(s, float(s)) for s in range(50)]
    assert reader.metric_keys(run_id) == ["test_loss", "train_loss"]
    assert [r.step for r in reader.records_since(run_id, 47)] == [48, 48, 49, 49]
    sink.close()
    noise.close()
    reader.close()


def test_layer_stats_since(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    with StoreSink(db_path, run_id) as sink, Reader(db_path) as reader:
        sink.layer_stats([LayerStats(step, 0, "fc0", 1.0, 1.0, 0.1, 0) for step in (0, 10, 20)])
        sink.flush()
        assert [s.step for s in reader.layer_stats_since(run_id, 0)] == [10, 20]
        assert reader.layer_stats_since(run_id, 20) == []


def test_changed_runs_since_returns_only_changed_runs(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    ids = [run_id for run_id, _ in store.register_runs(experiment, [spec(seed=s) for s in range(3)], False)]
    with Reader(db_path) as reader:
        cursor, rows = reader.changed_runs_since(0)
        assert sorted(row.id for row in rows) == ids
        assert reader.changed_runs_since(cursor) == (cursor, [])

        store.mark_running(ids[1], os.getpid(), "here")
        cursor, rows = reader.changed_runs_since(cursor)
        assert [(row.id, row.status) for row in rows] == [(ids[1], "running")]

        with StoreSink(db_path, ids[1]) as sink:  # a flush is a change too (step, heartbeat)
            sink.metrics([MetricRecord(7, "train_loss", 1.0)])
        cursor, rows = reader.changed_runs_since(cursor)
        assert [(row.id, row.step) for row in rows] == [(ids[1], 7)]

        store.finish_run(ids[2], RunOutcome(RunStatus.DONE, 100, final_test_loss=0.5))
        store.mark_interrupted(ids[1], "stop")
        cursor, rows = reader.changed_runs_since(cursor)
        assert [(row.id, row.status) for row in rows] == [(ids[2], "done"), (ids[1], "interrupted")]
        assert reader.status_counts() == {"queued": 1, "done": 1, "interrupted": 1}
        assert reader.status_counts("exp") == reader.status_counts()
        assert reader.status_counts("nope") == {}


def test_events_since_uses_a_cursor_that_survives_deletes(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    specs = [spec(seed=0), spec(seed=1)]
    [(run_id, _), _] = store.register_runs(experiment, specs, fresh=False)
    store.add_event(None, "sweep", "started sweep")
    with Reader(db_path) as reader:
        events = reader.events_since(0)
        assert [e.kind for e in events] == ["queued", "queued", "sweep"]
        cursor = events[-1].id
        store.register_runs(experiment, specs, fresh=True)  # deletes the runs' events, adds new ones
        new = reader.events_since(cursor)
        assert [e.kind for e in new] == ["queued", "queued"]
        assert all(e.id > cursor for e in new)
        assert [e.run_id for e in reader.events_since(0, run_id=run_id)] == [run_id]


def test_runs_and_experiments(store: Store, db_path: Path, spec: Spec) -> None:
    a = store.upsert_experiment("a", "a.toml", "", "final")
    b = store.upsert_experiment("b", "b.toml", "", "best")
    store.register_runs(a, [spec(experiment="a", seed=s) for s in range(2)], fresh=False)
    store.register_runs(b, [spec(experiment="b", width=32)], fresh=False)
    with Reader(db_path) as reader:
        assert [(e.name, e.n_runs, e.loss_rule) for e in reader.experiments()] == [
            ("a", 2, "final"), ("b", 1, "best"),
        ]  # fmt: skip
        assert len(reader.runs()) == 3
        assert [r.width for r in reader.runs("b")] == [32]
        assert reader.run(12345) is None
        spec = reader.run_spec(reader.runs("b")[0].id)
        assert spec is not None and spec.model.width == 32
