"""Busy handling: SQLITE_BUSY that escapes the busy timeout is retried, and ends as a one-line StoreBusy."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from scaletui.store import Store, StoreBusy, tx
from scaletui.store.tx import write_transaction


class WriteLockHolder:
    """Another connection that takes the write lock at once and keeps it until `release()`: the tests
    decide when it is freed by events, never by how long a thread happens to sleep."""

    def __init__(self, path: Path) -> None:
        self._taken, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(path,))
        self._thread.start()
        assert self._taken.wait(60), "the holder never took the lock"

    def _hold(self, path: Path) -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._taken.set()
            self._release.wait(60)
            conn.execute("COMMIT")

    def release(self) -> None:
        self._release.set()

    def join(self) -> None:
        self.release()
        self._thread.join(60)
        assert not self._thread.is_alive()


def test_busy_writes_are_retried_until_the_lock_is_free(store: Store, db_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store.db.execute("PRAGMA busy_timeout = 1")  # let SQLITE_BUSY escape SQLite's own waiting
    holder = WriteLockHolder(db_path)
    backoffs: list[float] = []
    real_sleep = time.sleep

    def backoff(seconds: float) -> None:  # the retry loop's wait: the lock is freed during the first one
        backoffs.append(seconds)
        holder.release()
        real_sleep(seconds)

    monkeypatch.setattr(tx.time, "sleep", backoff)
    store.add_event(None, "note", "written after the lock was released")
    monkeypatch.undo()
    holder.join()
    assert backoffs, "the write never met the lock"
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT message FROM events").fetchall() == [("written after the lock was released",)]


def test_a_lock_held_past_the_deadline_raises_store_busy(store: Store, db_path: Path) -> None:
    store.db.execute("PRAGMA busy_timeout = 1")
    holder = WriteLockHolder(db_path)  # held until the write has given up
    try:
        with pytest.raises(StoreBusy) as info:
            write_transaction(store.db, lambda db: db.execute("DELETE FROM events"), db_path, deadline_s=0.1)
    finally:
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
