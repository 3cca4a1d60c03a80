"""The database schema, its migrations, and the one way to open a scaletui database.

Why it looks like this:

* One file, many processes. `open_db` turns on WAL (readers never block the
  writer and vice versa, and a `kill -9` at any moment leaves a consistent
  file), `synchronous=NORMAL` (safe in WAL: a crash can only lose the last
  commits, never corrupt), and a 30 s `busy_timeout` so concurrent writers
  queue instead of failing.
* Versioned, forward-only migrations. `MIGRATIONS[i]` takes a database from
  version `i` to `i + 1`; the version lives in `PRAGMA user_version` and the
  file is marked as ours with `PRAGMA application_id`, both set in the same
  transaction as the migration, so a crash leaves either the old or the new
  schema. Views are derived data: after any migration they are dropped and
  recreated from `VIEWS`, the current definitions.
* Nobody sees a file without its schema. A new database is built under a
  temporary name beside its path (tables, views, WAL mode, application id,
  version, database id), closed so that everything is in the main file, and
  published with `os.link`, which fails instead of clobbering a file another
  process published meanwhile (then that one is used). A reader that still
  meets a file without tables (made empty by hand, or on a filesystem without
  hard links, where the file is created in place) gets `DatabaseNotReady`: wait.
* Every database has an identity: a random UUID in the `meta` table, made with
  the database (or by the migration that added `meta`). Things outside the
  file that belong to it, the runs' checkpoints, are filed under it.
* Never damage someone else's file. Before anything is written, the file is
  identified by SQLite itself (read-only queries): not SQLite, or SQLite with
  tables but without our application id, raises `NotAScaletuiDatabase` and the
  file is left byte-for-byte as it was. `create=False` opens with SQLite's
  `mode=rw`, which cannot create a file.
* Never open the database file with plain file I/O in a process that may hold
  a connection to it: closing *any* descriptor of a file drops every POSIX
  lock the process holds on it, so another process could then checkpoint and
  delete the WAL under our connections (SQLite's "how to corrupt", 2.2). This
  is why the file is not sniffed for SQLite's magic header here.
* One value per row, documented columns, named views: the same queries work in
  the `sqlite3` shell, `sqlite-utils query`, pandas and Datasette. NaN is
  stored as NULL and +/-Inf as REAL infinities (see `scaletui.store.codec`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from scaletui.core.files import fsync_dir
from scaletui.core.vocabulary import DEFAULT_LOSS_METRIC, FINISHED, OK, LossRule, RunStatus, sql_list
from scaletui.store.errors import (
    DatabaseNotReady,
    NotAScaletuiDatabase,
    SchemaTooNew,
    SchemaTooOld,
    StoreError,
)
from scaletui.store.tx import BUSY_TIMEOUT_MS, retrying, write_transaction

log = logging.getLogger(__name__)

APPLICATION_ID = 0x53545549  # "STUI": marks the file as a scaletui database
DATABASE_ID_KEY = "database_id"  # meta row: this database's identity, a random UUID
_SQLITE_NOTADB = 26

#: The `runs` columns that hold the resolved config of a run (the rest is in `config_json`).
HYPERPARAMETERS: tuple[str, ...] = (
    "dataset", "train_size", "label_noise", "normalize",
    "arch", "width", "depth", "dropout", "init", "norm",
    "optimizer", "lr", "lr_scaling", "lr_ref_params", "momentum", "schedule", "warmup_steps",
    "weight_decay", "batch_size", "steps", "grad_clip", "patience", "es_metric", "eval_every",
    "seed", "device",
)  # fmt: skip


# --------------------------------------------------------------------------- migrations
# Frozen once released: a later change is a new migration, never an edit here.

_V1_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE experiments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        config_path TEXT,
        config_toml TEXT,
        loss_rule TEXT NOT NULL,          -- final | best | smoothed: "the loss of a run"
        created_at TEXT,
        updated_at TEXT
    )""",
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,         -- RunSpec.key: stable hash of the resolved config
        experiment_id INTEGER REFERENCES experiments(id),
        label TEXT,
        status TEXT NOT NULL,             -- queued running done early_stopped diverged failed interrupted stale
        point_key TEXT,                   -- hash of the config without seed/device: seeds of one sweep point
        dataset TEXT, train_size INTEGER, label_noise REAL, normalize TEXT,
        arch TEXT, width INTEGER, depth INTEGER, dropout REAL, init TEXT, norm TEXT,
        optimizer TEXT, lr REAL, lr_scaling TEXT, lr_ref_params INTEGER, momentum REAL,
        schedule TEXT, warmup_steps INTEGER, weight_decay REAL, batch_size INTEGER, steps INTEGER,
        grad_clip REAL, patience INTEGER, es_metric TEXT, eval_every INTEGER,
        seed INTEGER, device TEXT,
        config_json TEXT,                 -- RunSpec.to_dict() as JSON
        params INTEGER,
        flops_per_example INTEGER,
        lr_effective REAL,                -- lr after lr_scaling
        step INTEGER,                     -- latest step recorded
        created_at TEXT, started_at TEXT, finished_at TEXT,
        heartbeat_at TEXT,                -- last flush by the worker (ISO UTC)
        host TEXT, pid INTEGER,
        final_train_loss REAL, final_test_loss REAL, final_test_acc REAL,
        best_test_loss REAL, best_step INTEGER, smoothed_test_loss REAL,
        error TEXT,
        rev INTEGER NOT NULL DEFAULT 0    -- bumped on every change; readers poll `rev > cursor`
    )""",
    "CREATE INDEX runs_status ON runs(status)",
    "CREATE INDEX runs_shape ON runs(experiment_id, width, depth)",
    "CREATE INDEX runs_rev ON runs(rev)",
    """CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        key TEXT NOT NULL,                -- train_loss, test_loss, test_acc, lr, ...
        value REAL,                       -- NULL means NaN; +/-Inf stored as REAL infinities
        PRIMARY KEY (run_id, step, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE layer_stats (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step INTEGER NOT NULL,
        layer INTEGER NOT NULL,           -- index in depth order, 0 = input side
        name TEXT,
        grad_norm REAL,                   -- floats: NULL means NaN, as in metrics
        weight_norm REAL,
        update_ratio REAL,                -- ||delta W|| / ||W||
        nonfinite INTEGER,                -- count of NaN/Inf gradient values
        PRIMARY KEY (run_id, step, layer)
    ) WITHOUT ROWID""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a safe cursor for events_since
        run_id INTEGER REFERENCES runs(id),
        at TEXT NOT NULL,
        kind TEXT NOT NULL,               -- queued started model resumed done early_stopped diverged ...
        message TEXT
    )""",
    "CREATE INDEX events_run ON events(run_id)",
)


def _v1_initial(db: Database) -> None:
    """Tables and indexes of the first release."""
    for statement in _V1_STATEMENTS:
        db.execute(statement)


_V2_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        experiment_id INTEGER REFERENCES experiments(id),
        run_id INTEGER REFERENCES runs(id),  -- NULL for alerts about a group of runs
        subject TEXT NOT NULL,            -- what it is about: "run:12" or "width=64" (a group)
        kind TEXT NOT NULL,               -- divergence plateau vanishing_gradients ... non_monotonic
        severity TEXT NOT NULL,           -- info | warning | critical
        step INTEGER,                     -- where the evidence first appeared
        message TEXT NOT NULL,
        suggestion TEXT,
        evidence_json TEXT,               -- the numbers behind it, as a JSON object
        active INTEGER NOT NULL DEFAULT 1,  -- 0 once later evidence no longer supports it
        first_seen_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        rev INTEGER NOT NULL DEFAULT 0,   -- bumped on every change; readers poll `rev > cursor`
        UNIQUE (experiment_id, subject, kind)
    )""",
    "CREATE INDEX alerts_run ON alerts(run_id)",
    "CREATE INDEX alerts_rev ON alerts(rev)",
    """CREATE TABLE fits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        experiment_id INTEGER REFERENCES experiments(id),  -- NULL when fitted from a CSV file
        source TEXT NOT NULL,             -- experiment name or CSV path
        x TEXT NOT NULL,                  -- params | width | depth | flops | examples | steps | N,D
        form TEXT NOT NULL,               -- e.g. "E + A*x^-alpha"
        loss_rule TEXT,                   -- final | best | smoothed (NULL for CSV fits)
        grouping TEXT,                    -- e.g. "depth=4" when one curve per group was fitted
        n_points INTEGER NOT NULL,
        n_sizes INTEGER,                  -- distinct x values
        E REAL, A REAL, alpha REAL, B REAL, beta REAL,
        objective REAL,                   -- Huber objective at the optimum
        heldout_rel_error REAL,           -- largest x left out, fitted on the rest, predicted
        heldout_rel_error_2 REAL,         -- the same with the largest two left out
        params_json TEXT,                 -- every fitted parameter, as JSON
        intervals_json TEXT,              -- bootstrap intervals {"alpha": [lo, hi], ...}
        warnings_json TEXT,               -- JSON list of warnings
        inputs_json TEXT,                 -- the points fitted: {"x": [...], "loss": [...], "run_ids": [...]}
        options_json TEXT                 -- delta, bootstrap count, ...: enough to refit the same way
    )""",
    "CREATE INDEX fits_experiment ON fits(experiment_id, x)",
)


