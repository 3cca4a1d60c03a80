"""Opening and migrating: the schema is created once, versioned, and foreign files are left alone."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from sqlite_utils import Database

from scaletui.core.records import RunOutcome
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.store import (
    DatabaseNotReady,
    NotAScaletuiDatabase,
    Reader,
    SchemaTooNew,
    SchemaTooOld,
    Store,
    StoreError,
    StoreSink,
    open_db,
    schema,
)
from scaletui.store.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.store.old_schema import store_of_schema

TABLES = {"experiments", "runs", "metrics", "layer_stats", "events", "meta"}
VIEWS = {"run_summary", "final_losses", "latest_layer_stats"}


def sqlite_master(path: Path) -> list[tuple[str, str, str]]:
    """The whole schema as SQLite stores it, read with the plain stdlib driver."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """Bytes, mtime and the sibling files of `path`: what 'unmodified' means."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def test_open_creates_every_table_and_view(db_path: Path) -> None:
    db = open_db(db_path)
    assert set(db.table_names()) >= TABLES
    assert set(db.view_names()) == VIEWS
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    for view in VIEWS:  # every view compiles against the tables
        db.execute(f"SELECT * FROM {view}").fetchall()
    db.close()


def test_metrics_and_layer_stats_are_without_rowid_with_the_documented_keys(db_path: Path) -> None:
    open_db(db_path).close()
    db = Database(db_path)
    assert db.table("metrics").pks == ["run_id", "step", "key"]
    assert db.table("layer_stats").pks == ["run_id", "step", "layer"]
    assert "WITHOUT ROWID" in db["metrics"].schema and "WITHOUT ROWID" in db["layer_stats"].schema
    runs_columns = set(db["runs"].columns_dict)
    assert set(schema.HYPERPARAMETERS) <= runs_columns
    assert {"config_json", "params", "flops_per_example", "lr_effective", "heartbeat_at", "error"} <= runs_columns


def test_migrations_are_idempotent(db_path: Path) -> None:
    open_db(db_path).close()
    before = sqlite_master(db_path)
    for _ in range(3):
        open_db(db_path).close()
    assert sqlite_master(db_path) == before


def test_migrations_apply_in_order_and_only_once(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(db_path) as store:
        store.upsert_experiment("kept", None, None, "final")
    calls: list[str] = []

    def v2_add_note(db: Database) -> None:
        calls.append("v2")
        db.execute("ALTER TABLE experiments ADD COLUMN note TEXT")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, v2_add_note])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        db = open_db(db_path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        db.close()
    assert calls == ["v2"]
    db = Database(db_path)
    assert "note" in db["experiments"].columns_dict
    assert [row["name"] for row in db["experiments"].rows] == ["kept"]
    assert set(db.view_names()) == VIEWS


def test_a_failing_migration_leaves_the_old_version(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_db(db_path).close()
    before = sqlite_master(db_path)

    def v2_broken(db: Database) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, v2_broken])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        open_db(db_path)
    assert sqlite_master(db_path) == before
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_raises_schema_too_new(db_path: Path, readonly: bool) -> None:
    open_db(db_path).close()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = snapshot(db_path)
    with pytest.raises(SchemaTooNew) as info:
        open_db(db_path, readonly=readonly)
    assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert "\n" not in str(info.value)
    assert snapshot(db_path)[:2] == before[:2]  # a WAL file may get its -wal/-shm siblings back


@pytest.mark.parametrize("readonly", [False, True])
def test_non_sqlite_file_is_refused_and_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = snapshot(path)
    with pytest.raises(NotAScaletuiDatabase) as info:
        open_db(path, readonly=readonly)
    assert "not an SQLite database" in str(info.value) and "\n" not in str(info.value)
    assert snapshot(path) == before


