"""The one incremental reader that the app's poller and the alert monitor share, on a real database.

What it must get right: read nothing twice, miss nothing (an evaluation flushed after its step's train
loss, rows behind a poll that failed half-way), keep one position per owner, and start a run over
when it restarted or was rewound by a resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scaletui.core.records import LayerStats, MetricRecord, ModelInfo
from scaletui.services.tracker import LAYERS, READ_ERRORS, RECORDS, Tracker
from scaletui.store.writer import Store, StoreSink
from tests.tui import sweepdb

RUNNING = 5  # sweepdb: w16 d2, running at step 30 on another host
SPEC = sweepdb.specs((16,), (2,), (0,), 60)[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


@pytest.fixture
def tracker(db: Path) -> Tracker:
    t = Tracker(db)
    yield t  # type: ignore[misc]
    t.close()


def resume(db: Path, run_id: int, from_step: int, *, restart: bool = True) -> None:
    """What a resume writes: (a new start,) the checkpoint's step, records after it deleted."""
    if restart:
        with Store(db) as store:
            store.mark_interrupted(run_id, "stopped by the test")
            store.mark_running(run_id, pid=4_000_000 + run_id, host="gpu-box-elsewhere")
    with StoreSink(db, run_id) as sink:
        sink.started(ModelInfo(sweepdb.params_of(16, 2), 1, tuple(sweepdb.layer_names(2)), 1e-3), from_step)


def test_runs_events_and_alerts_are_read_once(tracker: Tracker, db: Path) -> None:
    assert len(tracker.changed_runs()) == 6 and len(tracker.changed_alerts()) == 2
    events = tracker.new_events()
    assert events and [e.id for e in events] == sorted(e.id for e in events)
    assert (tracker.changed_runs(), tracker.new_events(), tracker.changed_alerts()) == ([], [], [])
    sweepdb.extend_run(db, RUNNING, SPEC, 31, 35)
    assert [run.id for run in tracker.changed_runs()] == [RUNNING]


def test_the_first_read_of_events_is_the_latest_backlog(db: Path) -> None:
    every = Tracker(db).new_events()
    tracker = Tracker(db, event_backlog=3)
    assert tracker.new_events() == every[-3:]
    with Store(db) as store:
        store.add_event(None, "model", "one more")
    assert [e.message for e in tracker.new_events()] == ["one more"]
    tracker.close()


def test_each_owner_has_its_own_position_in_a_stream(tracker: Tracker, db: Path) -> None:
    tracker.changed_runs()
    whole = tracker.points(RUNNING, "train_loss", owner="plot")
    latest = tracker.points(RUNNING, "train_loss", owner="table", start=29)
    assert whole.reset and [p.step for p in whole.items] == list(range(31))
    assert latest.reset and [p.step for p in latest.items] == [30]
    sweepdb.extend_run(db, RUNNING, SPEC, 31, 32)
    tracker.changed_runs()
    for owner in ("plot", "table"):
        fresh = tracker.points(RUNNING, "train_loss", owner=owner)
        assert not fresh.reset and [p.step for p in fresh.items] == [31, 32]
        assert tracker.points(RUNNING, "train_loss", owner=owner).items == ()


def test_an_evaluation_flushed_after_its_steps_train_loss_is_read_once(tracker: Tracker, db: Path) -> None:
    tracker.changed_runs()
    tracker.records(RUNNING, owner="monitor")
    with StoreSink(db, RUNNING) as sink:  # step 31's train loss in one flush ...
        sink.metrics([MetricRecord(31, "train_loss", 0.9)])
    assert [(r.step, r.key) for r in tracker.records(RUNNING, owner="monitor").items] == [(31, "train_loss")]
    with StoreSink(db, RUNNING) as sink:  # ... an evaluation at that step in the next
        sink.metrics([MetricRecord(31, "test_loss", 0.95)])
    assert [(r.step, r.key) for r in tracker.records(RUNNING, owner="monitor").items] == [(31, "test_loss")]
    assert tracker.records(RUNNING, owner="monitor").items == ()


