"""Real processes on one file: concurrent writers with a polling reader, and kill -9 mid-write."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import store_workers

from scaletui.core.records import MetricRecord
from scaletui.core.specs import RunSpec
from scaletui.store import Reader, Store, StoreSink

Spec = Callable[..., RunSpec]
SPAWN = multiprocessing.get_context("spawn")
ROWS_PER_WORKER = 20_000


def test_two_workers_write_while_the_parent_reads(store: Store, db_path: Path, spec: Spec) -> None:
    experiment = store.upsert_experiment("exp", None, None, "final")
    ids = [run_id for run_id, _ in store.register_runs(experiment, [spec(seed=0), spec(seed=1)], False)]
    workers = [
        SPAWN.Process(target=store_workers.write_metrics, args=(str(db_path), run_id, ROWS_PER_WORKER, 200))
        for run_id in ids
    ]
    for worker in workers:
        worker.start()
    seen: dict[int, list[int]] = {run_id: [] for run_id in ids}
    rev, polls = 0, 0
    with Reader(db_path) as reader:
        deadline = time.monotonic() + 60
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            for run_id in ids:  # the live app's poll: only what is new
                after = seen[run_id][-1] if seen[run_id] else -1
                seen[run_id] += [step for step, _ in reader.metrics_since(run_id, "train_loss", after)]
            rev, _ = reader.changed_runs_since(rev)
            reader.status_counts()
            store.add_event(None, "poll", str(polls))  # the runner writes too
            polls += 1
        for worker in workers:
            worker.join(timeout=30)
        for run_id in ids:
            after = seen[run_id][-1] if seen[run_id] else -1
            seen[run_id] += [step for step, _ in reader.metrics_since(run_id, "train_loss", after)]

    assert [w.exitcode for w in workers] == [0, 0]
    assert polls > 1
    for run_id in ids:
        assert seen[run_id] == list(range(ROWS_PER_WORKER))
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT run_id, count(*), count(DISTINCT step) FROM metrics GROUP BY run_id").fetchall()
    assert sorted(rows) == [(run_id, ROWS_PER_WORKER, ROWS_PER_WORKER) for run_id in ids]
    assert conn.execute("SELECT step FROM runs ORDER BY id").fetchall() == [(ROWS_PER_WORKER - 1,)] * 2
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_kill_9_leaves_a_readable_file_with_only_whole_flushes(store: Store, db_path: Path, spec: Spec) -> None:
    batch = 250
    experiment = store.upsert_experiment("exp", None, None, "final")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    for round_ in range(3):
        worker = SPAWN.Process(target=store_workers.write_forever, args=(str(db_path), run_id, batch))
        worker.start()
        with Reader(db_path) as reader:
            deadline = time.monotonic() + 120  # a spawned interpreter's start, on a loaded machine
            start = len(reader.metric_series(run_id, "train_loss"))
            while len(reader.metric_series(run_id, "train_loss")) < start + (round_ + 1) * batch:
                assert time.monotonic() < deadline and worker.is_alive()
                time.sleep(0.002 * (round_ + 1))
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)
        assert worker.exitcode == -signal.SIGKILL

        conn = sqlite3.connect(db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count, top = conn.execute("SELECT count(*), max(step) FROM metrics").fetchone()
        conn.close()
        assert count % batch == 0 and top == count - 1  # no partial flush, no gap
        with StoreSink(db_path, run_id) as sink:  # the next worker resumes from what is there
            sink.metrics([MetricRecord(step, "train_loss", 0.0) for step in range(count, count + batch)])
