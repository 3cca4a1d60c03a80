"""kill -9 of a sweep at random and at chosen moments, then a resume: nothing lost, nothing doubled.

What is checked afterwards, every time: the file passes `PRAGMA integrity_check`, no run is
left `running` once the next sweep has started (it reaps runs whose process is gone), runs that
had finished are byte-for-byte the same, and the resumed sweep ends with exactly one train
loss per step and one evaluation per evaluation step for every run.

The random kill moments come from a seeded generator (the seed is the test's parameter), so a
failure names the moment to reproduce; the "during a checkpoint write" and "inside a
transaction" moments are reached exactly through tests/faults/inject/sitecustomize.py.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import session_gone
from tests.faults.conftest import (
    Sweep,
    assert_complete_without_duplicates,
    assert_intact,
    events,
    finished_snapshot,
    kill_everything,
    rows,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

STEPS = 300
FAST = {"train": {"steps": STEPS, "checkpoint_every": 20, "eval_every": 50, "log_every": 10}}


def resume_and_check(sweep: Sweep, before: dict[int, tuple[object, ...]]) -> subprocess.CompletedProcess[str]:
    """Run the same sweep again: it must reap, resume and finish everything without touching finished runs."""
    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert_intact(sweep.db)
    assert_complete_without_duplicates(sweep.db)
    after = finished_snapshot(sweep.db)
    assert {run_id: after[run_id] for run_id in before} == before, "a finished run changed"
    return out


def running_with_pid(sweep: Sweep) -> list[tuple[int, int]]:
    try:
        return rows(sweep.db, "SELECT id, pid FROM runs WHERE status = 'running' AND step >= 1")
    except sqlite3.OperationalError:  # the runner has not created the file yet (it appears with its schema)
        return []


# One seeded moment per run of the suite (a second one, seed 29, cost ~40 s of CI and found nothing the
# chosen moments below do not reach exactly); add seeds here to search for new moments.
@pytest.mark.parametrize("seed", [11])
def test_kill_9_at_a_random_moment_then_resume(fault_sweep: Callable[..., Sweep], reap_sessions: list,
                                               seed: int) -> None:
    sweep = fault_sweep(**FAST, experiment={"workers": 2})  # two runs in flight when the kill comes
    moment = random.Random(seed).uniform(0.0, 2.5)  # seconds after the first run recorded a step
    proc = sweep.start()
    reap_sessions.append(proc)
    wait_for(lambda: running_with_pid(sweep), what="a run to record its first steps")
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        pass
    kill_everything(proc)

    assert_intact(sweep.db)
    left_running = {run_id for run_id, status in sweep.statuses().items() if status == "running"}
    before = finished_snapshot(sweep.db)
    resume_and_check(sweep, before)
    reaped = {run_id for run_id, message in events(sweep.db, "interrupted") if "is gone" in message}
    assert left_running <= reaped, f"seed {seed}, kill after {moment:.2f} s: not reaped {left_running - reaped}"


def test_kill_9_during_a_checkpoint_write(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    sweep = fault_sweep(**FAST)
    proc = sweep.start("hold_checkpoint:60")  # the checkpoint of step 60 is half-way written
    reap_sessions.append(proc)
    wait_for(sweep.parked, what="a worker parked inside a checkpoint write")
    kill_everything(proc)

    assert_intact(sweep.db)
    torn = list(sweep.run_checkpoints().glob("*/.step_00000060.pt.*.tmp"))
    assert torn, "the kill should have left the temporary file of the torn checkpoint"
    torn_run = torn[0].parent
    assert sorted(p.name for p in torn_run.glob("step_*.pt")) == ["step_00000020.pt", "step_00000040.pt"]

    resume_and_check(sweep, finished_snapshot(sweep.db))
    assert any(message.startswith("from step 40") for _, message in events(sweep.db, "resumed"))
    assert not list(sweep.run_checkpoints().glob("*/*.tmp")), "torn temporary checkpoint files were left behind"


def test_kill_9_inside_a_database_transaction(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    sweep = fault_sweep(**FAST)
    proc = sweep.start("hold_flush:100")  # rows of steps >= 100 inserted, COMMIT not yet issued
    reap_sessions.append(proc)
    wait_for(sweep.parked, what="a worker parked inside a write transaction")
    parked_pid = int(sweep.parked()[0].name.split("-")[1])
    [(run_id,)] = rows(sweep.db, "SELECT id FROM runs WHERE pid = ? AND status = 'running'", parked_pid)
    kill_everything(proc)

    assert_intact(sweep.db)
    # the uncommitted flush left nothing: this run's train losses stop before step 100, without a gap
    steps = [s for (s,) in rows(sweep.db, "SELECT step FROM metrics WHERE run_id = ? AND key = 'train_loss'"
                                          " ORDER BY step", run_id)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 100
    resume_and_check(sweep, finished_snapshot(sweep.db))


def test_kill_9_of_the_runner_alone(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    """Workers outlive a killed runner only long enough to checkpoint and mark their runs interrupted."""
    sweep = fault_sweep(**FAST)
    proc = sweep.start()
    reap_sessions.append(proc)
    wait_for(lambda: running_with_pid(sweep), what="a run to record its first steps")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: session_gone(proc), timeout=60, what="the orphaned workers to exit")

    assert_intact(sweep.db)
    statuses = sweep.statuses()
    assert "running" not in statuses.values(), statuses  # no reaper needed: the workers said so themselves
    assert "interrupted" in statuses.values(), statuses
    resume_and_check(sweep, finished_snapshot(sweep.db))
    assert events(sweep.db, "resumed"), "an interrupted run should resume from its checkpoint"


def test_kill_9_of_one_worker(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    sweep = fault_sweep(**FAST)
    proc = sweep.start()
    reap_sessions.append(proc)
    [(run_id, pid), *_] = wait_for(lambda: running_with_pid(sweep), what="a run to record its first steps")
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)

    assert proc.returncode == 1, stdout + stderr  # some run did not finish
    assert "Traceback" not in stderr
    assert_intact(sweep.db)
    statuses = sweep.statuses()
    assert statuses.pop(run_id) == "interrupted"
    assert set(statuses.values()) == {"done"}, statuses  # the other runs finished
    assert (run_id, f"worker process {pid} died (exit code -9)") in events(sweep.db, "interrupted")
    resume_and_check(sweep, finished_snapshot(sweep.db))
