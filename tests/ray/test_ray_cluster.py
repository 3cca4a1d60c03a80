"""The Ray executor on a real two-node cluster (tests/ray/conftest.py): a sweep, a worker killed, a
node lost. Afterwards the database must hold every run `done`, exactly one train loss per step and
one evaluation per evaluation step (nothing lost, nothing doubled), and the killed runs must have
resumed from a checkpoint, not from scratch. The tests share one cluster and run in file order;
the last one loses the second node for good.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import assert_complete_without_duplicates, assert_intact, events, rows
from tests.ray.conftest import HOLD_STEP, Cluster, RaySweep
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

LONG = {"train": {"steps": 200, "checkpoint_every": 20, "eval_every": 50, "log_every": 10}}
#: Two runs, one per node at a time.
STOPPABLE = {"model": {"width": [8], "depth": [1, 2]}, **LONG}


def assert_finished_cleanly(out: subprocess.CompletedProcess[str], sweep: RaySweep) -> None:
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr
    assert_intact(sweep.db)
    assert_complete_without_duplicates(sweep.db)


def resumed_from(sweep: RaySweep, run_id: int) -> list[int]:
    """The steps a run resumed from, in order (`resumed` events: "from step N; ...")."""
    return [int(message.split()[2].rstrip(";")) for rid, message in events(sweep.db, "resumed") if rid == run_id]


def test_a_sweep_of_bundles_runs_on_both_nodes_through_one_writer(
        cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    sweep = ray_sweep(model={"width": [8, 16], "depth": [1]}, train={"seeds": [0, 1]})  # 2 bundles of 2 seeds
    out = sweep.run()
    assert_finished_cleanly(out, sweep)
    runs = sweep.hosts_and_pids()
    assert len(runs) == 4
    assert {host for _, host, _ in runs} == {socket.gethostname()}  # the node's hostname (both are this machine)
    pids = {pid for _, _, pid in runs}
    assert len(pids) == 2, f"4 runs in 2 bundles, one worker each: {runs}"
    assert len(pids & cluster.second_node_pids()) == 1, f"not one bundle per node: {runs}"  # 2 tasks, 2 one-CPU nodes


def kill_when_parked(cluster: Cluster, sweep: RaySweep, kill: Callable[[int], None]
                     ) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Start the sweep, wait until a run on the second node parks in its checkpoint of HOLD_STEP,
    `kill(its pid)`, and let the sweep finish; its result and the ids of the parked worker's runs."""
    cluster.rearm()
    proc = sweep.start()
    try:
        pid = wait_for(cluster.parked_pid, timeout=180, what="a run on the second node to park in a checkpoint")
        victims = [run_id for (run_id,) in rows(sweep.db, "SELECT id FROM runs WHERE pid = ?", pid)]
        kill(pid)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), victims


