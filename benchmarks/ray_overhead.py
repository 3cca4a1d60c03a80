"""What running on Ray costs per run, and whether it changes a single number (issue 17).

The same 8-run sweep (MLPs on MNIST-1D, widths x depths x 2 seeds, one thread per run), in one
process, through the real path (`run_sweep`), each time in a fresh database:

1. local: the local executor, 2 workers;
2. ray: a two-node Ray cluster started here (a head and a second node, 1 CPU each, their own temp
   dirs and ports, the second on 127.0.0.2), joined at the head's address: 2 runs at a time too.

Per-run overhead: a worker slot's seconds per run spent outside runs (wall x slots minus the runs'
own started-to-finished times, over the runs: start-up, joining and checking the cluster, the writer
actor, scheduling), Ray's minus the local executor's. Goal: <= 5% of a 20-second run (the default
sizing makes a run take 10-20 s on one core). The plain wall-clock difference per run is printed too;
it also holds any difference in training speed inside the runs (on the 2-core machine this was
written on, runs trained faster in Ray's worker processes than in the local executor's). Losses:
every run's final train and test loss must be identical under both executors (same seeds, threads).

The cluster's processes are stopped by their process group at the end, never with `ray stop`.

    python benchmarks/ray_overhead.py [--steps 2000] [--width 256] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scaletui.core.config import build_sweep
from scaletui.services.runner import prepare_datasets, run_sweep

RAY = str(Path(sys.executable).parent / "ray")
SLOTS = 2  # runs at a time under both executors


def sweep_doc(root: Path, data_dir: Path, steps: int, width: int) -> dict[str, Any]:
    return {
        "experiment": {"name": "ray-overhead", "db": str(root / "runs.db"), "data_dir": str(data_dir),
                       "checkpoint_dir": str(root / "checkpoints"), "workers": SLOTS, "threads_per_worker": 1,
                       "batch_runs": False},
        "data": {"dataset": "mnist1d"},
        "model": {"arch": "mlp", "width": [width // 2, width], "depth": [2, 3]},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "steps": steps, "eval_every": 250,
                  "log_every": 25, "checkpoint_every": 500, "seeds": [0, 1]},
    }


def run_once(root: Path, doc: dict[str, Any], ray_address: str | None) -> tuple[float, Path]:
    """One sweep in a fresh database; its wall time and database."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    doc = {**doc, "experiment": {**doc["experiment"], "db": str(root / "runs.db"),
                                 "checkpoint_dir": str(root / "checkpoints")}}
    if ray_address:
        doc["experiment"].update(executor="ray", ray_address=ray_address)
    sweep = build_sweep(doc, root / "experiments.toml")
    start = time.perf_counter()
    result = run_sweep(sweep)
    wall = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"the {'ray' if ray_address else 'local'} sweep did not finish: {result.statuses}")
    return wall, sweep.db


def run_seconds(db: Path) -> list[float]:
    """Each run's training time (started to finished), from the database."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT (julianday(finished_at) - julianday(started_at)) * 86400 FROM runs").fetchall()
    return [float(r[0]) for r in rows]


def final_losses(db: Path) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(db) as conn:
        return {str(k): (a, b) for k, a, b in conn.execute("SELECT key, final_train_loss, final_test_loss FROM runs")}


# --------------------------------------------------------------------------- a local two-node cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(args: list[str], temp_dir: Path, sessions: list[int]) -> None:
    # Token authentication off: a head that finds ~/.ray/auth_token turns it on, and this driver and the
    # second node would then need the token too.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([RAY, "start", *args, "--temp-dir", str(temp_dir), "--disable-usage-stats"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sessions.append(proc.pid)  # every process of the node is in this session
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"ray start failed:\n{out[-2000:]}")


def start_cluster(temp: Path, sessions: list[int]) -> str:
    port = free_port()
    start_node(["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())],
               temp / "head", sessions)
    start_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--node-ip-address", "127.0.0.2",
                "--dashboard-agent-listen-port", str(free_port())], temp / "node", sessions)
    return f"127.0.0.1:{port}"


def stop_cluster(sessions: list[int]) -> None:
    for session in sessions:
        try:
            os.killpg(session, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- main
def main() -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the nodes (see start_node)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="steps per run (default sized for ~20 s a run)")
    parser.add_argument("--width", type=int, default=256, help="the larger width (the smaller is half)")
    parser.add_argument("--rounds", type=int, default=1, help="local+ray pairs, alternating order")
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="rayb", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    sessions: list[int] = []
    try:
        doc = sweep_doc(temp, temp / "data", args.steps, args.width)
        prepare_datasets(build_sweep(doc, temp / "experiments.toml"))
        address = start_cluster(temp, sessions)
        report(temp, doc, address, args.rounds)
    finally:
        stop_cluster(sessions)
        shutil.rmtree(temp, ignore_errors=True)


def report(temp: Path, doc: dict[str, Any], address: str, rounds: int) -> None:
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    durations: dict[str, list[float]] = {"local": [], "ray": []}
    losses: dict[str, dict[str, tuple[float, float]]] = {}
    for r in range(rounds):
        for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            load = os.getloadavg()[0]
            wall, db = run_once(temp / kind, doc, address if kind == "ray" else None)
            walls[kind].append(wall)
            durations[kind] += run_seconds(db)
            same = losses.setdefault(kind, final_losses(db)) == final_losses(db)
            print(f"round {r + 1} {kind:<5}: {wall:7.1f} s wall (load {load:.1f} before){'' if same else ' (!)'}")
    runs = len(losses["local"])
    outside = {}
    for kind in walls:
        wall, mean_run = min(walls[kind]), sum(durations[kind]) / len(durations[kind])
        outside[kind] = (wall * SLOTS - mean_run * runs) / runs  # a slot's seconds per run not spent in a run
        print(f"{kind:<5}: best wall {wall:.1f} s; mean run {mean_run:.1f} s (started to finished); "
              f"{outside[kind]:.2f} s per run outside runs (start-up, scheduling, waiting)")
    per_run = (min(walls["ray"]) - min(walls["local"])) / (runs / SLOTS)
    added = outside["ray"] - outside["local"]
    print(f"Ray adds {added:+.2f} s per run outside training = {100 * added / 20:+.1f}% of a 20-second run "
          f"(goal <= 5%); wall clock: {per_run:+.2f} s per run ({runs} runs, {SLOTS} at a time)")
    identical = losses["local"] == losses["ray"]
    print(f"final train and test losses identical for identical seeds: {'yes' if identical else 'NO'}")
    if not identical:
        for key, pair in losses["local"].items():
            if losses["ray"].get(key) != pair:
                print(f"  {key}: local {pair}, ray {losses['ray'].get(key)}")


if __name__ == "__main__":
    main()
