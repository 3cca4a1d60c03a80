"""A real two-node Ray cluster on this machine, for the Ray executor's tests: no mocks.

The head (`ray start --head`, 1 CPU) and a second node (`ray start --address 127.0.0.1:PORT`, 1 CPU,
node IP 127.0.0.2 so the driver, which joins the node of its own IP, always sits on the head) each
start in a session of their own with their own temp dir and free ports. Every process of a node
is in its session, so a node is stopped, or "lost", by SIGKILL to its process group: never with
`ray stop`, which would stop every Ray on the machine, other sessions' included.

Both nodes import tests/ray/inject/sitecustomize.py: on the second node the first run to checkpoint
`HOLD_STEP` parks mid-write, which gives the fault tests a worker (and a node) to kill at a known
point whatever the machine's speed; `Cluster.pause_at` makes every run wait in a checkpoint until
its stop signal is set, for the tests that stop or kill the driver.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, tiny_sweep, write_toml
from tests.faults.conftest import rows

try:
    import ray  # noqa: F401  (only whether it imports)

    RAY_MISSING = None
except ImportError:
    RAY_MISSING = "ray is not installed (pip install -e '.[ray]' or '.[test]')"

RAY = str(Path(sys.executable).parent / "ray")
INJECT = Path(__file__).parent / "inject"
HOLD_STEP = 100  # the checkpoint a run on the second node parks in (fault tests train past it)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of the test's nodes and drivers: no other cluster joined by accident (RAY_ADDRESS),
    no usage reports, and token authentication off: Ray turns it on for a head that finds a token in
    ~/.ray/auth_token (which a plain `ray.init()` writes), and the second node would be refused."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayNode:
    """One `ray start`: its session (= process group) id and temp dir."""

    session: int
    temp_dir: Path

    def pids(self) -> set[int]:
        """Pids of the node's processes still alive (its session's members)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == self.session:
                        found.add(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    continue
        return found

    def kill(self) -> None:
        """SIGKILL every process of the node at once: a lost machine."""
        try:
            os.killpg(self.session, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_node(args: list[str], temp_dir: Path, env: dict[str, str]) -> RayNode:
    """`ray start ARGS` in a session of its own; fail the test with Ray's output if it does not start."""
    proc = subprocess.Popen([RAY, "start", *args, "--temp-dir", str(temp_dir), "--disable-usage-stats"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    node = RayNode(proc.pid, temp_dir)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        node.kill()
        out, _ = proc.communicate()
    if proc.returncode != 0:
        node.kill()
        pytest.fail(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")
    return node


@dataclass
class Cluster:
    """The head, the second node, and where the tests' fault markers go."""

    address: str
    head: RayNode
    worker: RayNode
    marks: Path
    nodes: list[RayNode] = field(default_factory=list)

    def parked_pid(self) -> int | None:
        """The pid of the worker parked by the hold, once it is parked."""
        try:
            text = (self.marks / "parked").read_text()
        except FileNotFoundError:
            return None
        return int(text) if text else None

    def second_node_pids(self) -> set[int]:
        """Every process ever started on the second node (its sitecustomize leaves `node-<pid>`)."""
        return {int(path.name.split("-", 1)[1]) for path in self.marks.glob("second-*")}

    def pause_at(self, step: int | None) -> None:
        """From now on, every run (on either node) pauses in its checkpoint of `step` until it is told
        to stop (None: no more pauses); forget which processes paused before."""
        for marker in self.marks.glob("paused-*"):
            marker.unlink()
        if step is None:
            (self.marks / "pause_at").unlink(missing_ok=True)
        else:
            (self.marks / "pause_at").write_text(str(step))

    def paused_pids(self) -> list[int]:
        return sorted(int(path.name.split("-", 1)[1]) for path in self.marks.glob("paused-*"))

    def rearm(self) -> None:
        """Let the next run on the second node park again."""
        (self.marks / "parked").unlink(missing_ok=True)

    def disarm(self) -> None:
        """No run parks (an empty `parked` file: taken, by nobody)."""
        (self.marks / "parked").unlink(missing_ok=True)
        (self.marks / "parked").touch()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A two-node cluster for the whole module, stopped (by process group) even when a test fails."""
    if RAY_MISSING:
        pytest.skip(RAY_MISSING)
    root = Path(tempfile.mkdtemp(prefix="str", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    marks = root / "marks"
    marks.mkdir()
    started: list[RayNode] = []
    cluster = Cluster(f"127.0.0.1:{port}", None, None, marks, started)  # type: ignore[arg-type]
    try:
        inject = {"PYTHONPATH": os.pathsep.join([str(INJECT), str(REPO)]), "SCALETUI_FAULT_MARKS": str(marks)}
        started.append(start_node(["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                                   "false", "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port",
                                   str(free_port())], root / "head", ray_env(**inject)))
        second = {**inject, "SCALETUI_RAY_NODE_TAG": "second", "SCALETUI_RAY_HOLD": str(HOLD_STEP)}
        started.append(start_node(["--address", cluster.address, "--num-cpus", "1", "--node-ip-address",
                                   "127.0.0.2", "--dashboard-agent-listen-port", str(free_port())],
                                  root / "node", ray_env(**second)))
        cluster.head, cluster.worker = started
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RaySweep:
    """A tiny sweep file set to run on the cluster, and ways to run it as the real CLI."""

    path: Path
    db: Path
    checkpoints: Path
    address: str

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "scaletui", "run", "--headless", str(self.path), "--executor", "ray",
                "--ray-address", self.address, *args]

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), cwd=REPO, env=ray_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return ended(self.start(*args), timeout)

    def hosts_and_pids(self) -> list[tuple[int, str, int]]:
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows(self.db, "SELECT id, host, pid FROM runs ORDER BY id")]


@pytest.fixture
def ray_sweep(tmp_path: Path, shared_data_dir: Path, cluster: Cluster) -> Callable[..., RaySweep]:
    """Write a tiny sweep (per-section overrides as in tests.conftest.tiny_sweep) for the cluster."""

    def make(**sections: dict[str, Any]) -> RaySweep:
        cluster.disarm()  # a test that wants a run parked re-arms the hold itself
        sections.setdefault("experiment", {})
        sections["experiment"] = {"threads_per_worker": 1, "workers": 2, **sections["experiment"]}  # a task per node
        doc = tiny_sweep(tmp_path, shared_data_dir, **sections)
        path = write_toml(tmp_path / "experiments.toml", doc)
        return RaySweep(path, tmp_path / "runs.db", tmp_path / "checkpoints", cluster.address)

    return make


def ended(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for a driver started in its own session; on overstaying, kill the session and fail with its
    output. Its session is killed in any case, so no worker it left behind outlives the test."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the sweep did not end within {timeout} s:\n{stdout}\n{stderr}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