def _v2_alerts_fits(db: Database) -> None:
    """Diagnostics' alerts and the history of fitted laws."""
    for statement in _V2_STATEMENTS:
        db.execute(statement)


_V3_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,             -- database_id: a random UUID, this database's identity
        value TEXT NOT NULL
    )""",
)


def _v3_database_id(db: Database) -> None:
    """A `meta` table holding the database's identity: checkpoints are filed under it, so two
    databases of one sweep never resume from (or delete) each other's."""
    for statement in _V3_STATEMENTS:
        db.execute(statement)
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [DATABASE_ID_KEY, str(uuid.uuid4())])


_V4_STATEMENTS: tuple[str, ...] = (
    # Rows from before v4 have NULL here; their law is their `form` text and params_json (the reader
    # rebuilds it), their held-out points are in options_json ($.heldout).
    "ALTER TABLE fits ADD COLUMN form_name TEXT",         # M1 | M2 | M3 | M4 | BNSL1 | BNSL2 | CHINCHILLA
    "ALTER TABLE fits ADD COLUMN law_json TEXT",          # the fitted law: form, params, x range, loss, ...
    "ALTER TABLE fits ADD COLUMN scores_json TEXT",       # every candidate form's held-out error {"M2": {...}}
    "ALTER TABLE fits ADD COLUMN heldout_json TEXT",      # each held-out point, largest 1 and 2 sizes left out
    "ALTER TABLE fits ADD COLUMN predictions_json TEXT",  # --predict: [{"x": .., "value": .., "lo": .., "hi": ..}]
    "CREATE INDEX fits_form ON fits(form_name)",
)


