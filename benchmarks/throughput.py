"""How much of the machine does a real scaletui sweep use, and how many runs per hour does batching add?

1. Peak: the same number of processes as the sweep has workers, each single-threaded
   (as the workers are), multiply float32 square matrices at the same time; the
   peak is the sum of their rates. Measured at the start, in the same run.
2. Achieved: a sweep through the real path (`run_sweep`: spawn workers, per-layer
   statistics, records written to SQLite). Training FLOPs are counted as
   6 x params x batch per step (forward + backward), summed over every run, divided
   by the sweep's wall time (process start-up and evaluation included: that is what a
   user waits for).

Without --sweep: a width >= 256 sweep (8 runs: widths 512/1024 x depths 2/4 x 2 seeds), goal at
least 60% of peak.

With --sweep FILE: that sweep, trained unbatched (`experiment.batch_runs = false`) and batched
(`"auto"`) in this one process, same machine, same workers, alternating (unbatched, batched,
batched, unbatched, ... for --repeat rounds) so a change in the machine's load hits both; each in a
fresh database. Prints runs per hour of each, their ratio (goal >= 1.7x on 2 CPU cores), the
fraction of the matmul peak, the load average (`uptime`) around each, and the per-size table of
final test losses of both with the seed spread. `--set KEY=VALUE` overrides a key of the file
(TOML value), e.g. `--set model.width=[256]` for a width-256 sweep.

    python benchmarks/throughput.py [--workers 2] [--steps 300]
    python benchmarks/throughput.py --sweep experiments.toml [--set model.width=[256]] [--repeat 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scaletui.core.config import build_sweep
from scaletui.services.runner import prepare_datasets, run_sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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


def achieved(db: Path) -> tuple[float, int]:
    """Training FLOPs of the finished runs (6 x params x batch x steps) and how many finished."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select params, batch_size, step from runs where status in ('done', 'early_stopped')"
                            ).fetchall()
    return sum(6 * params * batch * step for params, batch, step in rows), len(rows)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- the original benchmark


def peak_fraction_main(workers: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = sweep_doc(root, workers, steps)
        sweep = build_sweep(doc, root / "throughput.toml")
        peak = matmul_peak(workers)
        print(f"matmul peak ({workers} single-threaded processes, 1024^3 float32): {peak / 1e9:.1f} GFLOP/s")
        prepare_datasets(sweep)  # dataset generation is not training: keep it out of the timing
        start = time.perf_counter()
        result = run_sweep(sweep)
        wall = time.perf_counter() - start
        flops, n_done = achieved(sweep.db)
        rate = flops / wall
        print(f"sweep: {n_done}/{len(sweep.runs)} runs done (exit {result.exit_code}) in {wall:.1f} s, "
              f"widths 512/1024 x depths 2/4 x 2 seeds, batch 256, {steps} steps each")
        print(f"achieved: {rate / 1e9:.1f} GFLOP/s = {rate / peak:.0%} of peak (goal >= 60%)")


# --------------------------------------------------------------------------- --sweep: batched vs unbatched


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """`section.key=TOML value` into the sweep document."""
    dotted, _, value = assignment.partition("=")
    section, _, key = dotted.rpartition(".")
    if not section or not value:
        raise SystemExit(f"--set {assignment!r}: expected section.key=value")
    doc.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]


def timed_sweep(doc: dict[str, Any], root: Path, name: str, batch_runs: bool, workers: int | None) -> dict[str, Any]:
    """Run the sweep once in a fresh database; its wall time, runs done, training FLOPs and losses."""
    doc = {section: dict(values) for section, values in doc.items()}
    doc["experiment"].update(db=str(root / f"{name}.db"), checkpoint_dir=str(root / f"{name}-ckpt"),
                             batch_runs="auto" if batch_runs else False)
    if workers:
        doc["experiment"]["workers"] = workers
    sweep = build_sweep(doc, root / "sweep.toml")
    load_before = load_average()
    start = time.perf_counter()
    result = run_sweep(sweep)
    wall = time.perf_counter() - start
    flops, n_done = achieved(sweep.db)
    with sqlite3.connect(sweep.db) as conn:
        losses = conn.execute("select width, depth, lr, seed, final_test_loss from runs").fetchall()
    return {"wall": wall, "done": n_done, "runs": len(sweep.runs), "flops": flops, "exit": result.exit_code,
            "load": f"{load_before} -> {load_average()}", "losses": losses, "workers": sweep.workers,
            "threads": sweep.threads_per_worker}


