"""How much of the machine's matmul peak does a real scaletui sweep achieve?

1. Peak: the same number of processes as the sweep has workers, each single-threaded
   (as the workers are), multiply float32 square matrices at the same time; the
   peak is the sum of their rates. Measured at the start, in the same run.
2. Achieved: a width >= 256 sweep (8 runs: widths 512/1024 x depths 2/4 x 2 seeds) through the real path (`run_sweep`: spawn workers,
   per-layer statistics, records written to SQLite). Training FLOPs are counted as
   6 x params x batch per step (forward + backward), summed over every run, divided
   by the sweep's wall time (process start-up and evaluation included: that is what a
   user waits for).

Goal: at least 60% of peak.

    python benchmarks/throughput.py [--workers 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import tempfile
import time
from pathlib import Path

from scaletui.config import build_sweep
from scaletui.runner import run_sweep


def _matmul_rate(n: int, seconds: float, out: mp.Queue) -> None:  # runs in a child process
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    out.put(2 * n**3 * count / (time.perf_counter() - start))


def matmul_peak(processes: int, n: int = 1024, seconds: float = 4.0) -> float:
    """Sum of concurrent single-threaded float32 matmul rates, FLOP/s."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_matmul_rate, args=(n, seconds, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def sweep_doc(root: Path, workers: int, steps: int) -> dict:
    return {
        "experiment": {"name": "throughput", "db": str(root / "bench.db"), "data_dir": str(root / "data"),
                       "checkpoint_dir": str(root / "ckpt"), "workers": workers, "threads_per_worker": 1},
        "data": {"dataset": "mnist1d"},
        "model": {"arch": "mlp", "width": [512, 1024], "depth": [2, 4]},
        "train": {"optimizer": "adam", "lr": 1e-4, "batch_size": 256, "steps": steps, "eval_every": steps,
                  "checkpoint_every": steps, "seeds": [0, 1]},
    }


def achieved(db: Path, batch: int) -> tuple[float, int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select params, step from runs where status = 'done'").fetchall()
    return sum(6 * params * batch * step for params, step in rows), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = sweep_doc(root, args.workers, args.steps)
        sweep = build_sweep(doc, root / "throughput.toml")
        peak = matmul_peak(args.workers)
        print(f"matmul peak ({args.workers} single-threaded processes, 1024^3 float32): {peak / 1e9:.1f} GFLOP/s")
        from scaletui.runner import prepare_datasets

        prepare_datasets(sweep)  # dataset generation is not training: keep it out of the timing
        start = time.perf_counter()
        result = run_sweep(sweep)
        wall = time.perf_counter() - start
        flops, n_done = achieved(sweep.db, doc["train"]["batch_size"])
        rate = flops / wall
        print(f"sweep: {n_done}/{len(sweep.runs)} runs done (exit {result.exit_code}) in {wall:.1f} s, "
              f"widths 512/1024 x depths 2/4 x 2 seeds, batch 256, {args.steps} steps each")
        print(f"achieved: {rate / 1e9:.1f} GFLOP/s = {rate / peak:.0%} of peak (goal >= 60%)")


if __name__ == "__main__":
    main()
