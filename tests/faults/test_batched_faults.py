"""A batched worker (one bundle of same-shape runs) killed, signalled and diverging, as real processes.

Each sweep here is one shape with three seeds and one worker, so its three runs are one bundle in one
worker process. The runs are long (2000 tiny steps, a checkpoint every 50) so that the moments the tests
wait for (every run past its first checkpoints) come long before any run could finish; every wait
polls the SQLite file.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from scaletui.services.stop_requests import request_run_stop
from tests.faults.conftest import Sweep, assert_complete_without_duplicates, assert_intact, events, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

STEPS = 2000
BUNDLE = {
    "experiment": {"workers": 1, "threads_per_worker": 1},  # one single-threaded worker: the bundle
    "model": {"arch": "resmlp", "width": 16, "depth": 2, "norm": "layer", "dropout": 0.1},
    "train": {"steps": STEPS, "checkpoint_every": 50, "eval_every": 500, "log_every": 10, "seeds": [0, 1, 2]},
}


def running_steps(sweep: Sweep) -> dict[int, tuple[int, int]]:
    """run id -> (worker pid, recorded step) of the runs that are running."""
    try:
        found = rows(sweep.db, "SELECT id, pid, step FROM runs WHERE status = 'running'")
    except Exception:  # the runner has not created the file yet
        return {}
    return {run_id: (pid, step or 0) for run_id, pid, step in found}


def all_past(sweep: Sweep, step: int) -> dict[int, tuple[int, int]]:
    """The running runs, once all three run in one worker and have recorded `step` (else {})."""
    found = running_steps(sweep)
    pids = {pid for pid, _ in found.values()}
    ok = len(found) == 3 and len(pids) == 1 and all(s >= step for _, s in found.values())
    return found if ok else {}


def assert_layer_stats_complete(sweep: Sweep, log_every: int) -> None:
    """Every run has its per-layer statistics at every logging step, once (the primary key forbids twice)."""
    for run_id, steps in rows(sweep.db, "SELECT id, steps FROM runs"):
        logged = rows(sweep.db, "SELECT DISTINCT step FROM layer_stats WHERE run_id = ? ORDER BY step", run_id)
        expected = sorted({*range(log_every, steps + 1, log_every), steps})
        assert [s for (s,) in logged] == expected, f"run {run_id}: layer_stats steps"


def test_kill_9_of_a_batched_worker_then_resume(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    sweep = fault_sweep(**BUNDLE)
    proc = sweep.start()
    reap_sessions.append(proc)
    found = wait_for(lambda: all_past(sweep, 110), timeout=120, what="the bundle past its second checkpoint")
    [pid] = {pid for pid, _ in found.values()}
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)

    assert proc.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    assert_intact(sweep.db)
    assert set(sweep.statuses().values()) == {"interrupted"}, sweep.statuses()
    died = {run_id for run_id, message in events(sweep.db, "interrupted") if f"worker process {pid} died" in message}
    assert died == set(found), "every member of the killed bundle is marked interrupted"

    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_intact(sweep.db)
    assert_complete_without_duplicates(sweep.db)
    assert_layer_stats_complete(sweep, log_every=10)
    resumed = {run_id: int(m.split()[2].rstrip(";")) for run_id, m in events(sweep.db, "resumed")}
    assert set(resumed) == set(found) and all(step >= 100 for step in resumed.values()), resumed


def test_stopping_one_member_leaves_the_others_training(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    """The app's `k` on one run of a bundle: a stop request naming it, then SIGUSR1 to the worker."""
    sweep = fault_sweep(**BUNDLE)
    proc = sweep.start()
    reap_sessions.append(proc)
    found = wait_for(lambda: all_past(sweep, 60), timeout=120, what="the bundle past its first checkpoint")
    target = min(found)
    request_run_stop(found[target][0], target)

    wait_for(lambda: sweep.statuses()[target] == "interrupted", timeout=60, what="the stopped run interrupted")
    [(stopped_at,)] = rows(sweep.db, "SELECT step FROM runs WHERE id = ?", target)
    others = running_steps(sweep)
    assert set(others) == set(found) - {target}, sweep.statuses()
    wait_for(lambda: all(step > stopped_at + 100 for _, step in running_steps(sweep).values())
             or set(sweep.statuses().values()) <= {"done", "interrupted"}, timeout=120,
             what="the other members training on after the stop")
    stdout, stderr = proc.communicate(timeout=300)

    assert proc.returncode == 1, stdout + stderr  # one run did not finish
    statuses = sweep.statuses()
    assert statuses.pop(target) == "interrupted" and set(statuses.values()) == {"done"}, statuses
    [(message,)] = rows(sweep.db, "SELECT message FROM events WHERE run_id = ? AND kind = 'interrupted'", target)
    assert f"step {stopped_at}" in message, message

    out = sweep.run()  # the stopped run resumes alone, from its own checkpoint
    assert out.returncode == 0, out.stdout + out.stderr
    assert_complete_without_duplicates(sweep.db)
    assert_layer_stats_complete(sweep, log_every=10)
    resumed = [m for run_id, m in events(sweep.db, "resumed") if run_id == target]
    assert resumed and resumed[0].startswith(f"from step {stopped_at}"), resumed


def test_a_diverging_member_ends_diverged_and_the_others_finish(fault_sweep: Callable[..., Sweep]) -> None:
    sweep = fault_sweep(experiment={"workers": 1, "threads_per_worker": 1}, model={"width": 16, "depth": 2},
                        train={"optimizer": "sgd", "lr": [0.05, 1e4], "seeds": [0, 1], "steps": 200})
    out = sweep.run()
    assert out.returncode == 1, out.stdout + out.stderr
    assert_intact(sweep.db)
    by_lr = {}
    for lr, status, step, error in rows(sweep.db, "SELECT lr, status, step, error FROM runs ORDER BY id"):
        by_lr.setdefault(lr, []).append((status, step, error))
    assert {status for status, _, _ in by_lr[0.05]} == {"done"}
    for status, step, error in by_lr[1e4]:
        assert status == "diverged" and "loss" in error and step < 200, (status, step, error)
    started = {pid for (pid,) in rows(sweep.db, "SELECT DISTINCT pid FROM runs")}
    assert len(started) == 1, "all four runs trained in one worker, as one bundle"