def _v4_fit_forms(db: Database) -> None:
    """Fits choose their functional form: the chosen form, the law as one record, every form's
    held-out error, the held-out points and predictions get columns of their own."""
    for statement in _V4_STATEMENTS:
        db.execute(statement)


_V5_STATEMENTS: tuple[str, ...] = (
    # "The loss" of an experiment is a metric of its own choosing (a control task's `cost`), lower or
    # higher better; final/best/smoothed of that metric land in final_test_loss/best_test_loss/
    # smoothed_test_loss, where the run_summary view and the fits read "the loss" of every run.
    "ALTER TABLE experiments ADD COLUMN loss_metric TEXT NOT NULL DEFAULT 'test_loss'",
    "ALTER TABLE experiments ADD COLUMN higher_is_better INTEGER NOT NULL DEFAULT 0",
    # Runs of a researcher's own loop (the Python API) have no RunSpec: config_json stays NULL and the
    # config the code was given is kept here. source: sweep | api (core.vocabulary.RunSource).
    "ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT 'sweep'",
    "ALTER TABLE runs ADD COLUMN user_config_json TEXT",
)


def _v5_own_runs(db: Database) -> None:
    """Runs of your own training loop: where a run came from, the config it was given, and which metric
    is the experiment's loss (and which way is better)."""
    for statement in _V5_STATEMENTS:
        db.execute(statement)


