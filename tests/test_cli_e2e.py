"""The real `scaletui` command in a subprocess, on tiny sweeps, checked against the real database."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.faults.conftest import fault_env
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def db_rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_headless_sweep_stores_everything(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep()
    out = run_cli("run", "--headless", str(sweep))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("started ") == 4 and out.stdout.count("done ") >= 4
    assert "training 4 of 4 runs" in out.stdout  # plain output counts progress against the plan
    assert [f"[{i}/4]" in out.stdout for i in range(1, 5)] == [True] * 4
    assert "final test loss" in out.stdout  # the summary names the loss rule
    assert "mean +- sd over seeds of the final test loss" in out.stdout  # and states each size's mean
    db = tmp_path / "runs.db"
    assert {s for (s,) in db_rows(db, "select status from run_summary")} == {"done"}
    # train loss at every step, no gaps, no duplicates
    counts = db_rows(db, "select run_id, count(*), min(step), max(step), count(distinct step) from metrics "
                         "where key = 'train_loss' group by run_id")
    assert len(counts) == 4 and all(c[1:] == (60, 1, 60, 60) for c in counts)
    # per-layer statistics for every layer (depth hidden layers + head) at every log step
    for run_id, depth in db_rows(db, "select id, depth from runs"):
        layers = db_rows(db, "select step, count(*) from layer_stats where run_id = ? group by step", run_id)
        assert [s for s, _ in layers] == [10, 20, 30, 40, 50, 60]
        assert {n for _, n in layers} == {depth + 1}
    evals = db_rows(db, "select distinct step from metrics where key = 'test_loss' order by step")
    assert [s for (s,) in evals] == [0, 20, 40, 60]
    assert all(v is not None for (v,) in db_rows(db, "select loss from run_summary"))
    assert len(db_rows(db, "select * from final_losses")) == 4


def test_dry_run_prints_the_sweep_and_writes_nothing(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    out = run_cli("run", "--dry-run", str(make_sweep()))
    assert out.returncode == 0, out.stderr
    assert "4 runs over model.width (2), model.depth (2)" in out.stdout
    assert not (tmp_path / "runs.db").exists()


def test_bad_sweep_is_one_line_exit_2_and_no_database(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(model={"depth": 0})
    out = run_cli("run", "--headless", str(sweep))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: experiments.toml: model.depth: must be a positive integer, got 0"
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs.db").exists()


def test_bad_arguments_are_one_line_exit_2() -> None:
    out = run_cli("run", "--workers", "0", "--dry-run")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--workers" in out.stderr


def test_a_diverging_run_is_marked_while_siblings_finish(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(model={"width": 16, "depth": [1, 2]}, train={"lr": [3e-3, 1e4], "optimizer": "sgd"})
    out = run_cli("run", "--headless", str(sweep))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = db_rows(tmp_path / "runs.db", "select lr, status, error from runs order by lr")
    assert [(lr, status) for lr, status, _ in rows] == [(3e-3, "done"), (3e-3, "done"),
                                                         (1e4, "diverged"), (1e4, "diverged")]
    assert all(error for lr, _, error in rows if lr == 1e4)


def test_sigterm_to_the_runner_alone_interrupts_and_a_rerun_resumes_without_duplicates(
        make_sweep: Callable[..., Path], tmp_path: Path, reap_sessions: list) -> None:
    """`kill PID`: only the runner gets the signal and must stop its workers itself. (A terminal's Ctrl-C
    and a service manager's stop signal the whole process group: tests/faults/test_signals.py.)"""
    sweep = make_sweep(model={"width": 64, "depth": [2, 3]}, train={"steps": 300, "checkpoint_every": 50,
                                                                    "eval_every": 100},
                       experiment={"workers": 2})  # both runs at once
    # Every run parks in its step 150 until it is told to stop (fault seam `hold_step`), so both have
    # checkpointed when the signal comes, however slow or fast the machine is.
    proc = subprocess.Popen([sys.executable, "-m", "scaletui", "run", "--headless", str(sweep)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=fault_env("hold_step:150", tmp_path / "marks"), start_new_session=True)
    reap_sessions.append(proc)  # a failure below must not leave the parked sweep running
    db = tmp_path / "runs.db"
    wait_for(lambda: db.exists() and db_rows(db, "select count(*) from runs where status = 'running' and step >= 100"
                                             )[0][0] == 2, timeout=180, what="both runs past their step-100 checkpoint")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    statuses = {s for (s,) in db_rows(db, "select status from runs")}
    assert "running" not in statuses and "interrupted" in statuses, statuses
    before = dict(db_rows(db, "select id, step from runs where status = 'interrupted'"))
    assert all(step > 0 for step in before.values())

    out = run_cli("run", "--headless", str(sweep))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed at step" in out.stdout
    assert {s for (s,) in db_rows(db, "select status from runs")} == {"done"}
    counts = db_rows(db, "select run_id, count(*), count(distinct step) from metrics where key = 'train_loss' "
                         "group by run_id")
    assert counts and all(n == distinct == 300 for _, n, distinct in counts)


def test_ls_lists_runs_and_refuses_foreign_databases(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(model={"width": 8, "depth": 1})
    assert run_cli("run", "--headless", str(sweep)).returncode == 0
    out = run_cli("ls", "--db", str(tmp_path / "runs.db"), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["status"] for r in rows] == ["done"] and rows[0]["params"] > 0

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create table customers (id integer)")
    before = foreign.read_bytes()
    out = run_cli("ls", "--db", str(foreign))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert foreign.read_bytes() == before
