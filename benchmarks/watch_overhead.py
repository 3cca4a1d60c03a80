"""What does `run.watch(model)` cost a researcher's own training loop, at its default cadence?

Three versions of one plain PyTorch loop (an MLP on random data, Adam, batch 128) are timed side by side
in one process, as interleaved triples whose order rotates (a b c, b c a, c a b, ...), so drift in the
machine's load hits all three alike:

  (a) bare:   forward, backward, optimizer step; nothing recorded.
  (b) log:    the same, plus `run.log({"train_loss": loss, "grad_scale": 1.0}, step=step)` every step
              through `scaletui.init` (the background writer thread is running).
  (c) watch:  (b) plus `run.watch(model)` at its default cadence (every 25 optimizer steps).

Only the loop is timed (init and finish are once per run, not per step), on two clocks: wall time,
and the CPU time of the whole process (every thread: the training loop, the writer, the detectors),
which other processes on a busy machine do not inflate. Each loop runs for about `--seconds` (its
step count is set from a warm-up). For each triple the ratio c/b is the cost of watching, b/a the
cost of logging; the summary is the geometric mean of the ratios with a 95% bootstrap confidence
interval (resampling the triples). Goal: watch <= 1.03x. The interleaving and the interval are
benchmarks/paired.py's, shared with overhead.py.

    python benchmarks/watch_overhead.py [--reps 9] [--seconds 1.5] [--device cpu|cuda] [--threads 1] [--steady-heap]
                                        [--sizes 64x2 256x4 512x8]

`--steady-heap` fixes glibc's malloc trim and mmap thresholds for the process. Left to themselves they
move with the process's history, and whether a loop's freed per-step tensors sit at the top of the heap
(given back to the OS at every step, and faulted in again at the next) is luck: measured at w512 d8,
identical loops took from 15 to over 1000 minor page faults per step, 0-4% of a step, in every version
alike; that noise is larger than the cost being measured. With the thresholds fixed the faults go.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`, when imported from elsewhere
from paired import Clock, RatioCI, Timing, interleaved, load_average, minor_faults, ratio_ci, shape_arg, steady_heap

import scaletui

CONFIGS = [(64, 2), (256, 4), (512, 8)]  # (width, depth)
INPUTS, BATCH = 40, 128
GOAL = 1.03


def mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    size = INPUTS
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 10))


def loop(width: int, depth: int, steps: int, device: torch.device, db: Path | None, watch: bool) -> Timing:
    """Time `steps` training steps (recording through the API when `db` is given)."""
    torch.manual_seed(0)
    model = mlp(width, depth).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, INPUTS, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    run = None
    if db is not None:
        run = scaletui.init(db=db, experiment="watch-overhead", loss="train_loss",
                            config={"width": width, "depth": depth, "watch": watch, "nonce": random.random()})
        if watch:
            run.watch(model)
    _sync(device)
    gc.collect()
    faults = minor_faults()
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if run is not None:
            run.log({"train_loss": loss, "grad_scale": 1.0}, step=step)
    _sync(device)
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu, minor_faults() - faults)
    if run is not None:
        run.finish()
    return timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_for(width: int, depth: int, seconds: float, device: torch.device) -> int:
    """A step count that makes one bare loop last about `seconds` (a multiple of the watch cadence)."""
    loop(width, depth, 25, device, None, False)
    per_step = loop(width, depth, 50, device, None, False).wall / 50
    return max(100, 25 * round(seconds / per_step / 25))


def measure(width: int, depth: int, steps: int, reps: int, device: torch.device,
            folder: Path) -> dict[str, list[Timing]]:
    """`reps` rotating triples after one untimed warm-up of each version."""
    versions: dict[str, Callable[[], Timing]] = {
        "bare": lambda: loop(width, depth, steps, device, None, False),
        "log": lambda: loop(width, depth, steps, device, folder / "bench.db", False),
        "watch": lambda: loop(width, depth, steps, device, folder / "bench.db", True),
    }
    return interleaved(versions, reps)


def _ratios(times: dict[str, list[Timing]], over: str, under: str, clock: Clock) -> RatioCI:
    return ratio_ci(times, over, under, clock)


def report(width: int, depth: int, steps: int, times: dict[str, list[Timing]]) -> bool:
    per_step = {name: 1e3 * statistics.median(t.wall for t in ts) / steps for name, ts in times.items()}
    faults = {name: statistics.median(t.faults for t in ts) / steps for name, ts in times.items()}
    cells = []
    clocks: tuple[Clock, Clock] = ("wall", "cpu")
    for clock in clocks:
        watch, logging = _ratios(times, "log", "watch", clock), _ratios(times, "bare", "log", clock)
        cells.append(f"{watch}  {logging}")
    cpu_watch = _ratios(times, "log", "watch", "cpu").mean
    ok = cpu_watch <= GOAL
    print(f"w{width:<4d} d{depth:<2d} {steps:5d} {per_step['bare']:7.3f} {per_step['log']:7.3f} "
          f"{per_step['watch']:7.3f} | wall: {cells[0]} | cpu: {cells[1]} | {'ok' if ok else 'OVER'} "
          f"| faults/step {faults['bare']:.0f} {faults['log']:.0f} {faults['watch']:.0f} "
          f"| load {load_average()}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one timed loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine's other core writes)")
    parser.add_argument("--steady-heap", action="store_true", help="fix glibc's malloc thresholds (see above)")
    parser.add_argument("--sizes", nargs="+", type=shape_arg, default=CONFIGS, metavar="WxD",
                        help="widths x depths to measure (default: 64x2 256x4 512x8)")
    args = parser.parse_args()
    if args.steady_heap:
        print(f"malloc thresholds: {steady_heap()}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__} on {device}, {args.threads} thread(s), {os.cpu_count()} cores; {args.reps} "
          f"rotating triples per size of ~{args.seconds:g} s loops; watch every 25 optimizer steps (the default); "
          f"goal watch/log <= {GOAL}x (judged on process CPU time)")
    print("size      steps  ms/step: bare   log  watch | watch/log (95% CI)   log/bare (95% CI), wall clock | "
          "the same, process CPU time | minor page faults per step (median) | load average 1/5/15 min")
    with tempfile.TemporaryDirectory() as folder:
        ok = [report(w, d, steps, measure(w, d, steps, args.reps, device, Path(folder)))
              for w, d in args.sizes for steps in [steps_for(w, d, args.seconds, device)]]
    print("all within the goal" if all(ok) else "some sizes over the goal")


if __name__ == "__main__":
    main()