_V6_STATEMENTS: tuple[str, ...] = (
    # The predictions ledger: a law's prediction at a size not trained yet, recorded before its runs
    # exist and scored when they have all finished (`scaletui predict`, the fit pane, `scaletui suggest`);
    # and a running run's final loss predicted at each evaluation (the monitor), scored when it ends.
    """CREATE TABLE predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        created_at TEXT NOT NULL,
        kind TEXT NOT NULL,               -- size: a size not trained yet | curve: a running run's final loss
        source TEXT NOT NULL,             -- predict | app | suggest | monitor (core.vocabulary.PredictionSource)
        run_id INTEGER REFERENCES runs(id),  -- kind curve: the run whose final loss is predicted
        at_step INTEGER,                  -- kind curve: the evaluation step it was predicted from
        steps INTEGER,                    -- kind curve: the run's planned last step
        width INTEGER, depth INTEGER,     -- the size predicted (NULL for a law over another axis)
        x_name TEXT NOT NULL,             -- the law's axis: params | width | ...
        x REAL NOT NULL,                  -- the size on that axis (params of width x depth)
        curve TEXT,                       -- which law: "depth=6", or NULL for the law over every run
        form TEXT NOT NULL,               -- M1 .. BNSL2 chosen by held-out error; `ratio` for kind curve
        loss_rule TEXT NOT NULL,          -- final | best | smoothed, of the experiment's loss metric
        predicted REAL NOT NULL,          -- the law's loss at x
        lo REAL, hi REAL, level REAL,     -- the prediction band and its nominal coverage (0.9)
        status TEXT NOT NULL,             -- open | scored | unscorable (core.vocabulary.PredictionStatus)
        truth REAL,                       -- mean loss of the finished runs of that size and plan
        n_truth INTEGER,                  -- how many runs that mean is over
        error REAL,                       -- (predicted - truth) / truth
        inside INTEGER,                   -- 1 when lo <= truth <= hi
        scored_at TEXT,
        note TEXT,                        -- why a prediction is unscorable, or what scoring left out
        law_json TEXT,                    -- kind size: the FittedLaw, as in fits.law_json
        plan_json TEXT NOT NULL,          -- {"hashes": [...], "plans": {hash: config minus size and seed}}
        inputs_json TEXT NOT NULL         -- what it was learned from: run ids, sizes, options, coefficients
    )""",
    "CREATE INDEX predictions_open ON predictions(experiment_id, status)",
    # One curve prediction per run and evaluation step: a resumed run does not predict the same step twice.
    "CREATE UNIQUE INDEX predictions_curve ON predictions(run_id, at_step) WHERE kind = 'curve'",
)


def _v6_predictions(db: Database) -> None:
    """The predictions ledger: next-size predictions recorded before training and scored after."""
    for statement in _V6_STATEMENTS:
        db.execute(statement)


_V7_STATEMENTS: tuple[str, ...] = (
    # The app's `k` on a run it cannot signal (one on another machine, of a Ray sweep): the request
    # waits here until the Ray executor's writer, which owns the database on the driver's machine,
    # passes it on to the run's worker with its next answer (store/stop_requests.py). One per run.
    """CREATE TABLE stop_requests (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id),
        requested_at TEXT NOT NULL        -- when the app asked
    )""",
)


def _v7_stop_requests(db: Database) -> None:
    """Requests to stop one run, left in the database for a sweep whose workers are on other machines."""
    for statement in _V7_STATEMENTS:
        db.execute(statement)


MIGRATIONS: list[Callable[[Database], None]] = [_v1_initial, _v2_alerts_fits, _v3_database_id, _v4_fit_forms,
                                                _v5_own_runs, _v6_predictions, _v7_stop_requests]
SCHEMA_VERSION = len(MIGRATIONS)

# --------------------------------------------------------------------------- views
# Current definitions, recreated after every migration. Constant SQL only.

#: "The loss of a run" under its experiment's rule (one WHEN per LossRule).
_LOSS_CASE = ("CASE e.loss_rule "
              + " ".join(f"WHEN '{rule.value}' THEN r.{rule.column}" for rule in LossRule) + " END")
_OK = sql_list(OK)  # 'done', 'early_stopped': their losses are averaged
_FINISHED = sql_list(FINISHED)  # ... and diverged ones counted

_RUN_SUMMARY = f"""SELECT
        r.id, r.key, e.name AS experiment, r.experiment_id, r.label, r.status,
        r.arch, r.width, r.depth, r.seed, r.dataset, r.train_size, r.optimizer,
        r.lr, r.lr_effective, r.params, r.flops_per_example, r.step, r.steps,
        r.final_train_loss, r.final_test_loss, r.best_test_loss, r.best_step,
        r.smoothed_test_loss, r.final_test_acc,
        {_LOSS_CASE} AS loss,
        e.loss_rule,
        r.created_at, r.started_at, r.finished_at, r.heartbeat_at, r.host, r.pid,
        r.error, r.rev,
        r.source, COALESCE(e.loss_metric, '{DEFAULT_LOSS_METRIC}') AS loss_metric,
        COALESCE(e.higher_is_better, 0) AS higher_is_better
    FROM runs r LEFT JOIN experiments e ON e.id = r.experiment_id"""

