"""The Python API on a real SQLite file: what `scaletui.init` registers, what `log` stores, how bad input
fails at the call site, the loss rule of an experiment, statuses, resuming and starting over."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import scaletui
from scaletui.core.vocabulary import AlertKind, RunSource, RunStatus
from scaletui.services.own_records import RecordWriter
from scaletui.services.own_run import RunHandle
from scaletui.store import Reader
from scaletui.store.errors import StoreWriteFailed
from scaletui.store.writer import OwnRunSink

# Most tests here do not log the experiment's loss metric; the one that checks the warning catches it.
pytestmark = pytest.mark.filterwarnings("ignore:scaletui. run .* never logged")


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "api.db"  # the folder does not exist yet: init makes it


def start(db: Path, config: dict[str, Any] | None = None, **kw: Any) -> scaletui.Run:
    return scaletui.init(db=db, experiment=kw.pop("experiment", "exp"), config=config or {"width": 8}, **kw)


# --------------------------------------------------------------------------- registration


def test_init_registers_a_running_run_with_its_config_in_the_same_schema(db: Path) -> None:
    config = {"width": 64, "depth": 3, "lr": 3e-4, "seed": 2, "optimizer": "adam", "note": "x", "depth_ratio": 1.5}
    with scaletui.init(db=db, experiment="ppo-width", config=config, loss="cost") as run:
        ((status, pid, host, source, user_config, config_json),) = rows(
            db, "SELECT status, pid, host, source, user_config_json, config_json FROM runs")
        assert (status, source, config_json) == (RunStatus.RUNNING, RunSource.API, None)
        assert pid is not None and host and json.loads(user_config) == config
        run.log({"cost": 1.0}, step=0)
    ((width, depth, lr, seed, optimizer, label, key),) = rows(
        db, "SELECT width, depth, lr, seed, optimizer, label, key FROM runs")
    assert (width, depth, lr, seed, optimizer) == (64, 3, 3e-4, 2, "adam")
    assert label == "w64 d3 s2" and key == run.key
    assert rows(db, "SELECT name, loss_metric, higher_is_better, loss_rule FROM experiments") == [
        ("ppo-width", "cost", 0, "final")]
    with Reader(db) as reader:  # the typed rows read an own run (arch, dataset, steps are None)
        (summary,) = reader.runs()
        assert summary.source is RunSource.API and summary.arch is None and summary.loss == 1.0
        assert reader.user_config(run.id) == config


def test_the_key_is_stable_and_names_experiment_and_config(db: Path) -> None:
    with start(db, {"a": 1, "b": [1, 2]}) as one:
        pass
    with start(db, {"b": (1, 2), "a": np.int64(1)}) as again:  # same config, another spelling
        pass
    with start(db, {"a": 1, "b": [1, 2]}, experiment="other") as elsewhere:
        pass
    assert one.key == again.key != elsewhere.key
    assert rows(db, "SELECT count(*) FROM runs") == [(2,)]


@pytest.mark.parametrize("config, message", [
    ([1, 2], "expected a mapping"),
    ({"lr": float("nan")}, "config['lr']: nan is not a finite number"),
    ({"model": object()}, "config['model']: a object is not a config value"),
    ({1: 2}, "key 1 is a int"),
])
def test_a_config_that_cannot_identify_a_run_is_refused_before_anything_is_written(
        db: Path, config: Any, message: str) -> None:
    with pytest.raises(scaletui.InvalidConfig, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        scaletui.init(db=db, experiment="exp", config=config)
    assert "\n" not in str(info.value)
    assert not db.exists()


# --------------------------------------------------------------------------- logging


def test_log_stores_numbers_tensors_and_numpy_scalars_one_row_per_step_and_key(db: Path) -> None:
    torch = pytest.importorskip("torch")
    with start(db) as run:
        run.log({"a": 1, "b": 0.5}, step=0)
        run.log({"a": torch.tensor(2.5), "b": np.float32(0.25), "c": np.array([3.0])}, step=1)
        run.log({"a": torch.tensor([4], dtype=torch.int64, requires_grad=False)})  # step 2: the next one
        run.log({"a": 5.0}, step=2)  # the same step again: the later value wins
        assert run.step == 2
    assert rows(db, "SELECT step, key, value FROM metrics ORDER BY step, key") == [
        (0, "a", 1.0), (0, "b", 0.5), (1, "a", 2.5), (1, "b", 0.25), (1, "c", 3.0), (2, "a", 5.0)]
    assert rows(db, "SELECT step FROM runs") == [(2,)]


def test_non_finite_values_are_stored_faithfully_and_the_divergence_detector_sees_them(db: Path) -> None:
    with start(db, loss="train_loss") as run:
        for step in range(40):
            run.log({"train_loss": 1.0 / (step + 1), "grad": 1.0}, step=step)
        run.log({"train_loss": math.nan, "grad": math.inf}, step=40)
        run.log({"train_loss": -math.inf}, step=41)
    stored = dict(((s, k), v) for s, k, v in rows(db, "SELECT step, key, value FROM metrics WHERE step >= 40"))
    assert stored == {(40, "train_loss"): None, (40, "grad"): math.inf, (41, "train_loss"): -math.inf}
    assert rows(db, "SELECT count(*) FROM metrics WHERE value = 9e999") == [(1,)]  # a REAL infinity
    with Reader(db) as reader:
        assert math.isnan(reader.metric_series(run.id, "train_loss")[40].value)
        (alert,) = reader.alerts("exp")
    assert alert.kind == AlertKind.DIVERGENCE and alert.run_id == run.id and alert.step == 40
    assert rows(db, "SELECT status, error FROM runs") == [(RunStatus.DIVERGED, "train_loss is -inf at step 41")]


BAD_VALUES = [("text", "is a str, not a number"), (None, "is None, not a number"),
              (True, "is a bool, not a number"), ([1.0], "is a list, not a number"),
              (1 + 2j, "is a complex, not a number"), (np.array([1.0, 2.0]), "is a ndarray, not a number"),
              (10**400, "does not fit in a float")]


@pytest.mark.parametrize("value, message", BAD_VALUES, ids=[m.split(",")[0] for _, m in BAD_VALUES])
def test_a_value_that_is_not_a_number_fails_at_the_call_site_and_writes_nothing(
        db: Path, value: Any, message: str) -> None:
    with start(db) as run:
        run.log({"ok": 1.0}, step=0)
        with pytest.raises(scaletui.NotANumber, match=message) as info:
            run.log({"fine": 2.0, "bad": value}, step=1)  # the good key of the same call is not written either
        assert isinstance(info.value, TypeError) and "\n" not in str(info.value) and "'bad'" in str(info.value)
        run.log({"ok": 3.0}, step=1)
    assert rows(db, "SELECT step, key, value FROM metrics ORDER BY step") == [(0, "ok", 1.0), (1, "ok", 3.0)]
    assert rows(db, "SELECT status FROM runs") == [(RunStatus.DONE,)]


def test_tensors_that_are_not_one_real_number_are_refused(db: Path) -> None:
    torch = pytest.importorskip("torch")
    with start(db) as run:
        for value, message in [(torch.ones(3), r"shape \(3,\)"), (torch.tensor(True), "torch.bool"),
                               (torch.tensor(1 + 1j), "complex")]:
            with pytest.raises(scaletui.NotANumber, match=message):
                run.log({"x": value}, step=0)
    assert rows(db, "SELECT count(*) FROM metrics") == [(0,)]


def test_a_step_going_backwards_or_not_a_step_fails_at_the_call_site(db: Path) -> None:
    with start(db) as run:
        run.log({"x": 1.0}, step=5)
        with pytest.raises(scaletui.StepWentBackwards, match="step 4 is before step 5") as info:
            run.log({"x": 2.0}, step=4)
        assert isinstance(info.value, ValueError)
        for step, message in [(-1, "negative"), (1.5, "is a float"), (True, "is a bool"), ("3", "is a str")]:
            with pytest.raises(scaletui.InvalidMetric, match=message):
                run.log({"x": 2.0}, step=step)
        run.log({"x": 3.0}, step=5)
    assert rows(db, "SELECT step, value FROM metrics") == [(5, 3.0)]


@pytest.mark.parametrize("key, error, message", [
    ("step", scaletui.ReservedMetricKey, "'step' is reserved"),
    ("run_id", scaletui.ReservedMetricKey, "'run_id' is reserved"),
    ("", scaletui.InvalidMetric, "not one line"),
    ("two\nlines", scaletui.InvalidMetric, "not one line"),
    (" padded", scaletui.InvalidMetric, "not one line"),
    (3, scaletui.InvalidMetric, "is a int; names are strings"),
])
def test_a_metric_name_that_clashes_or_is_not_a_name_fails_at_the_call_site(
        db: Path, key: Any, error: type[Exception], message: str) -> None:
    with start(db) as run, pytest.raises(error, match=message) as info:
        run.log({key: 1.0}, step=0)
    assert "\n" not in str(info.value).replace("'two\\nlines'", "")
    assert rows(db, "SELECT count(*) FROM metrics") == [(0,)]


def test_a_handle_is_closed_after_its_run_ended(db: Path) -> None:
    with start(db) as run:
        pass
    with pytest.raises(scaletui.RunClosed, match="has ended"):
        run.log({"x": 1.0}, step=0)


def test_a_database_that_refuses_writes_fails_the_next_call_and_the_run(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = start(db)
    run.log({"x": 1.0}, step=0)
    run.flush()

    def refuse(self: OwnRunSink) -> None:
        raise StoreWriteFailed(self.path, "disk full")

    monkeypatch.setattr(OwnRunSink, "flush", refuse)
    run.log({"x": 2.0}, step=1)
    with pytest.raises(scaletui.RunStorageError, match="disk full"):
        run.flush()
    with pytest.raises(scaletui.RunStorageError, match="disk full"):
        run.log({"x": 3.0}, step=2)
    monkeypatch.undo()
    with pytest.raises(scaletui.RunStorageError):
        run.finish()
    assert rows(db, "SELECT status, error FROM runs")[0][0] == RunStatus.FAILED
    assert rows(db, "SELECT step FROM metrics") == [(0,)]


# --------------------------------------------------------------------------- the loss rule


def test_the_loss_of_a_run_follows_the_experiments_rule_and_direction(db: Path) -> None:
    values = [5.0, 2.0, 3.0, 4.0]
    with start(db, {"width": 8}, loss="reward", higher_is_better=True, loss_rule="best") as run:
        for step, value in enumerate(values):
            run.log({"reward": value}, step=step)
    ((final, best, best_step, smoothed, loss),) = rows(
        db, "SELECT final_test_loss, best_test_loss, best_step, smoothed_test_loss, loss FROM run_summary")
    ema = [0.0, 0]
    for v in values[1:]:  # the debiased EMA of the values after step 0, as for built-in runs
        ema = [0.9 * ema[0] + 0.1 * v, ema[1] + 1]
    assert (final, best, best_step, loss) == (4.0, 5.0, 0, 5.0)
    assert smoothed == pytest.approx(ema[0] / (1 - 0.9 ** ema[1]))
    with Reader(db) as reader:
        (summary,) = reader.runs()
    assert summary.higher_is_better and summary.loss_metric == "reward"


def test_the_loss_rule_is_stated_once_per_experiment(db: Path) -> None:
    with start(db, {"w": 1}, loss="cost", loss_rule="smoothed"):
        pass
    with start(db, {"w": 2}):  # saying nothing keeps what the experiment has
        pass
    with start(db, {"w": 3}, loss="cost", higher_is_better=False):  # saying the same is fine
        pass
    with pytest.raises(scaletui.LossRuleConflict, match=r"its loss is the smoothed cost \(lower is better\)") as info:
        start(db, {"w": 4}, loss="reward")
    assert "loss='reward'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(scaletui.LossRuleConflict, match="this init says loss_rule='final'"):
        start(db, {"w": 4}, loss_rule="final")
    assert rows(db, "SELECT count(*) FROM runs") == [(3,)]


@pytest.mark.parametrize("kw, message", [({"loss_rule": "average"}, "not one of final, best, smoothed"),
                                         ({"loss": "step"}, "not a metric name"),
                                         ({"higher_is_better": "yes"}, "not True or False"),
                                         ({"name": "a\nb"}, "not one line")])
def test_a_bad_loss_statement_is_one_line(db: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(scaletui.InvalidConfig, match=message):
        start(db, **kw)


def test_a_run_that_never_logs_its_loss_metric_says_so(db: Path) -> None:
    with pytest.warns(UserWarning, match="never logged 'test_loss'"), start(db) as run:
        run.log({"train_loss": 1.0}, step=0)
    assert rows(db, "SELECT status, final_test_loss FROM runs") == [(RunStatus.DONE, None)]


# --------------------------------------------------------------------------- statuses


def test_an_exception_in_the_block_fails_the_run_with_its_first_line(db: Path) -> None:
    with pytest.raises(ValueError, match="boom"), start(db) as run:
        run.log({"x": 1.0}, step=3)
        raise ValueError("boom\nsecond line")
    assert rows(db, "SELECT status, error, step FROM runs") == [(RunStatus.FAILED, "ValueError: boom", 3)]
    assert rows(db, "SELECT message FROM events WHERE kind = ?", RunStatus.FAILED) == [("ValueError: boom",)]


def test_ctrl_c_in_the_block_interrupts_the_run(db: Path) -> None:
    with pytest.raises(KeyboardInterrupt), start(db) as run:
        run.log({"x": 1.0}, step=7)
        raise KeyboardInterrupt
    assert rows(db, "SELECT status FROM runs") == [(RunStatus.INTERRUPTED,)]
    assert rows(db, "SELECT message FROM events WHERE kind = ?", RunStatus.INTERRUPTED) == [("Ctrl-C at step 7",)]


def test_the_same_config_cannot_run_twice_at_once(db: Path) -> None:
    with start(db, {"w": 1}) as run:
        with pytest.raises(scaletui.RunInUse, match=f"run {run.id} .* is running in pid"):
            start(db, {"w": 1})
        run.log({"x": 1.0}, step=0)
    assert rows(db, "SELECT status FROM runs") == [(RunStatus.DONE,)]


# --------------------------------------------------------------------------- resume and start over


def test_running_a_config_again_starts_that_run_over(db: Path) -> None:
    with start(db, {"w": 1}, loss="x") as first:
        for step in range(5):
            first.log({"x": float(step)}, step=step)
    with start(db, {"w": 1}) as second:
        assert second.last_step is None
        second.log({"x": 9.0}, step=0)
    assert second.id == first.id
    assert rows(db, "SELECT step, value FROM metrics") == [(0, 9.0)]
    assert rows(db, "SELECT status, step, final_test_loss FROM runs") == [(RunStatus.DONE, 0, 9.0)]


def test_resume_continues_the_same_row_and_replays_from_the_step_the_loop_restarts_at(db: Path) -> None:
    with pytest.raises(KeyboardInterrupt), start(db, {"w": 1}, loss="x") as first:
        for step in range(10):
            first.log({"x": float(step), "y": 1.0}, step=step)
        raise KeyboardInterrupt
    with start(db, {"w": 1}, resume=True) as again:
        assert again.id == first.id and again.last_step == 9
        for step in range(6, 12):  # the loop's checkpoint was at step 5: it redoes 6..9
            again.log({"x": 100.0 + step}, step=step)
    got = rows(db, "SELECT step, key, value FROM metrics ORDER BY step, key")
    assert [(s, k) for s, k, _ in got] == [(s, k) for s in range(6) for k in "xy"] + [(s, "x") for s in range(6, 12)]
    assert dict(((s, k), v) for s, k, v in got)[(9, "x")] == 109.0  # replaced, once
    assert rows(db, "SELECT status, step FROM runs") == [(RunStatus.DONE, 11)]
    assert [k for (k,) in rows(db, "SELECT kind FROM events ORDER BY id")].count("resumed") == 1


# --------------------------------------------------------------------------- sizes, events, writer


def test_summary_sets_the_size_columns_and_refuses_anything_else(db: Path) -> None:
    with start(db) as run:
        run.summary(params=1234, flops_per_example=2.0e4, batch_size=32)
        with pytest.raises(scaletui.InvalidSize, match="'flops' is not a size column"):
            run.summary(flops=1)
        with pytest.raises(scaletui.InvalidSize, match="params=-1 is not a whole number"):
            run.summary(params=-1)
    assert rows(db, "SELECT params, flops_per_example, batch_size FROM runs") == [(1234, 20000, 32)]


def test_the_writer_keeps_the_heartbeat_and_delivers_every_row_through_a_tiny_queue(db: Path) -> None:
    with start(db) as run:
        pass
    writer = RecordWriter(db, run.id, heartbeat_seconds=0.05, flush_seconds=0.02, max_pending=3)
    (before,) = rows(db, "SELECT heartbeat_at FROM runs")[0]
    deadline = time.monotonic() + 60
    while rows(db, "SELECT heartbeat_at FROM runs")[0][0] == before:  # nothing logged: still a heartbeat
        assert time.monotonic() < deadline
        time.sleep(0.01)
    from scaletui.core.records import MetricRecord

    for step in range(500):
        writer.put_metrics([MetricRecord(step, "x", float(step))])
    writer.close()
    assert rows(db, "SELECT count(*), count(DISTINCT step), min(step), max(step) FROM metrics") == [(500, 500, 0, 499)]


def test_attach_writes_a_registered_runs_records_and_leaves_its_status_alone(db: Path) -> None:
    run = start(db, {"width": 4}, loss="cost")
    run.log({"cost": 1.0}, step=0)
    run.flush()
    handle = RunHandle.attach(db, run.id)
    assert handle.loss.metric == "cost" and handle.last_step == 0 and handle.config == {"width": 4}
    handle.log({"cost": 0.5}, step=1)
    handle.close()
    handle.store.close()
    assert rows(db, "SELECT status FROM runs") == [(RunStatus.RUNNING,)]
    run.finish()
    assert rows(db, "SELECT status, final_test_loss FROM runs") == [(RunStatus.DONE, 0.5)]


def test_ls_lists_an_own_run(db: Path) -> None:
    from tests.conftest import run_cli

    with start(db, {"width": 8}, loss="cost") as run:
        run.log({"cost": 0.25}, step=3)
    out = run_cli("ls", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "w8" in out.stdout and "0.2500" in out.stdout


def test_a_file_that_is_not_a_scaletui_database_is_refused_untouched(tmp_path: Path) -> None:
    from scaletui.store import NotAScaletuiDatabase

    path = tmp_path / "notes.db"
    path.write_text("my notes, not a database\n", encoding="utf-8")
    with pytest.raises(NotAScaletuiDatabase, match="not an SQLite database"):
        scaletui.init(db=path, experiment="exp", config={})
    assert path.read_text(encoding="utf-8") == "my notes, not a database\n"
