"""Two workers write while an app-like poller and an external `sqlite3` reader loop read the same file.

The poller does what the live app does every tick (runs changed since a rev cursor, new train
losses since a step cursor, new events, alerts, status counts) through `scaletui.store.Reader`.
The external reader is the `sqlite3` shell when it is installed (a user's ad hoc queries, with
no busy timeout), else a separate Python process with plain `sqlite3`. Nobody may see
`database is locked`, and every count must equal what the runner reported.
"""

from __future__ import annotations

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
from tests.faults.conftest import Sweep, assert_intact, rows, wait_for

pytestmark = pytest.mark.slow

QUERIES = ["SELECT count(*) FROM metrics", "SELECT status, count(*) FROM run_summary GROUP BY status",
           "SELECT run_id, max(step) FROM metrics GROUP BY run_id"]
PYTHON_READER = """
import pathlib, sqlite3, sys
db, stop, queries = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
while not stop.exists():
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)
    for q in queries:
        conn.execute(q).fetchall()
    conn.close()
"""


def external_reader(db: Path, stop: Path) -> subprocess.Popen[str]:
    """Query the file in a loop from another program until `stop` exists; errors go to its stderr."""
    if shutil.which("sqlite3"):
        statements = "; ".join(QUERIES) + ";"
        loop = f'until [ -e "{stop}" ]; do sqlite3 -bail "file:{db}?mode=ro" "{statements}" >/dev/null || exit 1; done'
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
            self.train_steps.setdefault(run["id"], [])
        for run_id, steps in self.train_steps.items():
            after = steps[-1] if steps else -1
            steps += [step for step, _ in self.reader.metrics_since(run_id, "train_loss", after)]
        new_events = self.reader.events_since(self.event_id)
        self.event_id = max([e["id"] for e in new_events], default=self.event_id)
        self.reader.alerts_since(0)
        self.reader.status_counts()
        self.ticks += 1


def test_writers_poller_and_external_reader_share_the_file(fault_sweep: Callable[..., Sweep],
                                                           reap_sessions: list, tmp_path: Path) -> None:
    sweep = fault_sweep(train={"steps": 200, "eval_every": 50, "log_every": 10, "checkpoint_every": 100})
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