_POINT_COLUMNS = ", ".join(f"r.{name}" for name in HYPERPARAMETERS if name not in ("seed", "device"))

# Aggregates are over successful runs (done, early_stopped); diverged seeds are
# counted in n_diverged rather than averaged in as infinite or NaN losses.
_FINAL_LOSSES = f"""SELECT
        e.name AS experiment, r.experiment_id, e.loss_rule, r.point_key,
        {_POINT_COLUMNS},
        COUNT(CASE WHEN r.status IN ({_OK}) THEN {_LOSS_CASE} END) AS n_seeds,
        SUM(r.status = '{RunStatus.DIVERGED.value}') AS n_diverged,
        AVG(CASE WHEN r.status IN ({_OK}) THEN {_LOSS_CASE} END) AS mean_loss,
        MIN(CASE WHEN r.status IN ({_OK}) THEN {_LOSS_CASE} END) AS min_loss,
        MAX(CASE WHEN r.status IN ({_OK}) THEN {_LOSS_CASE} END) AS max_loss,
        AVG(r.params) AS params,
        AVG(r.flops_per_example) AS flops_per_example
    FROM runs r JOIN experiments e ON e.id = r.experiment_id
    WHERE r.status IN ({_FINISHED})
    GROUP BY r.experiment_id, r.point_key, {_POINT_COLUMNS}
    ORDER BY e.name, r.arch, r.width, r.depth"""

_LATEST_LAYER_STATS = """SELECT
        ls.run_id, r.key, r.label, ls.step, ls.layer, ls.name,
        ls.grad_norm, ls.weight_norm, ls.update_ratio, ls.nonfinite
    FROM runs r JOIN layer_stats ls
        ON ls.run_id = r.id
        AND ls.step = (SELECT MAX(step) FROM layer_stats WHERE run_id = r.id)"""

VIEWS: dict[str, str] = {
    "run_summary": _RUN_SUMMARY,
    "final_losses": _FINAL_LOSSES,
    "latest_layer_stats": _LATEST_LAYER_STATS,
}


def _create_views(db: Database) -> None:
    """Drop and recreate every view from its current definition."""
    for name, sql in VIEWS.items():
        db.execute(f'DROP VIEW IF EXISTS "{name}"')
        db.create_view(name, sql)


# --------------------------------------------------------------------------- opening


@dataclass(frozen=True)
class _FileState:
    """What the header of an open database says about it (read without writing)."""

    application_id: int
    user_version: int
    n_objects: int  # rows in sqlite_master: tables, indexes, views, triggers

    @property
    def is_empty(self) -> bool:
        return self.application_id == 0 and self.user_version == 0 and self.n_objects == 0

    @property
    def is_ours(self) -> bool:
        return self.application_id == APPLICATION_ID


def _read_state(conn: sqlite3.Connection) -> _FileState:
    return _FileState(
        application_id=conn.execute("PRAGMA application_id").fetchone()[0],
        user_version=conn.execute("PRAGMA user_version").fetchone()[0],
        n_objects=conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0],
    )


def _connect(path: Path, mode: str, shown_as: Path | None = None) -> sqlite3.Connection:
    """An autocommit connection (we issue BEGIN ourselves), usable from the app's poller thread.
    Errors name `shown_as` (the database a temporary file is being built for), else `path`."""
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    try:
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.OperationalError as exc:
        raise StoreError(f"{shown_as or path}: cannot open database ({exc})") from exc


def _identify(conn: sqlite3.Connection, path: Path) -> _FileState:
    """Read the file's identity; foreign files and newer schemas raise, nothing is written."""
    try:
        state = retrying(lambda: _read_state(conn), path)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", _SQLITE_NOTADB) & 0xFF != _SQLITE_NOTADB:
            raise StoreError(f"{path}: cannot read database ({exc})") from exc
        raise NotAScaletuiDatabase(path, "not an SQLite database") from exc
    if not state.is_ours and not state.is_empty:
        raise NotAScaletuiDatabase(path, "an SQLite database without a scaletui schema")
    if state.user_version > SCHEMA_VERSION:
        raise SchemaTooNew(path, state.user_version, SCHEMA_VERSION)
    return state


