"""Read-only queries: what the app, `scaletui ls`/`fit` and exports see.

The reader opens the file with SQLite's `mode=ro` and `query_only`, never
migrates, and never takes a write lock, so any number of readers can watch a
sweep that other processes are writing (WAL: readers see the last committed
state and do not block writers).

The live app polls; it must never re-read what it already has. So every
incremental query takes a cursor and is a range scan on a primary key:
`(run_id, step)` for metrics and layer stats, `events.id` for events, and the
indexed `runs.rev` (bumped on every change of a run row) for runs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from scaletui.records import LayerStats, MetricRecord
from scaletui.store.codec import from_real
from scaletui.store.schema import database_id, open_db
from scaletui.store.tx import retrying

T = TypeVar("T")
_BEFORE_ANY_STEP = -(2**63)


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _layer_stats(row: tuple[Any, ...]) -> LayerStats:
    step, layer, name, grad_norm, weight_norm, update_ratio, nonfinite = row
    return LayerStats(
        step=step,
        layer=layer,
        name=name,
        grad_norm=from_real(grad_norm),
        weight_norm=from_real(weight_norm),
        update_ratio=from_real(update_ratio),
        nonfinite=int(nonfinite or 0),
    )


class Reader:
    """Read-only access to a scaletui database. Thread-safe; `close()` when done.

    Raises FileNotFoundError for a missing file and the store's errors
    (NotAScaletuiDatabase, SchemaTooNew, SchemaTooOld) for files it cannot read.
    Floats stored as NULL (NaN, see `scaletui.store.codec`) come back as NaN in
    series and layer stats; `runs()` and friends return raw rows (None).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db: Database = open_db(self.path, create=False, readonly=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run one read under the lock, retried if SQLite reports busy (e.g. WAL recovery)."""
        with self._lock:
            return retrying(lambda: fn(self.db.conn), self.path)

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self._run(lambda conn: _dicts(conn.execute(sql, params or [])))

    def _tuples(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(sql, params).fetchall())

    # ----------------------------------------------------------------- identity

    def database_id(self) -> str:
        """This database's identity: a UUID made with it (its runs' checkpoints are filed under it)."""
        return self._run(lambda conn: database_id(self.db))

    # ----------------------------------------------------------------- runs

    def runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """`run_summary` rows, by id; optionally only one experiment's."""
        if experiment is None:
            return self._rows("SELECT * FROM run_summary ORDER BY id")
        return self._rows("SELECT * FROM run_summary WHERE experiment = ? ORDER BY id", [experiment])

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One `run_summary` row, or None."""
        rows = self._rows("SELECT * FROM run_summary WHERE id = ?", [run_id])
        return rows[0] if rows else None

    def run_config(self, run_id: int) -> str | None:
        """The run's full resolved config (RunSpec.to_dict() as JSON)."""
        rows = self._tuples("SELECT config_json FROM runs WHERE id = ?", [run_id])
        return rows[0][0] if rows else None

    def changed_runs_since(self, after_rev: int) -> tuple[int, list[dict[str, Any]]]:
        """Runs whose row changed after cursor `after_rev` (0 = all): (new cursor, run_summary rows).

        Pass the returned cursor next time. Every write to a run (state change,
        flush of records, heartbeat) bumps its `rev`, so polling this is enough
        to keep a live table current without re-reading unchanged rows.
        """
        rows = self._rows("SELECT * FROM run_summary WHERE rev > ? ORDER BY rev", [after_rev])
        return (max((row["rev"] for row in rows), default=after_rev), rows)

    def status_counts(self, experiment: str | None = None) -> dict[str, int]:
        """Number of runs per status (only statuses that occur)."""
        if experiment is None:
            rows = self._tuples("SELECT status, count(*) FROM runs GROUP BY status", [])
        else:
            rows = self._tuples(
                "SELECT r.status, count(*) FROM runs r JOIN experiments e ON e.id = r.experiment_id"
                " WHERE e.name = ? GROUP BY r.status",
                [experiment],
            )
        return {status: int(n) for status, n in rows}

    # ----------------------------------------------------------------- experiments

    def experiments(self) -> list[dict[str, Any]]:
        """Experiment rows with their number of runs, by id."""
        return self._rows(
            "SELECT e.*, (SELECT count(*) FROM runs r WHERE r.experiment_id = e.id) AS n_runs"
            " FROM experiments e ORDER BY e.id"
        )

    def final_losses(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """`final_losses` rows: per sweep point, the loss over seeds (see schema)."""
        if experiment is None:
            return self._rows("SELECT * FROM final_losses")
        return self._rows("SELECT * FROM final_losses WHERE experiment = ?", [experiment])

    # ----------------------------------------------------------------- series

    def metrics_since(self, run_id: int, key: str, after_step: int) -> list[tuple[int, float]]:
        """(step, value) of one metric with step > after_step, in step order; NaN for NULL."""
        rows = self._tuples(
            "SELECT step, value FROM metrics WHERE run_id = ? AND step > ? AND key = ? ORDER BY step",
            [run_id, after_step, key],
        )
        return [(step, from_real(value)) for step, value in rows]

    def metric_series(self, run_id: int, key: str) -> list[tuple[int, float]]:
        """The whole series of one metric of one run."""
        return self.metrics_since(run_id, key, _BEFORE_ANY_STEP)

    def records_since(self, run_id: int, after_step: int) -> list[MetricRecord]:
        """Every metric of a run with step > after_step, in (step, key) order."""
        rows = self._tuples(
            "SELECT step, key, value FROM metrics WHERE run_id = ? AND step > ? ORDER BY step, key",
            [run_id, after_step],
        )
        return [MetricRecord(step, key, from_real(value)) for step, key, value in rows]

    def metric_keys(self, run_id: int) -> list[str]:
        """The metric names recorded for a run."""
        rows = self._tuples("SELECT DISTINCT key FROM metrics WHERE run_id = ? ORDER BY key", [run_id])
        return [row[0] for row in rows]

    def layer_stats_since(self, run_id: int, after_step: int) -> list[LayerStats]:
        """Per-layer statistics with step > after_step, in (step, layer) order."""
        rows = self._tuples(
            "SELECT step, layer, name, grad_norm, weight_norm, update_ratio, nonfinite FROM layer_stats"
            " WHERE run_id = ? AND step > ? ORDER BY step, layer",
            [run_id, after_step],
        )
        return [_layer_stats(row) for row in rows]

    def latest_layer_stats(self, run_id: int) -> list[LayerStats]:
        """The layer stats at the run's latest layer-stats step."""
        rows = self._tuples(
            "SELECT step, layer, name, grad_norm, weight_norm, update_ratio, nonfinite"
            " FROM latest_layer_stats WHERE run_id = ? ORDER BY layer",
            [run_id],
        )
        return [_layer_stats(row) for row in rows]

    # ----------------------------------------------------------------- events

    def events_since(self, after_id: int, *, run_id: int | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Events with id > after_id, oldest first (ids are never reused); optionally one run's."""
        if run_id is None:
            return self._rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [after_id, limit])
        return self._rows(
            "SELECT * FROM events WHERE id > ? AND run_id = ? ORDER BY id LIMIT ?", [after_id, run_id, limit]
        )

    # ----------------------------------------------------------------- alerts and fits

    def alerts(self, experiment: str | None = None, *, active_only: bool = True) -> list[dict[str, Any]]:
        """`alerts` rows (with the experiment's name), most severe first, then by step."""
        where = ["a.active = 1"] if active_only else []
        params: list[Any] = []
        if experiment is not None:
            where.append("e.name = ?")
            params.append(experiment)
        sql = ("SELECT a.*, e.name AS experiment FROM alerts a LEFT JOIN experiments e ON e.id = a.experiment_id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, a.step, a.id")
        return self._rows(sql, params)

    def alerts_since(self, after_rev: int) -> tuple[int, list[dict[str, Any]]]:
        """Alerts inserted, updated or deactivated after cursor `after_rev`: (new cursor, rows)."""
        rows = self._rows("SELECT * FROM alerts WHERE rev > ? ORDER BY rev", [after_rev])
        return (max((row["rev"] for row in rows), default=after_rev), rows)

    def fits(self, experiment: str | None = None, x: str | None = None) -> list[dict[str, Any]]:
        """Stored fits, oldest first; optionally one experiment's (by name) and one x."""
        where, params = [], []
        if experiment is not None:
            where.append("e.name = ?")
            params.append(experiment)
        if x is not None:
            where.append("f.x = ?")
            params.append(x)
        sql = ("SELECT f.*, e.name AS experiment FROM fits f LEFT JOIN experiments e ON e.id = f.experiment_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.id")
        return self._rows(sql, params)
