"""Transactions that never let `database is locked` reach the user.

Several worker processes, the runner and the app share one SQLite file. The
connection's `busy_timeout` makes SQLite itself wait for a lock, which covers
almost every case; what it does not cover (a lock upgrade that SQLite refuses
to wait for, recovery after a crash, a writer holding the lock longer than the
timeout) comes back as SQLITE_BUSY/SQLITE_LOCKED. We retry those here, with
jittered exponential backoff, and only after a long deadline turn them into a
one-line `StoreBusy`.

Write transactions start with `BEGIN IMMEDIATE`: taking the write lock up
front means a transaction never holds a read snapshot and then asks to
upgrade it, the classic way two writers deadlock (and get SQLITE_BUSY at once,
without the busy handler). The whole body is re-run on retry, so bodies must
only touch the database and local state computed inside them.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from scaletui.store.errors import StoreBusy, StoreWriteFailed

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000  # how long SQLite itself waits for a lock, per statement
RETRY_DEADLINE_S = 300.0  # how long we keep retrying on top of that before giving up
_FIRST_DELAY_S = 0.005
_MAX_DELAY_S = 0.5
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# The file cannot take a write: read-only, I/O error (also what a file-size limit gives), disk full,
# a -wal/-shm file that cannot be created.
_CANNOT_WRITE = {8: "read-only", 10: "I/O error", 13: "disk full", 14: "cannot open"}


def is_busy(exc: BaseException) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (including extended codes)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "database is locked" in message or "database table is locked" in message or "busy" in message


def cannot_write(exc: BaseException) -> bool:
    """True for the errors that mean the storage itself refuses writes (not a bug, not a busy lock)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CANNOT_WRITE
    message = str(exc).lower()
    return any(s in message for s in ("readonly", "disk i/o", "disk is full", "unable to open"))


def retrying(fn: Callable[[], T], path: str | Path, *, deadline_s: float = RETRY_DEADLINE_S) -> T:
    """Call `fn`, retrying with backoff while SQLite reports busy; `StoreBusy` past the deadline."""
    start = time.monotonic()
    delay = _FIRST_DELAY_S
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - start
            if not is_busy(exc):
                raise
            if waited >= deadline_s:
                raise StoreBusy(path, waited) from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, _MAX_DELAY_S)


def write_transaction(
    db: Database, body: Callable[[Database], T], path: str | Path, *, deadline_s: float = RETRY_DEADLINE_S
) -> T:
    """Run `body(db)` inside `BEGIN IMMEDIATE ... COMMIT`, retried as a whole while busy.

    Any exception from the body rolls the transaction back and propagates; a
    `kill -9` in the middle leaves nothing of it in the file (WAL recovery).
    """

    def attempt() -> T:
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    try:
        return retrying(attempt, path, deadline_s=deadline_s)
    except sqlite3.OperationalError as exc:
        if cannot_write(exc):
            raise StoreWriteFailed(path, str(exc)) from exc
        raise
