"""The app's `k` (stop one run) on a Ray sweep, on a real two-node cluster (tests/ray/conftest.py).

A run on another machine is asked through the database (`stop_requests`, what the app writes when it
cannot signal the run's worker): the executor's writer names the run in its next answer to the
worker, which stops exactly that run, one member of a bundle included, while the rest of the sweep
finishes. A run on the app's own machine is asked as a local worker's is (a request file, then
SIGUSR1), which a Ray worker takes the same way instead of dying of it. A stopped run checkpoints
and becomes `interrupted`, as with a local `k`; its records stay one row per step.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from scaletui.services.stop_requests import stop_run
from tests.faults.conftest import assert_intact, events, rows
from tests.ray.conftest import Cluster, RaySweep, ended
from tests.ray.test_ray_entrypoint import (
    STEPS,
    SWEEP_TIMEOUT,
    assert_one_row_per_step,
    runs_by_id,
    start,
    write_sweep,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

BUNDLE_STEPS = 200
PAUSE_STEP = 60


def test_a_bundle_member_on_the_cluster_stops_alone_through_the_database(
        cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    sweep = ray_sweep(experiment={"workers": 1},  # 4 seeds of one shape, one worker: one bundle of 4
                      model={"width": [8], "depth": [1]},
                      train={"seeds": [0, 1, 2, 3], "steps": BUNDLE_STEPS, "checkpoint_every": 20, "log_every": 10,
                             "eval_every": 100})
    cluster.pause_at(PAUSE_STEP)  # the bundle waits in its checkpoint of step 60 until its worker hears a stop
    proc = sweep.start()
    try:
        (pid,) = wait_for(lambda: cluster.paused_pids() or proc.poll() is not None, timeout=120,
                          what=f"the bundle to pause at step {PAUSE_STEP}")
        assert proc.poll() is None, f"the sweep ended first:\n{proc.communicate()}"
        bundle = [run_id for (run_id,) in rows(sweep.db, "SELECT id FROM runs WHERE pid = ? ORDER BY id", pid)]
        assert len(bundle) == 4, bundle
        victim = bundle[1]
        # The app's `k` on a run of another machine (the nodes here share this one's hostname).
        stop_run(sweep.db, victim, "a-machine-elsewhere", 4_000_000)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        cluster.pause_at(None)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, f"{stdout}\n{stderr}"  # one run interrupted: not a clean sweep
    assert "Traceback" not in stderr
    assert_intact(sweep.db)
    statuses = dict(rows(sweep.db, "SELECT id, status FROM runs"))
    assert statuses.pop(victim) == "interrupted" and set(statuses.values()) == {"done"}, statuses
    (stopped_at,) = rows(sweep.db, "SELECT step FROM runs WHERE id = ?", victim)[0]
    assert PAUSE_STEP <= stopped_at <= PAUSE_STEP + 1, stopped_at  # at its next step after the request
    train = [s for (s,) in rows(sweep.db, "SELECT step FROM metrics WHERE run_id = ? AND key = 'train_loss' "
                                          "ORDER BY step", victim)]
    assert train == list(range(1, stopped_at + 1)), "the stopped run's records are one row per step"
    for run_id in statuses:  # the bundle's other members trained on to the end
        train = rows(sweep.db, "SELECT step FROM metrics WHERE run_id = ? AND key = 'train_loss'", run_id)
        assert sorted(s for (s,) in train) == list(range(1, BUNDLE_STEPS + 1)), f"run {run_id}"
    assert not [m for _, m in events(sweep.db, "interrupted") if "lost its Ray worker" in m]
    assert rows(sweep.db, "SELECT COUNT(*) FROM stop_requests") == [(0,)], "answered: the request is gone"


def status(db: Path, run_id: int) -> str | None:
    found = rows(db, "SELECT status FROM runs WHERE id = ?", run_id)
    return found[0][0] if found else None


def held(marks: Path) -> set[int]:
    return {int(path.name.split("-", 1)[1]) for path in marks.glob("held-*")}


def test_entrypoint_runs_stop_one_by_one_through_the_database_and_by_signal(cluster: Cluster, tmp_path: Path
                                                                            ) -> None:
    path, db = write_sweep(tmp_path, gains=[1.0], seeds=[0, 1]), tmp_path / "runs.db"  # 4 runs, 2 at a time
    marks = tmp_path / "marks"
    (marks / "hold").touch()
    proc: subprocess.Popen[str] = start(path, db, cluster)
    try:
        first = wait_for(lambda: len(held(marks)) == 2 and held(marks), timeout=120, what="two runs held at step 7")
        by_db = min(first)
        stop_run(db, by_db, "a-machine-elsewhere", 4_000_000)  # the app's `k` on a run it cannot signal
        wait_for(lambda: status(db, by_db) == "interrupted", timeout=60, what=f"run {by_db} to stop")
        by_signal = wait_for(lambda: next(iter(held(marks) - first), None), timeout=60,
                             what="the next run to start and hold")
        ((pid,),) = rows(db, "SELECT pid FROM runs WHERE id = ?", by_signal)
        stop_run(db, by_signal, socket.gethostname(), int(pid))  # the app on this run's machine: file + SIGUSR1
        wait_for(lambda: status(db, by_signal) == "interrupted", timeout=60, what=f"run {by_signal} to stop")
        os.kill(int(pid), 0)  # the Ray worker took the signal and lives on
        (marks / "hold").unlink()  # the others train on
    finally:
        out = ended(proc, SWEEP_TIMEOUT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    runs = runs_by_id(db)
    for run_id in (by_db, by_signal):
        assert (runs[run_id]["status"], runs[run_id]["error"]) == ("interrupted", None), runs[run_id]
        assert [m for rid, m in events(db, "interrupted") if rid == run_id] == ["stopped at step 7"]
        assert_one_row_per_step(db, run_id, 7)
    done = [run for run_id, run in runs.items() if run_id not in (by_db, by_signal)]
    assert [run["status"] for run in done] == ["done", "done"]
    for run in done:
        assert_one_row_per_step(db, run["id"], STEPS - 1)
