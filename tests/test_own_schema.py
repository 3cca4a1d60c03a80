"""Schema v5 (runs of your own loop): a database of the schema before it migrates in place, its sweep runs
keep their loss, and the new columns say where a run came from and what an experiment's loss is."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from scaletui.core.records import RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import DEFAULT_LOSS_METRIC, LossRule, RunSource, RunStatus
from scaletui.store import Reader, SchemaTooOld, Store, schema
from scaletui.store.schema import SCHEMA_VERSION
from tests.store.old_schema import store_of_schema

OWN_MIGRATION = schema.MIGRATIONS.index(schema._v5_own_runs)


def test_a_database_from_before_own_runs_migrates_and_keeps_its_runs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "old.db"
    spec = RunSpec("sweep", DataSpec(train_size=256), ModelSpec(width=8), TrainSpec(steps=10))
    with store_of_schema(monkeypatch, db, OWN_MIGRATION) as store:  # what the release before this migration made
        experiment = store.upsert_experiment("sweep", None, None, LossRule.BEST)
        ((run_id, _),) = store.register_runs(experiment, [spec], fresh=False)
        store.finish_run(run_id, RunOutcome(RunStatus.DONE, 10, final_test_loss=0.5, best_test_loss=0.4))
    with pytest.raises(SchemaTooOld):
        Reader(db)

    Store(db).close()  # a writer migrates
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT loss_metric, higher_is_better FROM experiments").fetchall() == [
            (DEFAULT_LOSS_METRIC, 0)]
        assert conn.execute("SELECT source, user_config_json FROM runs").fetchall() == [(RunSource.SWEEP, None)]
    with Reader(db) as reader:
        (row,) = reader.runs()
        (experiment_row,) = reader.experiments()
        assert reader.run_spec(row.id) == spec and reader.user_config(row.id) is None
    assert (row.source, row.loss, row.loss_metric, row.higher_is_better) == (RunSource.SWEEP, 0.4, "test_loss", False)
    assert (experiment_row.loss_metric, experiment_row.higher_is_better) == ("test_loss", False)
