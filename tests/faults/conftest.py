"""Helpers for the fault tests: real `scaletui` processes, killed and interrupted for real,
and checks that read the SQLite file afterwards with plain `sqlite3`.

Each sweep starts in a session of its own, so `kill_everything` can SIGKILL the runner
and its workers at once, the way the OOM killer or a lost machine would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, tiny_sweep, write_toml

INJECT = Path(__file__).parent / "inject"  # sitecustomize.py: the fault-injection seam


def rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Query the file the way a user would: a fresh plain sqlite3 connection."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=30)  # never creates it
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def fault_env(fault: str | None, marks: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SCALETUI_FAULT_MARKS": str(marks)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INJECT), str(REPO), env.get("PYTHONPATH")) if p)
    if fault:
        env["SCALETUI_FAULT"] = fault
    else:
        env.pop("SCALETUI_FAULT", None)
    return env


@dataclass
class Sweep:
    """A tiny sweep file in tmp_path and ways to run it as a real process."""

    path: Path
    db: Path
    checkpoints: Path
    marks: Path

    def command(self, *args: str) -> list[str]:
        """`python -m scaletui run --headless FILE --db DB ARGS` (a later --db wins)."""
        return [sys.executable, "-m", "scaletui", "run", "--headless", str(self.path), "--db", str(self.db), *args]

    def start(self, fault: str | None = None, *args: str) -> subprocess.Popen[str]:
        """The sweep's command in its own session, with `fault` injected."""
        return subprocess.Popen(self.command(*args), cwd=REPO, env=fault_env(fault, self.marks), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, fault: str | None = None, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = self.start(fault, *args)
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def parked(self) -> list[Path]:
        """Marker files of processes parked by a `hold_*` fault."""
        return sorted(self.marks.glob("*-*")) if self.marks.is_dir() else []

    def statuses(self) -> dict[int, str]:
        return dict(rows(self.db, "SELECT id, status FROM runs ORDER BY id"))

    def database_id(self) -> str:
        return str(rows(self.db, "SELECT value FROM meta WHERE key = 'database_id'")[0][0])

    def run_checkpoints(self) -> Path:
        """This database's checkpoints: one folder per run key under checkpoint_dir/<database id>."""
        return self.checkpoints / self.database_id()


@pytest.fixture
def fault_sweep(tmp_path: Path, shared_data_dir: Path) -> Callable[..., Sweep]:
    """Write a tiny sweep (per-section overrides as in tests.conftest.tiny_sweep); returns a `Sweep`."""

    def make(**sections: dict[str, Any]) -> Sweep:
        doc = tiny_sweep(tmp_path, shared_data_dir, **sections)
        path = write_toml(tmp_path / "experiments.toml", doc)
        return Sweep(path, tmp_path / "runs.db", tmp_path / "checkpoints", tmp_path / "marks")

    return make


def kill_everything(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the runner and all its workers at once (its whole session), and reap the runner."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)


# --------------------------------------------------------------------------- what must hold afterwards


def assert_intact(db: Path) -> None:
    """The file is a healthy SQLite database (WAL replayed by opening it)."""
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA foreign_key_check") == []


def assert_complete_without_duplicates(db: Path) -> None:
    """Every run is done and has exactly one train loss per step 1..steps, one eval per eval step."""
    runs = rows(db, "SELECT id, status, steps, eval_every FROM runs ORDER BY id")
    assert runs and {status for _, status, _, _ in runs} == {"done"}, runs
    for run_id, _, steps, eval_every in runs:
        train = rows(db, "SELECT step FROM metrics WHERE run_id = ? AND key = 'train_loss' ORDER BY step", run_id)
        assert [s for (s,) in train] == list(range(1, steps + 1)), f"run {run_id}: train_loss steps"
        evals = rows(db, "SELECT step FROM metrics WHERE run_id = ? AND key = 'test_loss' ORDER BY step", run_id)
        expected = sorted({0, steps, *range(eval_every, steps + 1, eval_every)})
        assert [s for (s,) in evals] == expected, f"run {run_id}: test_loss steps"


def finished_snapshot(db: Path) -> dict[int, tuple[Any, ...]]:
    """Everything about the finished runs that a later sweep must leave untouched."""
    snapshot: dict[int, tuple[Any, ...]] = {}
    for row in rows(db, "SELECT * FROM runs WHERE status IN ('done', 'early_stopped', 'diverged') ORDER BY id"):
        records = rows(db, "SELECT count(*), total(value) FROM metrics WHERE run_id = ?", row[0])
        layers = rows(db, "SELECT count(*), total(grad_norm) FROM layer_stats WHERE run_id = ?", row[0])
        snapshot[row[0]] = (row, records, layers)
    return snapshot


def events(db: Path, kind: str) -> list[tuple[int, str]]:
    return rows(db, "SELECT run_id, message FROM events WHERE kind = ? ORDER BY id", kind)
