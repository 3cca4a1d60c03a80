"""Schema v7 (`stop_requests`, the app's `k` on a run it cannot signal): a database of the schema before
it migrates in place and keeps its runs; a request is one row per run until it is dropped."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from scaletui.core.records import RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.store import Reader, SchemaTooOld, Store, schema
from scaletui.store.schema import SCHEMA_VERSION
from scaletui.store.stop_requests import StopRequests
from tests.store.old_schema import store_of_schema

STOP_MIGRATION = schema.MIGRATIONS.index(schema._v7_stop_requests)


def test_a_database_from_before_stop_requests_migrates_and_keeps_its_runs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "old.db"
    spec = RunSpec("sweep", DataSpec(train_size=256), ModelSpec(width=8), TrainSpec(steps=10))
    with store_of_schema(monkeypatch, db, STOP_MIGRATION) as store:  # what the release before this migration made
        experiment = store.upsert_experiment("sweep", None, None, LossRule.FINAL)
        ((run_id, _),) = store.register_runs(experiment, [spec], fresh=False)
        store.finish_run(run_id, RunOutcome(RunStatus.DONE, 10, final_test_loss=0.5))
    with closing(sqlite3.connect(db)) as conn:
        assert "stop_requests" not in {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    with pytest.raises(SchemaTooOld):
        Reader(db)

    with StopRequests(db) as requests:  # a writer migrates (the app asking to stop a run, too)
        requests.request(run_id)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT run_id FROM stop_requests").fetchall() == [(run_id,)]
    with Reader(db) as reader:
        (row,) = reader.runs()
    assert (row.id, row.status, row.final_test_loss) == (run_id, RunStatus.DONE, 0.5)


def test_a_request_is_one_row_per_run_until_dropped(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    spec = RunSpec("sweep", DataSpec(train_size=256), ModelSpec(width=8), TrainSpec(steps=10))
    with Store(db) as store:
        experiment = store.upsert_experiment("sweep", None, None, LossRule.FINAL)
        runs = [run_id for run_id, _ in store.register_runs(experiment, [spec, replace(spec, seed=1)], fresh=False)]
    with StopRequests(db) as requests:
        assert requests.pending() == set()
        requests.request(runs[0])
        requests.request(runs[0])  # pressed twice: still one request
        requests.request(runs[1])
        assert requests.pending() == set(runs)
        requests.drop([runs[0]])
        requests.drop([])  # nothing to drop: no transaction
        assert requests.pending() == {runs[1]}
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM stop_requests").fetchone() == (1,)