def test_layer_stats_of_a_step_split_over_two_flushes_are_read_once(tracker: Tracker, db: Path) -> None:
    tracker.changed_runs()
    first = tracker.layer_stats(RUNNING, owner="plot")
    assert first.reset and first.items[-1].step == 30
    with StoreSink(db, RUNNING) as sink:
        sink.layer_stats([LayerStats(40, 0, "hidden.0", 0.1, 3.0, 1e-3, 0)])
    assert [(s.step, s.layer) for s in tracker.layer_stats(RUNNING, owner="plot").items] == [(40, 0)]
    with StoreSink(db, RUNNING) as sink:
        sink.layer_stats([LayerStats(40, 1, "hidden.1", 0.1, 3.0, 1e-3, 0)])
    assert [(s.step, s.layer) for s in tracker.layer_stats(RUNNING, owner="plot").items] == [(40, 1)]


def test_a_restarted_run_is_read_from_the_start(tracker: Tracker, db: Path) -> None:
    tracker.changed_runs()
    sweepdb.extend_run(db, RUNNING, SPEC, 31, 45)
    tracker.changed_runs()
    assert tracker.points(RUNNING, "train_loss", owner="plot").items[-1].step == 45
    tracker.layer_stats(RUNNING, owner="plot")
    resume(db, RUNNING, 20)
    sweepdb.extend_run(db, RUNNING, SPEC, 21, 25)
    tracker.changed_runs()
    assert not tracker.reading(RUNNING, "train_loss", owner="plot")
    curve = tracker.points(RUNNING, "train_loss", owner="plot")
    assert curve.reset and [p.step for p in curve.items] == list(range(26))
    layers = tracker.layer_stats(RUNNING, owner="plot")
    assert layers.reset and sorted({s.step for s in layers.items}) == [0, 10, 20]


def test_a_run_rewound_behind_its_cursor_is_read_from_the_start(tracker: Tracker, db: Path) -> None:
    """Rewound without a new start time (the worker resumed its own checkpoint): the step tells."""
    tracker.changed_runs()
    tracker.records(RUNNING, owner="monitor")
    resume(db, RUNNING, 20, restart=False)
    tracker.changed_runs()
    again = tracker.records(RUNNING, owner="monitor")
    assert again.reset and max(r.step for r in again.items) == 20


def test_forget_and_keep_only_drop_one_owners_cursors(tracker: Tracker) -> None:
    tracker.changed_runs()
    for run_id in (1, 2):
        tracker.points(run_id, "test_loss", owner="plot")
        tracker.layer_stats(run_id, owner="plot")
        tracker.records(run_id, owner="monitor")
    tracker.keep_only("plot", {(1, "test_loss")})
    assert tracker.reading(1, "test_loss", owner="plot") and not tracker.reading(1, LAYERS, owner="plot")
    assert not tracker.reading(2, "test_loss", owner="plot") and tracker.reading(2, RECORDS, owner="monitor")
    tracker.forget(2, owner="monitor")
    assert not tracker.reading(2, RECORDS, owner="monitor") and tracker.reading(1, RECORDS, owner="monitor")
    assert tracker.points(2, "test_loss", owner="plot").reset


def test_a_transaction_that_raises_moves_no_cursor(tracker: Tracker) -> None:
    with pytest.raises(RuntimeError), tracker.transaction():
        tracker.changed_runs()
        tracker.points(RUNNING, "train_loss", owner="plot")
        raise RuntimeError("a detector failed")
    with tracker.transaction():
        assert len(tracker.changed_runs()) == 6
        assert tracker.points(RUNNING, "train_loss", owner="plot").reset
    assert tracker.changed_runs() == []


def test_read_errors_are_described_in_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = Tracker(tmp_path / "nope.db")
    with pytest.raises(READ_ERRORS) as caught:
        missing.changed_runs()
    assert missing.describe(caught.value) == f"{tmp_path / 'nope.db'}: no database yet (start a sweep)"
    assert missing.describe(sqlite3.OperationalError("disk I/O error")) == f"{tmp_path / 'nope.db'}: disk I/O error"
    named = f"{tmp_path / 'nope.db'}: not a scaletui database"
    assert missing.describe(RuntimeError(named)) == named


def test_a_run_started_again_is_read_from_the_start_even_where_it_stopped(tracker: Tracker, db: Path) -> None:
    """A new start resumed exactly at the last step read (nothing rewound): still a new start."""
    tracker.changed_runs()
    tracker.points(RUNNING, "test_loss", owner="table")
    resume(db, RUNNING, 30)
    tracker.changed_runs()
    again = tracker.points(RUNNING, "test_loss", owner="table")
    assert again.reset and [p.step for p in again.items] == [0, 20]