def test_a_killed_worker_s_run_is_retried_and_resumes(cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    sweep = ray_sweep(**LONG)
    out, victims = kill_when_parked(cluster, sweep, lambda pid: os.kill(pid, signal.SIGKILL))
    assert_finished_cleanly(out, sweep)
    assert len(victims) == 1
    interrupted = [message for run_id, message in events(sweep.db, "interrupted") if run_id == victims[0]]
    assert len(interrupted) == 1 and "lost its Ray worker (WorkerCrashedError)" in interrupted[0], interrupted
    assert resumed_from(sweep, victims[0]) == [HOLD_STEP - 20]  # the checkpoint before the torn one


def test_a_cluster_too_small_for_a_run_is_one_line_and_exit_2(ray_sweep: Callable[..., RaySweep]) -> None:
    for sections, expected in [
        ({"experiment": {"threads_per_worker": 2}}, "experiment.threads_per_worker: a run needs 2 CPUs on one node"),
        ({"train": {"device": "cuda"}}, 'train.device: "cuda" asks for a GPU, but no node of the Ray cluster has one'),
    ]:
        sweep = ray_sweep(**sections)
        out = sweep.run()
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.startswith(f"error: experiments.toml: {expected}"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not sweep.db.exists(), "a database was written before the cluster was checked"


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stopped_by(cluster: Cluster, sweep: RaySweep, stop: Callable[[subprocess.Popen[str]], None], at: int
               ) -> tuple[int | None, str, list[int]]:
    """Start the sweep, wait until both its runs pause in their checkpoint of step `at`, `stop` the
    driver; its exit code, stderr, and the paused workers' pids."""
    cluster.pause_at(at)
    proc = sweep.start()
    try:
        wait_for(lambda: len(cluster.paused_pids()) == 2 or proc.poll() is not None, timeout=180,
                 what=f"both runs to pause at step {at}")
        assert proc.poll() is None, f"the sweep ended first:\n{proc.communicate()}"
        paused = cluster.paused_pids()
        stop(proc)
        _, stderr = proc.communicate(timeout=120)
    finally:
        cluster.pause_at(None)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, stderr, paused


def test_ctrl_c_stops_cleanly_a_killed_driver_is_reaped_and_reruns_resume(
        cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    sweep = ray_sweep(**STOPPABLE)
    # Ctrl-C (SIGINT to the driver alone): the workers hear of it through the writer, checkpoint, stop.
    code, stderr, _ = stopped_by(cluster, sweep, lambda proc: proc.send_signal(signal.SIGINT), at=60)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert dict(rows(sweep.db, "SELECT id, status FROM runs")) == {1: "interrupted", 2: "interrupted"}
    stopped_at = dict(rows(sweep.db, "SELECT id, step FROM runs"))
    # The driver killed: Ray ends its tasks; the next sweep reaps the runs (their processes are gone).
    code, _, paused = stopped_by(cluster, sweep, lambda proc: os.killpg(proc.pid, signal.SIGKILL), at=120)
    assert code == -signal.SIGKILL
    assert dict(rows(sweep.db, "SELECT id, status FROM runs")) == {1: "running", 2: "running"}
    for pid in paused:
        wait_for(lambda pid=pid: pid_gone(pid), timeout=120, what=f"Ray to end the dead driver's worker {pid}")
    assert_finished_cleanly(sweep.run(), sweep)
    reaped = {run_id for run_id, message in events(sweep.db, "interrupted") if "is gone" in message}
    assert reaped == {1, 2}
    for run_id, step in stopped_at.items():
        assert resumed_from(sweep, run_id) == [60, 100], (run_id, step)  # 120's checkpoint was torn by the kill


def writer_pid(cluster: Cluster) -> int | None:
    """The pid of the sweep's record writer (its process title is `ray::RecordWriter...`), on the head."""
    for pid in cluster.head.pids():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RecordWriter"):
                return pid
        except OSError:
            continue
    return None


def test_a_dead_writer_stops_the_sweep_in_one_line_and_a_rerun_resumes(
        cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    sweep = ray_sweep(**STOPPABLE)
    code, stderr, _ = stopped_by(cluster, sweep, lambda proc: os.kill(wait_for(lambda: writer_pid(cluster)),
                                                                      signal.SIGKILL), at=60)
    assert code == 3, stderr  # the database cannot be written: EXIT_STORAGE
    assert stderr.startswith("error: ") and "its writer, a Ray actor on this node, died" in stderr, stderr
    assert "Traceback" not in stderr
    assert_finished_cleanly(sweep.run(), sweep)


def test_a_lost_node_s_bundle_finishes_on_the_head(cluster: Cluster, ray_sweep: Callable[..., RaySweep]) -> None:
    bundles = {"model": {"width": [8], "depth": [1]}, "train": {**LONG["train"], "seeds": [0, 1, 2, 3]}}
    sweep = ray_sweep(**bundles)  # 4 runs of one shape: 2 bundles of 2, one per node
    out, victims = kill_when_parked(cluster, sweep, lambda pid: cluster.worker.kill())  # the whole node
    assert_finished_cleanly(out, sweep)
    assert len(victims) == 2, "the parked worker trained a bundle of two runs"
    final = {run_id: pid for run_id, _, pid in sweep.hosts_and_pids()}
    assert not {final[run_id] for run_id in victims} & cluster.second_node_pids(), "they did not finish on the head"
    for run_id in victims:
        interrupted = [message for rid, message in events(sweep.db, "interrupted") if rid == run_id]
        assert len(interrupted) == 1 and "lost its Ray worker" in interrupted[0], interrupted
        assert resumed_from(sweep, run_id)[-1] in (HOLD_STEP - 20, HOLD_STEP)  # one member may have checkpointed
