"""Two workers write while an app-like poller and an external `sqlite3` reader loop read the same file.

The poller does what the live app does every tick (runs changed since a rev cursor, new train
losses since a step cursor, new events, alerts, status counts) through `scaletui.store.Reader`.
The external reader is the `sqlite3` shell when it is installed (a user's ad hoc queries), else a
separate Python process with plain `sqlite3`. Nobody may see `database is locked`, and every count
must equal what the runner reported.

The external reader waits up to 2 s on a lock (`.timeout 2000`), as README "The database" tells users
to: in WAL mode SQLite itself hands a reader SQLITE_BUSY, with no writer involved, in the instant when
the last connection to the file closes (it holds an exclusive lock while it checkpoints and removes the
WAL) or a new first connection rebuilds the WAL index (sqlite.org/wal.html, "Sometimes Queries Return
SQLITE_BUSY In WAL Mode"). Without a timeout the shell failed so twice in about ten full test runs, when a
writer process closed its last connection; that instant is SQLite's, not a lock scaletui holds.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scaletui.store import Reader
from tests.conftest import REPO
from tests.faults.conftest import Sweep, assert_intact, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

QUERIES = ["SELECT count(*) FROM metrics", "SELECT status, count(*) FROM run_summary GROUP BY status",
           "SELECT run_id, max(step) FROM metrics GROUP BY run_id"]
PYTHON_READER = """
import pathlib, sqlite3, sys
db, stop, queries = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
while not stop.exists():
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    for q in queries:
        conn.execute(q).fetchall()
    conn.close()
"""


def external_reader(db: Path, stop: Path) -> subprocess.Popen[str]:
    """Query the file in a loop from another program until `stop` exists; errors go to its stderr."""
    if shutil.which("sqlite3"):
        statements = "; ".join(QUERIES) + ";"
        loop = (f'until [ -e "{stop}" ]; do sqlite3 -bail -cmd ".timeout 2000" "file:{db}?mode=ro" "{statements}" '
                '>/dev/null || exit 1; done')
        return subprocess.Popen(["bash", "-c", loop], stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([sys.executable, "-c", PYTHON_READER, str(db), str(stop), *QUERIES],
                            stderr=subprocess.PIPE, text=True)


def schema_ready(db: Path) -> bool:
    try:
        return bool(rows(db, "SELECT count(*) FROM runs")[0][0])
    except sqlite3.OperationalError:
        return False


class AppLikePoller:
    """What the app's poller does each tick, keeping only cursors and the train losses it was given."""

    def __init__(self, db: Path) -> None:
        self.reader = Reader(db)
        self.rev = 0
        self.event_id = 0
        self.train_steps: dict[int, list[int]] = {}
        self.ticks = 0

    def tick(self) -> None:
        self.rev, changed = self.reader.changed_runs_since(self.rev)
        for run in changed:
            self.train_steps.setdefault(run.id, [])
        for run_id, steps in self.train_steps.items():
            after = steps[-1] if steps else -1
            steps += [step for step, _ in self.reader.metrics_since(run_id, "train_loss", after)]
        new_events = self.reader.events_since(self.event_id)
        self.event_id = max([e.id for e in new_events], default=self.event_id)
        self.reader.alerts_since(0)
        self.reader.status_counts()
        self.ticks += 1


