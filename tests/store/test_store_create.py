"""Creating a database: nobody ever sees the file before its schema, and racing creators share one file.

A reader that opens the path as soon as it exists (the app, the `sqlite3` shell, a script, the
fault tests' helpers) must find every table there. So a new database is built under a temporary
name and published in one step; these tests look at the path at every moment of the build.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import store_workers
from sqlite_utils import Database

from scaletui.store import Reader, Store, open_db, schema

SPAWN = multiprocessing.get_context("spawn")


def what_a_reader_sees(path: Path) -> str:
    """`absent`, `ready` (the runs table answers) or the error a plain sqlite3 reader gets right now."""
    if not path.exists():
        return "absent"
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("SELECT count(*) FROM runs").fetchone()
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ready"


def observed_migrations(path: Path, seen: list[str]) -> list[Callable[[Database], None]]:
    """The real migrations, each first asking what a reader arriving at that moment would see."""

    def observing(migration: Callable[[Database], None]) -> Callable[[Database], None]:
        def run(db: Database) -> None:
            seen.append(what_a_reader_sees(path))
            migration(db)
            seen.append(what_a_reader_sees(path))

        return run

    return [observing(m) for m in schema.MIGRATIONS]


def test_a_reader_never_sees_the_new_file_without_its_tables(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(schema, "MIGRATIONS", observed_migrations(db_path, seen))
    open_db(db_path).close()
    assert len(seen) == 2 * len(schema.MIGRATIONS)
    assert set(seen) == {"absent"}, seen  # while the schema is being built, the path does not exist
    assert what_a_reader_sees(db_path) == "ready"


def test_a_polling_reader_never_meets_a_file_without_tables(tmp_path: Path) -> None:
    """The race as the fault tests met it: poll for the file, query `runs` the moment it appears."""
    paths = [tmp_path / f"sweep{i}.db" for i in range(20)]
    errors: list[str] = []
    done = threading.Event()

    def poll() -> None:
        pending = list(paths)
        while pending and not done.is_set():
            seen = what_a_reader_sees(pending[0])
            if seen == "ready":
                pending.pop(0)
            elif seen != "absent":
                errors.append(f"{pending[0].name}: {seen}")
                pending.pop(0)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for path in paths:
            Store(path).close()
    finally:
        done.set()
        reader.join(timeout=60)
    assert errors == []


def test_creating_leaves_only_the_database_behind(db_path: Path) -> None:
    Store(db_path).close()
    assert os.listdir(db_path.parent) == [db_path.name]
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_failed_creation_leaves_nothing_behind(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(db: Database) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:-1], broken])
    with pytest.raises(RuntimeError, match="boom"):
        open_db(db_path)
    assert os.listdir(db_path.parent) == []


def test_two_threads_creating_one_path_at_once_share_one_database(db_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both build a database of their own, then publish at the same moment: one wins, the other uses it."""
    both_built = threading.Barrier(2, timeout=60)
    real_link = os.link

    def link_together(src: str | Path, dst: str | Path, **kw: object) -> None:
        both_built.wait()
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link_together)
    ids: dict[str, str] = {}

    def create(name: str) -> None:
        with Store(db_path) as store:
            ids[name] = store.database_id()
            store.upsert_experiment(name, None, None, "final")

    threads = [threading.Thread(target=create, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(ids) == {"first", "second"} and ids["first"] == ids["second"]
    assert os.listdir(db_path.parent) == [db_path.name]  # the loser's temporary database is gone
    with Reader(db_path) as reader:
        assert reader.database_id() == ids["first"]
        assert sorted(e.name for e in reader.experiments()) == ["first", "second"]


def test_processes_creating_one_path_at_once_share_one_database(db_path: Path) -> None:
    go, ids = SPAWN.Event(), SPAWN.Queue()
    names = [f"p{i}" for i in range(4)]
    workers = [SPAWN.Process(target=store_workers.create_and_register, args=(str(db_path), name, go, ids))
               for name in names]
    for worker in workers:
        worker.start()
    go.set()
    reported = [ids.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    assert len(set(reported)) == 1
    assert os.listdir(db_path.parent) == [db_path.name]
    with Reader(db_path) as reader:
        assert reader.database_id() == reported[0]
        assert sorted(e.name for e in reader.experiments()) == names
