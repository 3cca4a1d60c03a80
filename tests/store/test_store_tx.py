"""Busy handling: SQLITE_BUSY that escapes the busy timeout is retried, and ends as a one-line StoreBusy."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from scaletui.store import Store, StoreBusy
from scaletui.store.tx import write_transaction


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection takes the write lock now and releases it after `seconds`."""
    taken = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            conn.execute("COMMIT")

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(5)
    return thread


def test_busy_writes_are_retried_until_the_lock_is_free(store: Store, db_path: Path) -> None:
    store.db.execute("PRAGMA busy_timeout = 1")  # let SQLITE_BUSY escape SQLite's own waiting
    holder = hold_write_lock(db_path, 0.3)
    start = time.monotonic()
    store.add_event(None, "note", "written after the lock was released")
    assert time.monotonic() - start >= 0.2
    holder.join()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT message FROM events").fetchall() == [("written after the lock was released",)]


def test_a_lock_held_past_the_deadline_raises_store_busy(store: Store, db_path: Path) -> None:
    store.db.execute("PRAGMA busy_timeout = 1")
    holder = hold_write_lock(db_path, 0.5)
    with pytest.raises(StoreBusy) as info:
        write_transaction(store.db, lambda db: db.execute("DELETE FROM events"), db_path, deadline_s=0.1)
    holder.join()
    assert "locked" in str(info.value) and "\n" not in str(info.value)
    assert not store.db.conn.in_transaction


def test_an_error_in_the_body_rolls_back_everything(store: Store, db_path: Path) -> None:
    def body(db: object) -> None:
        store.db.execute("INSERT INTO events (at, kind) VALUES ('now', 'x')")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        write_transaction(store.db, body, db_path)
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