def test_writers_poller_and_external_reader_share_the_file(fault_sweep: Callable[..., Sweep],
                                                           reap_sessions: list, tmp_path: Path) -> None:
    sweep = fault_sweep(experiment={"workers": 2},  # two writers
                        train={"steps": 200, "eval_every": 50, "log_every": 10, "checkpoint_every": 100})
    proc = sweep.start()
    reap_sessions.append(proc)
    wait_for(lambda: schema_ready(sweep.db), what="the runner to register the runs")
    stop = tmp_path / "stop-reading"
    reader = external_reader(sweep.db, stop)
    poller = AppLikePoller(sweep.db)
    try:
        while proc.poll() is None:
            poller.tick()
            time.sleep(0.02)  # the app ticks a few times a second; this is ten times busier
        poller.tick()  # everything committed before the runner exited
    finally:
        stop.touch()
    stdout, stderr = proc.communicate(timeout=60)
    _, reader_errors = reader.communicate(timeout=60)

    assert proc.returncode == 0, stdout + stderr
    assert "locked" not in (stdout + stderr).lower()
    assert reader.returncode == 0 and reader_errors == "", reader_errors
    assert poller.ticks > 10
    reported = {int(run): int(step) for run, step in re.findall(r"^done .*\[run (\d+)\] step (\d+)", stdout, re.M)}
    assert sorted(reported.values()) == [200] * 4
    stored = dict(rows(sweep.db, "SELECT run_id, count(*) FROM metrics WHERE key = 'train_loss' GROUP BY run_id"))
    assert stored == reported
    assert {run_id: steps for run_id, steps in poller.train_steps.items()} == {
        run_id: list(range(1, step + 1)) for run_id, step in reported.items()}
    assert_intact(sweep.db)


# --------------------------------------------------------------------------- your own loops (the Python API)

OWN_LOOP = """
import pathlib, sys, time
import scaletui

db, width, steps, ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
with scaletui.init(db=db, experiment="own", config={"width": width}, loss="cost") as run:
    for step in range(steps):
        run.log({"train_loss": 1.0 / (step + 1), "cost": float(width + step)}, step=step)
        if step % 500 == 499:
            run.flush()  # a transaction while the other loop writes and the readers read
            while not (ticks / f"tick-{step // 500}").exists():  # ... and the poller has looked since
                time.sleep(0.005)
"""
OWN_STEPS = 3000


def test_two_own_loops_write_while_the_poller_and_sqlite3_read(tmp_path: Path) -> None:
    db = tmp_path / "own.db"
    script = tmp_path / "own_loop.py"
    script.write_text(OWN_LOOP, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    loops = [subprocess.Popen([sys.executable, str(script), str(db), str(width), str(OWN_STEPS), str(ticks)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for width in (8, 16)]
    try:
        wait_for(lambda: schema_ready(db) and len(rows(db, "SELECT id FROM runs")) == 2, what="both runs registered")
        stop = tmp_path / "stop-reading"
        reader = external_reader(db, stop)
        poller = AppLikePoller(db)
        try:
            while any(loop.poll() is None for loop in loops):
                poller.tick()
                (ticks / f"tick-{poller.ticks - 1}").touch()  # the loops go on once the poller has looked
                time.sleep(0.02)
            poller.tick()
        finally:
            stop.touch()
        outputs = [loop.communicate(timeout=60) for loop in loops]
        _, reader_errors = reader.communicate(timeout=60)
    finally:
        for loop in loops:
            if loop.poll() is None:
                loop.kill()
                loop.communicate(timeout=30)

    assert [loop.returncode for loop in loops] == [0, 0], outputs
    assert not any("locked" in (out + err).lower() for out, err in outputs), outputs
    assert reader.returncode == 0 and reader_errors == "", reader_errors
    assert poller.ticks > OWN_STEPS // 500
    counts = rows(db, "SELECT run_id, key, count(*), count(DISTINCT step), max(step) FROM metrics"
                      " GROUP BY run_id, key ORDER BY run_id, key")
    assert counts == [(run_id, key, OWN_STEPS, OWN_STEPS, OWN_STEPS - 1) for run_id in (1, 2)
                      for key in ("cost", "train_loss")]
    assert poller.train_steps == {1: list(range(OWN_STEPS)), 2: list(range(OWN_STEPS))}
    assert rows(db, "SELECT width, status, final_test_loss FROM runs ORDER BY width") == [
        (8, "done", 8.0 + OWN_STEPS - 1), (16, "done", 16.0 + OWN_STEPS - 1)]  # the loss rule: final cost
    assert_intact(db)
