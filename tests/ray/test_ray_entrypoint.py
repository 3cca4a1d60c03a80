"""`train.entrypoint` sweeps on a real two-node Ray cluster (tests/ray/conftest.py), through the CLI.

The user's function runs on both nodes; its records travel to the executor's writer and are written
there by the store's code. Afterwards the database must hold, for every run, exactly one row per step
the function logged (nothing lost, nothing doubled, a resumed run included), the node's hostname, and
the experiment's loss; a function that raises fails its run alone; a worker killed mid-run is retried
and resumes from the function's own checkpoint; Ctrl-C on the driver leaves the runs `interrupted`
and the next sweep resumes them where their records end.

The function is pure Python (a JSON checkpoint in `run.checkpoint_dir`), so the tests time Ray and
scaletui, not torch. It parks at known steps when the test leaves a marker file, instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.faults.conftest import assert_intact, events, rows
from tests.ray.conftest import Cluster, ended, ray_env
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

STEPS = 30
FUNCTION = '''
import json, os, time
from pathlib import Path

def train(config, run):
    """`cost` = gain / width + 1 / (step + 1); raises at step 3 for gain 13; NaN from step 20 for a
    negative gain. Checkpoints every 5 steps
    (after `run.flush()`, so the checkpoint never refers to records that could still be lost). Parks
    after its checkpoint of step 14 when the test left `park` (the first run only: `parked` holds its
    pid), and at step 7 while `hold` exists and it is not asked to stop. A resumed run leaves
    `resumed-<run id>-<first step>`."""
    marks = Path(config["marks"])
    state = run.checkpoint_dir / "state.json"
    start = 0
    if run.last_step is not None and state.exists():
        start = json.loads(state.read_text())["step"] + 1
        (marks / f"resumed-{run.id}-{start}").touch()
    for step in range(start, config["steps"]):
        if run.should_stop:
            return
        if config["gain"] == 13 and step == 3:
            raise ValueError("unlucky gain\\nsecond line")
        blown = config["gain"] < 0 and step >= 20
        run.log({"train_loss": float("nan") if blown else 1.0 / (step + 1),
                 "cost": float("nan") if blown else config["gain"] / config["width"] + 1.0 / (step + 1)}, step=step)
        if step % 5 == 4:
            run.flush()
            state.write_text(json.dumps({"step": step}))
            if step == 14 and (marks / "park").exists():
                try:
                    fd = os.open(marks / "parked", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    while True:
                        time.sleep(3600)
        if step == 7 and (marks / "hold").exists():
            (marks / f"held-{run.id}").touch()
            while (marks / "hold").exists() and not run.should_stop:
                time.sleep(0.01)
    run.summary(params=10 * config["width"])
'''


def write_sweep(folder: Path, *, gains: list[float], seeds: list[int]) -> Path:
    """An entrypoint sweep over width x seed x gain of FUNCTION, in `folder` (which every node reaches)."""
    (folder / "train.py").write_text(FUNCTION, encoding="utf-8")
    (folder / "marks").mkdir(exist_ok=True)
    text = textwrap.dedent(f'''
        [experiment]
        name = "entry"
        loss = "cost"
        checkpoint_dir = "{folder / 'checkpoints'}"
        threads_per_worker = 1

        [train]
        entrypoint = "train.py:train"
        steps = {STEPS}
        seeds = {json.dumps(seeds)}

        [model]
        width = [4, 8]

        [user]
        gain = {json.dumps(gains)}
        marks = "{folder / 'marks'}"
        ''')
    path = folder / "experiments.toml"
    path.write_text(text, encoding="utf-8")
    return path


def command(path: Path, db: Path, cluster: Cluster) -> list[str]:
    return [sys.executable, "-m", "scaletui", "run", "--headless", str(path), "--db", str(db), "--executor", "ray",
            "--ray-address", cluster.address]


def start(path: Path, db: Path, cluster: Cluster) -> subprocess.Popen[str]:
    return subprocess.Popen(command(path, db, cluster), cwd=REPO, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


SWEEP_TIMEOUT = 180  # seconds a driver may take on the loopback cluster


def assert_one_row_per_step(db: Path, run_id: int, last: int) -> None:
    """Steps 0..last of both metrics, each exactly once."""
    for key in ("train_loss", "cost"):
        steps = [s for (s,) in rows(db, "SELECT step FROM metrics WHERE run_id = ? AND key = ? ORDER BY step",
                                    run_id, key)]
        assert steps == list(range(last + 1)), f"run {run_id}: {key} steps {steps}"


def runs_by_id(db: Path) -> dict[int, dict[str, Any]]:
    columns = ("id", "status", "error", "host", "pid", "width", "step", "final_test_loss", "params",
               "user_config_json", "source")
    found = rows(db, f"SELECT {', '.join(columns)} FROM runs ORDER BY id")
    return {row[0]: dict(zip(columns, row, strict=True)) for row in found}


def test_an_entrypoint_sweep_runs_on_both_nodes_and_a_raising_run_fails_alone(
        cluster: Cluster, tmp_path: Path) -> None:
    path, db = write_sweep(tmp_path, gains=[1.0, 13, -1], seeds=[0]), tmp_path / "runs.db"
    out = ended(start(path, db, cluster), SWEEP_TIMEOUT)
    assert out.returncode == 1, out.stdout + out.stderr  # a run failed: not a clean sweep
    assert "Traceback" not in out.stderr
    assert_intact(db)
    runs = runs_by_id(db)
    assert len(runs) == 6
    for run in runs.values():
        assert run["source"] == "entrypoint"
        assert run["host"] == socket.gethostname()  # the node's hostname (both nodes are this machine)
        gain = json.loads(run["user_config_json"])["gain"]
        if gain == 13:
            assert (run["status"], run["error"], run["step"]) == ("failed", "ValueError: unlucky gain", 2)
            assert_one_row_per_step(db, run["id"], 2)
        elif gain < 0:  # its live alert was computed on the node and written by the writer
            assert (run["status"], run["error"]) == ("diverged", f"cost is nan at step {STEPS - 1}"), run
            assert_one_row_per_step(db, run["id"], STEPS - 1)
            assert rows(db, "SELECT COUNT(*) FROM alerts WHERE run_id = ? AND kind = 'divergence' AND active = 1",
                        run["id"]) == [(1,)]
        else:
            assert (run["status"], run["error"], run["step"], run["params"]) == ("done", None, STEPS - 1,
                                                                                 10 * run["width"])
            assert run["final_test_loss"] == pytest.approx(1.0 / run["width"] + 1.0 / STEPS)  # the loss is `cost`
            assert_one_row_per_step(db, run["id"], STEPS - 1)
    assert rows(db, "SELECT loss_metric, higher_is_better FROM experiments") == [("cost", 0)]
    pids = {run["pid"] for run in runs.values()}
    assert pids & cluster.second_node_pids() and pids - cluster.second_node_pids(), f"not on both nodes: {runs}"


def test_a_killed_worker_s_entrypoint_run_is_retried_and_resumes_from_its_checkpoint(
        cluster: Cluster, tmp_path: Path) -> None:
    path, db = write_sweep(tmp_path, gains=[1.0], seeds=[0]), tmp_path / "runs.db"
    marks = tmp_path / "marks"
    (marks / "park").touch()
    proc = start(path, db, cluster)
    try:
        pid = wait_for(lambda: (marks / "parked").exists() and (marks / "parked").read_text(), timeout=120,
                       what="a run to park after its checkpoint of step 14")
        victim, = [run_id for (run_id,) in rows(db, "SELECT id FROM runs WHERE pid = ?", int(pid))]
        os.kill(int(pid), signal.SIGKILL)
    finally:
        out = ended(proc, SWEEP_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_intact(db)
    for run in runs_by_id(db).values():
        assert run["status"] == "done", run
        assert_one_row_per_step(db, run["id"], STEPS - 1)
    interrupted = [message for run_id, message in events(db, "interrupted") if run_id == victim]
    assert len(interrupted) == 1 and "lost its Ray worker (WorkerCrashedError)" in interrupted[0], interrupted
    assert len([rid for rid, _ in events(db, "started") if rid == victim]) == 2
    assert [p.name for p in marks.glob("resumed-*")] == [f"resumed-{victim}-15"]  # from its checkpoint, not step 0


def test_ctrl_c_leaves_entrypoint_runs_interrupted_and_the_next_sweep_resumes_them(
        cluster: Cluster, tmp_path: Path) -> None:
    path, db = write_sweep(tmp_path, gains=[1.0], seeds=[0]), tmp_path / "runs.db"
    marks = tmp_path / "marks"
    (marks / "hold").touch()
    proc = start(path, db, cluster)
    try:
        wait_for(lambda: len(list(marks.glob("held-*"))) == 2 or proc.poll() is not None, timeout=120,
                 what="two runs to hold at step 7")
        assert proc.poll() is None, f"the sweep ended first:\n{proc.communicate()}"
        proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver alone: the workers hear it through the writer
    finally:
        out = ended(proc, SWEEP_TIMEOUT)
    assert out.returncode == 130, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    statuses = sorted(status for (status,) in rows(db, "SELECT status FROM runs"))
    assert statuses == ["interrupted", "interrupted"], statuses  # each checkpointed and returned
    (marks / "hold").unlink()
    out = ended(start(path, db, cluster), SWEEP_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    for run in runs_by_id(db).values():
        assert run["status"] == "done", run
        assert_one_row_per_step(db, run["id"], STEPS - 1)
    assert len([m for _, m in events(db, "resumed") if m == "after step 7"]) == 2