def _migrate(db: Database, path: Path) -> None:
    """Apply pending migrations in one write transaction, re-checking under the lock."""

    def body(db: Database) -> None:
        state = _identify(db.conn, path)  # another process may have migrated meanwhile
        if state.is_ours and state.user_version == SCHEMA_VERSION:
            return
        for migration in MIGRATIONS[state.user_version :]:
            migration(db)
        _create_views(db)
        db.execute(f"PRAGMA application_id = {int(APPLICATION_ID)}")
        db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")

    write_transaction(db, body, path)


def _prepare_for_writing(db: Database, path: Path) -> None:
    """WAL, pragmas and pending migrations; `path` names the database in error messages."""
    conn = db.conn
    retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), path)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    _migrate(db, path)


# --------------------------------------------------------------------------- creating


def _database_files(db_file: Path) -> tuple[Path, ...]:
    """The file and the companions SQLite may make beside it in WAL mode."""
    return (db_file, db_file.with_name(db_file.name + "-wal"), db_file.with_name(db_file.name + "-shm"))


def _remove_database_files(db_file: Path) -> None:
    for file in _database_files(db_file):
        file.unlink(missing_ok=True)


def _build_complete(tmp: Path, path: Path) -> None:
    """Create the whole database in `tmp` and close it with everything in the main file (no WAL left)."""
    conn = _connect(tmp, "rwc", shown_as=path)  # SQLite creates it, with the permissions of any new database
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        _prepare_for_writing(Database(conn, execute_plugins=False), path)
        busy, wal_frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy or wal_frames != copied:
            raise StoreError(f"{path}: cannot create database (its new schema did not reach the main file)")
    finally:
        conn.close()


def _publish(tmp: Path, path: Path) -> None:
    """Give the finished file its name in one step, never replacing a file someone else made meanwhile."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return  # another process published first: everyone uses that one
    except OSError as exc:  # no hard links here: open_db creates the file in place, readers wait for it
        log.debug("cannot link %s to %s (%s); creating it in place", tmp, path, exc)
        return
    fsync_dir(path.parent)


def _create_new(path: Path) -> None:
    """Build a new database under a temporary name beside `path`, then publish it there."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        _build_complete(tmp, path)
        _publish(tmp, path)
    finally:
        _remove_database_files(tmp)  # after a link, `path` keeps the file; after a failure, nothing is left


# --------------------------------------------------------------------------- opening (continued)


def open_db(path: str | Path, *, create: bool = True, readonly: bool = False) -> Database:
    """Open (and, unless `readonly`, create and migrate) a scaletui database.

    A new database appears at `path` complete, in one step (see the module docstring).
    `create=False` never creates a file: a missing path raises FileNotFoundError.
    `readonly=True` implies `create=False`, opens with SQLite's `mode=ro` plus
    `query_only`, and never migrates (an older schema raises `SchemaTooOld`).
    Raises `NotAScaletuiDatabase` or `SchemaTooNew` without writing anything, and
    `DatabaseNotReady` when it may not create and the file has no tables yet.
    """
    path = Path(path)
    may_create = create and not readonly
    if not path.exists():
        if not may_create:
            raise FileNotFoundError(f"{path}: no such database")
        _create_new(path)
    conn = _connect(path, "ro" if readonly else ("rwc" if may_create else "rw"))
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        state = _identify(conn, path)
        if state.is_empty and not may_create:
            raise DatabaseNotReady(path)
        db = Database(conn, execute_plugins=False)
        if readonly:
            conn.execute("PRAGMA query_only = ON")
            if state.user_version < SCHEMA_VERSION:
                raise SchemaTooOld(path, state.user_version, SCHEMA_VERSION)
        else:
            _prepare_for_writing(db, path)
    except BaseException:
        conn.close()
        raise
    return db


def database_id(db: Database) -> str:
    """The identity of an open database (a UUID made with it; see `_v3_database_id`)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [DATABASE_ID_KEY]).fetchone()
    return str(row[0])


def schema_version(db: Database) -> int:
    """The schema version of an open database (`PRAGMA user_version`)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])
