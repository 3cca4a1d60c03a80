"""The `stop_requests` table: the app's `k` on a run whose worker it cannot signal.

The app stops a run of a worker on its own machine with a request file and SIGUSR1
(services/stop_requests.py). A run on another machine, in a Ray sweep, has no process the app can
signal, but its records reach the database through the executor's writer, on the driver's
machine: so the request is a row here, which the writer reads and passes on to the run's worker in
its answer to the worker's next batch or stop question. The row stays until the run ends (or a
later sweep starts the run again), so a worker that dies before it could act is told again after
its retry. Constant SQL only; values are parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlite_utils import Database

from scaletui.store.codec import now_iso
from scaletui.store.schema import open_db
from scaletui.store.tx import retrying, write_transaction


def add_stop_request(db: Database, run_id: int) -> None:
    """Ask run `run_id` to stop (a second request for the same run is the same request)."""
    db.execute("INSERT OR IGNORE INTO stop_requests (run_id, requested_at) VALUES (?, ?)", [run_id, now_iso()])


def pending_stop_requests(db: Database) -> set[int]:
    """The runs asked to stop that have not ended since."""
    return {int(row[0]) for row in db.execute("SELECT run_id FROM stop_requests").fetchall()}


def drop_stop_requests(db: Database, run_ids: Iterable[int]) -> None:
    """Forget the requests of runs that ended (or start again): they are answered, or moot."""
    db.conn.executemany("DELETE FROM stop_requests WHERE run_id = ?", [(run_id,) for run_id in run_ids])


class StopRequests:
    """The table through one connection of its own: the app's side (`request`) and the writer's
    (`pending`, `drop`), each a transaction of its own (retried while the database is busy)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_db(self.path, create=False)

    def request(self, run_id: int) -> None:
        write_transaction(self.db, lambda db: add_stop_request(db, run_id), self.path)

    def pending(self) -> set[int]:
        return retrying(lambda: pending_stop_requests(self.db), self.path)

    def drop(self, run_ids: Iterable[int]) -> None:
        ids = list(run_ids)
        if ids:
            write_transaction(self.db, lambda db: drop_stop_requests(db, ids), self.path)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StopRequests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