def loss_table(unbatched: list[tuple[Any, ...]], batched: list[tuple[Any, ...]]) -> list[str]:
    """Per size (width, depth, lr): mean final test loss of each mode, their difference, the seed sd."""
    def by_size(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[float]]:
        out: dict[tuple[Any, ...], list[float]] = {}
        for width, depth, lr, _, loss in rows:
            if loss is not None:
                out.setdefault((width, depth, lr), []).append(loss)
        return out

    a, b = by_size(unbatched), by_size(batched)
    lines = [f"{'width':>6} {'depth':>5} {'lr':>8} {'unbatched':>10} {'batched':>10} {'diff':>8} {'seed sd':>8}"]
    for size in sorted(a):
        if size not in b:
            continue
        mean_a, mean_b = statistics.fmean(a[size]), statistics.fmean(b[size])
        sd = statistics.stdev(a[size]) if len(a[size]) > 1 else float("nan")
        lines.append(f"{size[0]:>6} {size[1]:>5} {size[2]:>8.3g} {mean_a:>10.4f} {mean_b:>10.4f} "
                     f"{mean_b - mean_a:>+8.4f} {sd:>8.4f}")
    return lines


def sweep_main(path: Path, overrides: list[str], steps: int | None, repeat: int, workers: int | None) -> None:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    for assignment in overrides:
        apply_override(doc, assignment)
    if steps:
        doc.setdefault("train", {})["steps"] = steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc.setdefault("experiment", {})
        data_dir = Path(doc["experiment"].get("data_dir", "runs/data"))
        doc["experiment"]["data_dir"] = str(data_dir if data_dir.is_dir() else root / "data")
        probe = build_sweep({**doc, "experiment": {**doc["experiment"], "db": str(root / "probe.db")}},
                            root / "sweep.toml")
        n_workers = workers or probe.workers
        print(f"sweep {path} {' '.join(overrides)}: {len(probe.runs)} runs, {n_workers} workers x "
              f"{probe.threads_per_worker} threads, {os.cpu_count()} CPUs; load average {load_average()}")
        peak = matmul_peak(n_workers)
        print(f"matmul peak ({n_workers} single-threaded processes, 1024^3 float32): {peak / 1e9:.1f} GFLOP/s")
        prepare_datasets(probe)  # dataset generation is not training: keep it out of the timing
        order = [False, True, True, False] * repeat
        results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for i, batch_runs in enumerate(order[: 2 * repeat]):
            name = f"{'batched' if batch_runs else 'unbatched'}-{i}"
            r = timed_sweep(doc, root, name, batch_runs, n_workers)
            results[batch_runs].append(r)
            rate = r["flops"] / r["wall"]
            print(f"{name:>12}: {r['done']}/{r['runs']} runs done (exit {r['exit']}) in {r['wall']:7.1f} s = "
                  f"{r['done'] / r['wall'] * 3600:7.0f} runs/hour, {rate / 1e9:5.2f} GFLOP/s = {rate / peak:4.0%} "
                  f"of peak; load {r['load']}")
        report(results, peak)


def report(results: dict[bool, list[dict[str, Any]]], peak: float) -> None:
    per_hour = {mode: [r["done"] / r["wall"] * 3600 for r in rs] for mode, rs in results.items()}
    walls = {mode: [r["wall"] for r in rs] for mode, rs in results.items()}
    ratios = [b / u for u, b in zip(per_hour[False], per_hour[True], strict=True)]
    print(f"wall time: unbatched {' '.join(f'{w:.1f}' for w in walls[False])} s, "
          f"batched {' '.join(f'{w:.1f}' for w in walls[True])} s")
    print(f"runs per hour: unbatched median {statistics.median(per_hour[False]):.0f}, batched median "
          f"{statistics.median(per_hour[True]):.0f}; batched / unbatched per round: "
          f"{' '.join(f'{r:.2f}x' for r in ratios)} (median {statistics.median(ratios):.2f}x, goal >= 1.7x)")
    print("final test loss per size (mean over seeds), first round of each mode:")
    for line in loss_table(results[False][0]["losses"], results[True][0]["losses"]):
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: 2, or the sweep's)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 300, or the sweep's)")
    parser.add_argument("--sweep", type=Path, help="compare this sweep file batched and unbatched")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the sweep file, e.g. model.width=[256]")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (unbatched, batched) with --sweep")
    args = parser.parse_args()
    if args.sweep is None:
        peak_fraction_main(args.workers or 2, args.steps or 300)
    else:
        sweep_main(args.sweep, args.overrides, args.steps, args.repeat, args.workers)


if __name__ == "__main__":
    main()
