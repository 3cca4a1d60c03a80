"""One sweep file, one checkpoint folder, two databases: neither resumes from or deletes the other's checkpoints.

`--db` picks the database while `experiment.checkpoint_dir` stays the same, so two databases
of one sweep share a checkpoint folder. A checkpoint belongs to one run of one database: each
database keeps its runs' checkpoints under `<checkpoint_dir>/<database id>/<run key>`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.faults.conftest import Sweep, assert_complete_without_duplicates, assert_intact, events, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def test_a_second_database_trains_every_run_from_scratch(fault_sweep: Callable[..., Sweep]) -> None:
    first = fault_sweep()  # 4 runs of 60 steps, checkpoints at 20 and 40 stay on disk
    second = replace(first, db=first.db.with_name("new.db"))
    assert first.run().returncode == 0

    out = second.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed" not in out.stdout
    for sweep in (first, second):
        assert_intact(sweep.db)
        assert_complete_without_duplicates(sweep.db)  # train_loss at every step, every evaluation
    assert events(second.db, "resumed") == [] and events(second.db, "checkpoint") == []
    for run_id, best_step in rows(second.db, "SELECT id, best_step FROM runs"):
        assert rows(second.db, "SELECT count(*) FROM metrics WHERE run_id = ? AND step = ? AND key = 'test_loss'",
                    run_id, best_step) == [(1,)]
    assert first.database_id() != second.database_id()
    for sweep in (first, second):
        assert len(list(sweep.run_checkpoints().iterdir())) == 4


def test_fresh_on_one_database_leaves_the_other_resumable(fault_sweep: Callable[..., Sweep],
                                                          reap_sessions: list) -> None:
    # one worker: the first run is stopped midway, the second has not started
    fresh = fault_sweep(model={"width": [32, 48], "depth": 1},
                        train={"steps": 120, "checkpoint_every": 40, "eval_every": 40, "log_every": 10})
    other = replace(fresh, db=fresh.db.with_name("other.db"))
    proc = other.start("hold_step:100")  # parked mid-run until the Ctrl-C below (see test_signals)
    reap_sessions.append(proc)
    wait_for(other.parked, what="the first run parked at step 100")
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    stopped = dict(rows(other.db, "SELECT id, step FROM runs WHERE status = 'interrupted'"))
    assert list(stopped.values()) == [100]  # the wider run (longest first), parked; the other never started

    out = fresh.run(None, "--fresh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_complete_without_duplicates(fresh.db)

    out = other.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_intact(other.db)
    assert_complete_without_duplicates(other.db)  # nothing missing, nothing twice
    resumed = {run_id: int(m.split()[2].rstrip(";")) for run_id, m in events(other.db, "resumed")}
    assert resumed == stopped  # each picked up its own checkpoint, where it stopped