@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO runs (name) VALUES ('theirs')")
    conn.close()
    before = snapshot(path)
    with pytest.raises(NotAScaletuiDatabase):
        open_db(path, readonly=readonly)
    with pytest.raises(NotAScaletuiDatabase):
        Store(path)
    assert snapshot(path) == before
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_empty_file_is_initialised_only_when_creating(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(DatabaseNotReady):
        open_db(path, create=False)
    with pytest.raises(DatabaseNotReady):
        Reader(path)
    assert path.stat().st_size == 0
    open_db(path, create=True).close()
    assert {name for kind, name, _ in sqlite_master(path) if kind == "table"} >= TABLES


def sqlite_file_without_tables(path: Path) -> Path:
    """What `sqlite3 FILE 'PRAGMA journal_mode=WAL'` leaves: a valid SQLite header, no schema."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
    return path


@pytest.mark.parametrize("make", [lambda p: p.touch() or p, sqlite_file_without_tables], ids=["0-byte", "no-tables"])
def test_a_reader_meeting_a_file_without_tables_is_told_to_wait(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path / "new.db")
    before = snapshot(path)
    for opener in (lambda: open_db(path, readonly=True), lambda: Reader(path)):
        with pytest.raises(DatabaseNotReady) as info:
            opener()
        assert isinstance(info.value, StoreError)
        assert str(info.value) == f"{path}: waiting for the sweep to create its tables"
    assert snapshot(path)[:2] == before[:2]


# --------------------------------------------------------------------------- database identity


def database_id_of(path: Path) -> str:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()[0])


def test_every_database_has_an_id_that_is_stable_across_reopen(tmp_path: Path) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    with Store(first) as store:
        made = store.database_id()
    assert uuid.UUID(made).version == 4
    assert database_id_of(first) == made
    for _ in range(2):
        with Store(first) as store, Reader(first) as reader:
            assert store.database_id() == reader.database_id() == made
    with Store(second) as store:
        assert store.database_id() != made


def test_a_database_of_the_previous_schema_gets_an_id_on_migration(db_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with store_of_schema(monkeypatch, db_path, 2) as store:  # what the last release without `meta` created
        store.db.execute("INSERT INTO experiments (name, loss_rule) VALUES ('kept', 'final')")
    assert "meta" not in {name for kind, name, _ in sqlite_master(db_path) if kind == "table"}
    with pytest.raises(SchemaTooOld):
        Reader(db_path)  # a reader never migrates, so it cannot make the id either

    with Store(db_path) as store:
        made = store.database_id()
    uuid.UUID(made)
    with Reader(db_path) as reader:
        assert reader.database_id() == made and [e.name for e in reader.experiments()] == ["kept"]
    with Store(db_path) as store:
        assert store.database_id() == made


def test_missing_file_is_never_created_without_create(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    for opener in (
        lambda: open_db(path, create=False),
        lambda: open_db(path, readonly=True),
        lambda: Reader(path),
        lambda: StoreSink(path, 1),
    ):
        with pytest.raises(FileNotFoundError, match=r"missing\.db"):
            opener()
    assert os.listdir(tmp_path) == []


def test_reader_connection_cannot_write(store: Store, db_path: Path) -> None:
    with Reader(db_path) as reader, pytest.raises(sqlite3.OperationalError):
        reader.db.execute("INSERT INTO experiments (name, loss_rule) VALUES ('x', 'final')")
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        assert conn.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 shell installed")
def test_views_work_in_the_sqlite3_shell(store: Store, db_path: Path, spec: Callable[..., RunSpec]) -> None:
    experiment = store.upsert_experiment("exp", None, None, "best")
    [(run_id, _)] = store.register_runs(experiment, [spec()], fresh=False)
    store.finish_run(run_id, RunOutcome(RunStatus.DONE, 100, final_test_loss=0.5, best_test_loss=0.25))
    out = subprocess.run(
        ["sqlite3", "-readonly", str(db_path),
         "SELECT experiment, status, loss, loss_rule FROM run_summary;"
         "SELECT n_seeds, mean_loss FROM final_losses;"
         "SELECT count(*) FROM latest_layer_stats;"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.split() == ["exp|done|0.25|best", "1|0.25", "0"]
