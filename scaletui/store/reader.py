"""Read-only queries: what the app, `scaletui ls`/`fit` and exports see, as typed rows.

The reader opens the file with SQLite's `mode=ro` and `query_only`, never
migrates, and never takes a write lock, so any number of readers can watch a
sweep that other processes are writing (WAL: readers see the last committed
state and do not block writers).

Everything it returns is a typed row of `scaletui.core.rows` (or a record of
`scaletui.core.records`): a query and its row class name the same columns, and
`from_columns` fails loudly when they drift apart, so no `dict` row leaves the store.

The live app polls; it must never re-read what it already has. So every
incremental query takes a cursor and is a range scan on a primary key:
`(run_id, step)` for metrics and layer stats, `events.id` for events, and the
indexed `runs.rev` (bumped on every change of a run row) for runs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from scaletui.core.records import LayerStats, MetricRecord
from scaletui.core.rows import (
    AlertRow,
    EventRow,
    ExperimentRow,
    ExportColumn,
    FinalLoss,
    FitRow,
    MetricPoint,
    PredictionRow,
    RunSummary,
    from_columns,
)
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import (
    AFTER_ANY_STEP,
    BEFORE_ANY_STEP,
    ExportWhat,
    PredictionKind,
    PredictionStatus,
    RunStatus,
    Severity,
)
from scaletui.store.codec import from_real
from scaletui.store.schema import database_id, open_db
from scaletui.store.tx import retrying

T = TypeVar("T")
R = TypeVar("R")

_ALERT_COLUMNS = ("a.id, a.experiment_id, e.name AS experiment, a.run_id, a.subject, a.kind, a.severity, a.step,"
                  " a.message, a.suggestion, a.evidence_json AS evidence, a.active, a.first_seen_at, a.updated_at,"
                  " a.rev")
_FIT_COLUMNS = ("f.id, f.created_at, f.experiment_id, e.name AS experiment, f.source, f.x, f.form, f.loss_rule,"
                " f.grouping, f.n_points, f.n_sizes, f.params_json AS params, f.intervals_json AS intervals,"
                " f.objective, f.heldout_rel_error, f.heldout_rel_error_2, f.warnings_json AS warnings,"
                " f.inputs_json AS inputs, f.options_json AS options, f.law_json AS law, f.scores_json AS scores,"
                " f.heldout_json AS heldout, f.predictions_json AS predictions")
_PREDICTION_COLUMNS = ("p.id, p.experiment_id, e.name AS experiment, p.created_at, p.kind, p.source, p.run_id,"
                       " p.at_step, p.steps, p.width, p.depth,"
                       " p.x_name, p.x, p.curve, p.form, p.loss_rule, p.predicted, p.lo, p.hi, p.level, p.status,"
                       " p.truth, p.n_truth, p.error, p.inside, p.scored_at, p.note, p.law_json AS law,"
                       " p.plan_json AS plan, p.inputs_json AS inputs")
_EVENTS = "SELECT id, run_id, at, kind, message FROM events WHERE id > ?"
#: Most severe first, generated from the vocabulary.
_SEVERITY_ORDER = "CASE a.severity " + " ".join(f"WHEN '{s.value}' THEN {s.rank}" for s in Severity) + " ELSE 9 END"
_FINAL_LOSS_FIELDS = frozenset({"experiment", "experiment_id", "loss_rule", "point_key", "n_seeds", "n_diverged",
                                "mean_loss", "min_loss", "max_loss", "params", "flops_per_example"})


# Exports: what each `ExportWhat` reads. `{columns}` is filled with the quoted columns of the table
# named by the alias (from PRAGMA table_info, so a column added by a migration is exported too); the
# extras come first, with their declared types.
_EXPORT_SQL: dict[ExportWhat, tuple[str, str, tuple[tuple[str, str], ...], str]] = {
    # what: (table, SQL, extra columns (name, type), order)
    ExportWhat.RUNS: ("runs", "SELECT e.name AS experiment, s.loss_rule, s.loss_metric, s.higher_is_better, s.loss,"
                      " {columns} FROM runs t JOIN run_summary s ON s.id = t.id"
                      " LEFT JOIN experiments e ON e.id = t.experiment_id",
                      (("experiment", "TEXT"), ("loss_rule", "TEXT"), ("loss_metric", "TEXT"),
                       ("higher_is_better", "INTEGER"), ("loss", "REAL")), "t.id"),
    ExportWhat.METRICS: ("metrics", "SELECT e.name AS experiment, {columns} FROM metrics t"
                         " JOIN runs r ON r.id = t.run_id LEFT JOIN experiments e ON e.id = r.experiment_id",
                         (("experiment", "TEXT"),), "t.run_id, t.step, t.key"),
    ExportWhat.LAYER_STATS: ("layer_stats", "SELECT e.name AS experiment, {columns} FROM layer_stats t"
                             " JOIN runs r ON r.id = t.run_id LEFT JOIN experiments e ON e.id = r.experiment_id",
                             (("experiment", "TEXT"),), "t.run_id, t.step, t.layer"),
    ExportWhat.FITS: ("fits", "SELECT e.name AS experiment, {columns} FROM fits t"
                      " LEFT JOIN experiments e ON e.id = t.experiment_id", (("experiment", "TEXT"),), "t.id"),
    ExportWhat.PREDICTIONS: ("predictions", "SELECT e.name AS experiment, {columns} FROM predictions t"
                             " LEFT JOIN experiments e ON e.id = t.experiment_id", (("experiment", "TEXT"),),
                             "t.id"),
}
#: Columns where NULL means a NaN was recorded (see `scaletui.store.codec`).
_NULL_IS_NAN = {"metrics": {"value"}, "layer_stats": {"grad_norm", "weight_norm", "update_ratio"}}
EXPORT_CHUNK_ROWS = 10_000


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


def _final_loss(names: list[str], values: tuple[Any, ...]) -> FinalLoss:
    """A `final_losses` row: its fixed columns, and every hyperparameter column in one mapping."""
    row = dict(zip(names, values, strict=True))
    hyper = {k: v for k, v in row.items() if k not in _FINAL_LOSS_FIELDS}
    return FinalLoss(**{k: v for k, v in row.items() if k in _FINAL_LOSS_FIELDS}, hyperparameters=hyper)


class Reader:
    """Read-only access to a scaletui database. Thread-safe; `close()` when done.

    Raises FileNotFoundError for a missing file and the store's errors
    (NotAScaletuiDatabase, DatabaseNotReady, SchemaTooNew, SchemaTooOld) for files it cannot read.
    Floats stored as NULL (NaN, see `scaletui.store.codec`) come back as NaN in
    series and layer stats, and as None in the columns of `RunSummary` and friends.
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

    def _typed(self, sql: str, params: list[Any] | None = None, *, row: type[R]) -> list[R]:
        """Rows of `sql` as `row` instances (the query's column names must be exactly its fields)."""

        def read(conn: sqlite3.Connection) -> list[R]:
            cursor = conn.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [from_columns(row, names, values) for values in cursor.fetchall()]

        return self._run(read)

    def _tuples(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(sql, params).fetchall())

    # ----------------------------------------------------------------- identity

    def database_id(self) -> str:
        """This database's identity: a UUID made with it (its runs' checkpoints are filed under it)."""
        return self._run(lambda conn: database_id(self.db))

    # ----------------------------------------------------------------- runs

    def runs(self, experiment: str | None = None) -> list[RunSummary]:
        """`run_summary` rows, by id; optionally only one experiment's."""
        if experiment is None:
            return self._typed("SELECT * FROM run_summary ORDER BY id", row=RunSummary)
        return self._typed("SELECT * FROM run_summary WHERE experiment = ? ORDER BY id", [experiment], row=RunSummary)

    def run(self, run_id: int) -> RunSummary | None:
        """One `run_summary` row, or None."""
        rows = self._typed("SELECT * FROM run_summary WHERE id = ?", [run_id], row=RunSummary)
        return rows[0] if rows else None

    def run_spec(self, run_id: int) -> RunSpec | None:
        """The run's full resolved config."""
        rows = self._tuples("SELECT config_json FROM runs WHERE id = ?", [run_id])
        return RunSpec.from_dict(json.loads(rows[0][0])) if rows and rows[0][0] else None

    def changed_runs_since(self, after_rev: int) -> tuple[int, list[RunSummary]]:
        """Runs whose row changed after cursor `after_rev` (0 = all): (new cursor, rows).

        Pass the returned cursor next time. Every write to a run (state change,
        flush of records, heartbeat) bumps its `rev`, so polling this is enough
        to keep a live table current without re-reading unchanged rows.
        """
        rows = self._typed("SELECT * FROM run_summary WHERE rev > ? ORDER BY rev", [after_rev], row=RunSummary)
        return (max((row.rev for row in rows), default=after_rev), rows)

    def status_counts(self, experiment: str | None = None) -> dict[RunStatus, int]:
        """Number of runs per status (only statuses that occur)."""
        if experiment is None:
            rows = self._tuples("SELECT status, count(*) FROM runs GROUP BY status", [])
        else:
            rows = self._tuples(
                "SELECT r.status, count(*) FROM runs r JOIN experiments e ON e.id = r.experiment_id"
                " WHERE e.name = ? GROUP BY r.status",
                [experiment],
            )
        return {RunStatus(status): int(n) for status, n in rows}

    # ----------------------------------------------------------------- experiments

    def experiments(self) -> list[ExperimentRow]:
        """Experiments with their number of runs, by id."""
        return self._typed(
            "SELECT e.id, e.name, e.config_path, e.config_toml, e.loss_rule, e.created_at, e.updated_at,"
            " (SELECT count(*) FROM runs r WHERE r.experiment_id = e.id) AS n_runs, e.loss_metric,"
            " e.higher_is_better FROM experiments e ORDER BY e.id",
            row=ExperimentRow,
        )

    def final_losses(self, experiment: str | None = None) -> list[FinalLoss]:
        """`final_losses` rows: per sweep point, the loss over seeds (see schema)."""
        sql, params = "SELECT * FROM final_losses", []
        if experiment is not None:
            sql, params = sql + " WHERE experiment = ?", [experiment]

        def read(conn: sqlite3.Connection) -> list[FinalLoss]:
            cursor = conn.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [_final_loss(names, row) for row in cursor.fetchall()]

        return self._run(read)

    # ----------------------------------------------------------------- series

    def metrics_since(self, run_id: int, key: str, after_step: int, up_to: int | None = None) -> list[MetricPoint]:
        """Points of one metric with after_step < step (<= up_to), in step order; NaN for NULL."""
        rows = self._tuples(
            "SELECT step, value FROM metrics WHERE run_id = ? AND step > ? AND step <= ? AND key = ? ORDER BY step",
            [run_id, after_step, AFTER_ANY_STEP if up_to is None else up_to, key],
        )
        return [MetricPoint(step, from_real(value)) for step, value in rows]

    def metric_series(self, run_id: int, key: str) -> list[MetricPoint]:
        """The whole series of one metric of one run."""
        return self.metrics_since(run_id, key, BEFORE_ANY_STEP)

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

    def metric_keys_since(self, run_id: int, after_step: int) -> list[tuple[str, int]]:
        """(key, its last step) of each metric a run recorded with step > after_step: the names a
        reader learns incrementally (a range of the primary key, not a scan of the run's rows)."""
        rows = self._tuples(
            "SELECT key, MAX(step) FROM metrics WHERE run_id = ? AND step > ? GROUP BY key ORDER BY key",
            [run_id, after_step],
        )
        return [(key, int(step)) for key, step in rows]

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

    def events_since(self, after_id: int, *, run_id: int | None = None, limit: int = 10_000) -> list[EventRow]:
        """Events with id > after_id, oldest first (ids are never reused); optionally one run's."""
        if run_id is None:
            return self._typed(_EVENTS + " ORDER BY id LIMIT ?", [after_id, limit], row=EventRow)
        return self._typed(_EVENTS + " AND run_id = ? ORDER BY id LIMIT ?", [after_id, run_id, limit], row=EventRow)

    # ----------------------------------------------------------------- alerts and fits

    def alerts(self, experiment: str | None = None, *, active_only: bool = True) -> list[AlertRow]:
        """Alerts (with the experiment's name), most severe first, then by step."""
        where = ["a.active = 1"] if active_only else []
        params: list[Any] = []
        if experiment is not None:
            where.append("e.name = ?")
            params.append(experiment)
        sql = (f"SELECT {_ALERT_COLUMNS} FROM alerts a LEFT JOIN experiments e ON e.id = a.experiment_id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY {_SEVERITY_ORDER}, a.step, a.id")
        return self._typed(sql, params, row=AlertRow)

    def alerts_since(self, after_rev: int) -> tuple[int, list[AlertRow]]:
        """Alerts inserted, updated or deactivated after cursor `after_rev`: (new cursor, rows)."""
        rows = self._typed(
            f"SELECT {_ALERT_COLUMNS} FROM alerts a LEFT JOIN experiments e"
            " ON e.id = a.experiment_id WHERE a.rev > ? ORDER BY a.rev",
            [after_rev],
            row=AlertRow,
        )
        return (max((row.rev for row in rows), default=after_rev), rows)

    def fits(self, experiment: str | None = None, x: str | None = None) -> list[FitRow]:
        """Stored fits, oldest first; optionally one experiment's (by name) and one x. Each carries its
        law as a `FittedLaw` (rebuilt from the form and parameters for fits stored before schema v4)."""
        where, params = [], []
        if experiment is not None:
            where.append("e.name = ?")
            params.append(experiment)
        if x is not None:
            where.append("f.x = ?")
            params.append(x)
        sql = (
            f"SELECT {_FIT_COLUMNS} FROM fits f LEFT JOIN experiments e ON e.id = f.experiment_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY f.id"
        )
        return self._typed(sql, params, row=FitRow)

    def predictions(self, experiment: str | None = None, *, status: PredictionStatus | None = None,
                    kind: PredictionKind | None = None, run_ids: Sequence[int] | None = None,
                    after_id: int = 0) -> list[PredictionRow]:
        """The predictions ledger, oldest first; optionally one experiment's (by name), one status, one
        kind, only those of some runs (curve predictions), and only those recorded after `after_id` (ids
        only grow: the app's cursor)."""
        where: list[str] = ["p.id > ?"]
        params: list[Any] = [after_id]
        if experiment is not None:
            where.append("e.name = ?")
            params.append(experiment)
        if status is not None:
            where.append("p.status = ?")
            params.append(PredictionStatus(status).value)
        if kind is not None:
            where.append("p.kind = ?")
            params.append(PredictionKind(kind).value)
        if run_ids is not None:
            where.append(f"p.run_id IN ({', '.join('?' for _ in run_ids) or 'NULL'})")
            params.extend(run_ids)
        sql = (f"SELECT {_PREDICTION_COLUMNS} FROM predictions p JOIN experiments e ON e.id = p.experiment_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY p.id")
        return self._typed(sql, params, row=PredictionRow)

    # ----------------------------------------------------------------- runs of one's own loop

    def user_config(self, run_id: int) -> dict[str, Any] | None:
        """The config a run of one's own loop was given (`scaletui.init(config=...)`); None for sweep runs."""
        rows = self._tuples("SELECT user_config_json FROM runs WHERE id = ?", [run_id])
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    # ----------------------------------------------------------------- exports

    def has_table(self, name: str) -> bool:
        """True when the database has a table called `name` (e.g. one a later schema adds)."""
        rows = self._tuples("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name])
        return bool(rows)

    def _export_sql(self, what: ExportWhat) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
        return _EXPORT_SQL[ExportWhat(what)]

    def export_columns(self, what: ExportWhat) -> list[ExportColumn]:
        """The columns `export_rows(what)` yields, in order, with their declared types."""
        table, _, extras, _ = self._export_sql(what)
        own = self._tuples("SELECT name, type FROM pragma_table_info(?) ORDER BY cid", [table])
        nan = _NULL_IS_NAN.get(table, set())
        extra = [ExportColumn(name, sql_type) for name, sql_type in extras]
        return extra + [
            ExportColumn(str(name), str(sql_type).upper(), str(name) in nan)
            for name, sql_type in own
            if str(name) not in {c.name for c in extra}
        ]

    def export_rows(
        self, what: ExportWhat, experiment: str | None = None, chunk_rows: int = EXPORT_CHUNK_ROWS
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of one export in chunks, in the order of `export_columns(what)`, optionally of one
        experiment. One SELECT: every chunk comes from the same snapshot of the file, however long the
        caller takes (WAL readers never block the writers meanwhile)."""
        columns = self.export_columns(what)
        _, sql, extras, order = self._export_sql(what)
        if experiment is not None and "experiments e" not in sql:
            raise ValueError(f"{self.path}: the {what} table has no experiment column to filter on")
        own = ", ".join(f't."{c.name}"' for c in columns[len(extras) :])
        query = sql.format(columns=own) + (" WHERE e.name = ?" if experiment is not None else "") + f" ORDER BY {order}"
        with self._lock:
            cursor = retrying(
                lambda: self.db.conn.execute(query, [] if experiment is None else [experiment]), self.path
            )
            try:
                while chunk := cursor.fetchmany(chunk_rows):
                    yield chunk
            finally:
                cursor.close()
