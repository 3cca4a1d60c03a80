"""A sweep's database appears with its tables or not at all, and a file without tables means "wait".

The fault tests (test_signals.py, test_kill.py) and any user's `sqlite3` query open the file the
moment it exists. A real sweep is parked inside creating its schema (fault `hold_schema`), so the
moment a reader could meet a half-made file is reached every time, not by luck of timing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.faults.conftest import Sweep, assert_intact, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

WAITING = "waiting for the sweep to create its tables"


def signal_test_condition(sweep: Sweep) -> bool:
    """tests/faults/test_signals.py's wait, verbatim: query as soon as the file exists."""
    return sweep.db.exists() and rows(sweep.db, "SELECT count(*) FROM runs WHERE status = 'running'"
                                                " AND step >= 20")[0][0] == 2


def test_the_database_file_appears_only_with_its_tables(fault_sweep: Callable[..., Sweep],
                                                        reap_sessions: list) -> None:
    sweep = fault_sweep(model={"width": 8, "depth": 1}, train={"steps": 20})
    proc = sweep.start("hold_schema")
    reap_sessions.append(proc)
    wait_for(sweep.parked, what="the runner parked inside creating the schema")

    assert not signal_test_condition(sweep)  # before the fix: "no such table: runs"
    ls = run_cli("ls", "--db", str(sweep.db))
    assert ls.returncode == 2 and "no such database" in ls.stderr and "Traceback" not in ls.stderr

    (sweep.marks / "release").write_text("")
    wait_for(sweep.db.exists, what="the database to appear")
    assert rows(sweep.db, "SELECT count(*) FROM runs") in ([(0,)], [(1,)])  # the tables came with the file
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout + stderr
    assert_intact(sweep.db)


def sqlite_file_without_tables(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL").fetchone()


@pytest.mark.parametrize("make", [Path.touch, sqlite_file_without_tables], ids=["0-byte", "no-tables"])
def test_ls_on_a_file_without_tables_says_to_wait(tmp_path: Path, make: Callable[[Path], None]) -> None:
    path = tmp_path / "new.db"
    make(path)
    out = run_cli("ls", "--db", str(path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"error: {path}: {WAITING}"]
    assert "Traceback" not in out.stderr and out.stdout == ""
