"""Is the default number of torch threads per worker ever slower than one thread? Quiet and under load.

One worker (`workers = 1`, where the old default gave the worker every core) trains one run of
scaletui's loop (`train_run`, in-memory sink) at each size, in three versions timed side by side in
one process as rotating triples (benchmarks/paired.py):

  one:      torch.set_num_threads(1)
  default:  the threads `experiment.threads_per_worker` defaults to (scaletui.core.config's
            `default_threads_per_worker` of this process's cores, the machine's load, 1 worker),
            decided once per scenario after its busy processes have started, as a sweep would at start
  all:      every core (the old default, cores / workers)

in two scenarios, one after the other in one run: "quiet" (nothing started beside it) and "busy"
(the benchmark starts `--busy` processes spinning a core each, and stops them after). The summary
is the geometric mean of the wall-time ratios default/one and all/one with a 95% bootstrap
interval (wall time: the time a run takes; CPU time would count every thread). Goal: default/one
not measurably above 1.00 (its interval reaches 1.00 or below) in both scenarios.

Pin it to fewer cores with taskset (`taskset -c 0,1 python benchmarks/threads.py`): the rule reads
the process's affinity mask.

    python benchmarks/threads.py [--reps 9] [--seconds 1.0] [--busy 2] [--data-dir runs/data]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`, when imported from elsewhere
from paired import RatioCI, Timing, interleaved, load_average, ratio_ci, timed

from scaletui.core.config import default_threads_per_worker, machine_load
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.engine.loop import train_run
from scaletui.engine.sinks import MemorySink

SIZES = [(64, 2), (512, 4)]  # (width, depth): dispatcher-bound, and matmul-bound
CPU = torch.device("cpu")
SPIN = "while True: pass"


def make_spec(width: int, depth: int, steps: int) -> RunSpec:
    train = TrainSpec(optimizer="adam", lr=1e-3, batch_size=128, steps=steps, eval_every=10 * steps,
                      checkpoint_every=10 * steps, device="cpu")  # fmt: skip
    return RunSpec("threads", DataSpec(dataset="mnist1d"), ModelSpec(arch="mlp", width=width, depth=depth), train)


def version(spec: RunSpec, threads: int, data_dir: Path, folder: Path) -> Callable[[], Timing]:
    """One timed training run of `spec` on `threads` torch threads."""
    stop = threading.Event()

    def run() -> Timing:
        torch.set_num_threads(threads)
        ckpt = Path(tempfile.mkdtemp(dir=folder))
        return timed(lambda: train_run(spec, MemorySink(), stop, data_dir=data_dir, checkpoint_dir=ckpt, device=CPU))

    return run


def steps_for(width: int, depth: int, seconds: float, data_dir: Path, folder: Path) -> int:
    """A step count that makes one single-threaded run last about `seconds`: per step from the difference of
    a 25- and a 100-step run (setup and evaluation cancel), at least a quarter of the longer one's per step
    (on a loaded machine the difference can come out near zero)."""
    def run(steps: int) -> float:
        return version(make_spec(width, depth, steps), 1, data_dir, folder)().wall

    run(25)  # warm-up
    short, long = run(25), run(100)
    per_step = max((long - short) / 75, long / 100 / 4)
    return max(50, 25 * round(seconds / per_step / 25))


@contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` processes spinning one core each, stopped (by their pids) on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let them be scheduled, so the load the rule reads includes them
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def verdict(default: RatioCI, same: bool) -> str:
    if same:
        return "ok (default is 1 thread)"
    return "ok" if default.low <= 1.0 else "SLOWER"


def scenario(name: str, args: argparse.Namespace, folder: Path) -> list[bool]:
    cpus = len(os.sched_getaffinity(0))  # as the rule counts them
    default = default_threads_per_worker(cpus, machine_load(), workers=1)
    print(f"{name}: {cpus} cores, load {load_average()} (rule's reading {machine_load():.2f}) -> default "
          f"{default} thread(s)", flush=True)
    ok = []
    for width, depth in SIZES:
        steps = steps_for(width, depth, args.seconds, args.data_dir, folder)
        spec = make_spec(width, depth, steps)
        versions = {"one": version(spec, 1, args.data_dir, folder),
                    "default": version(spec, default, args.data_dir, folder),
                    "all": version(spec, cpus, args.data_dir, folder)}  # fmt: skip
        times = interleaved(versions, args.reps)
        ok.append(report(name, width, depth, steps, times, default == 1))
    return ok


def report(name: str, width: int, depth: int, steps: int, times: dict[str, list[Timing]], same: bool) -> bool:
    ms = {k: 1e3 * statistics.median(t.wall for t in ts) / steps for k, ts in times.items()}
    default, every = ratio_ci(times, "one", "default", "wall"), ratio_ci(times, "one", "all", "wall")
    print(f"  {name:5s} mlp w{width:<3d} d{depth}  {steps:5d} steps  ms/step one {ms['one']:6.3f} default "
          f"{ms['default']:6.3f} all {ms['all']:6.3f} | default/one {default} | all/one {every} | "
          f"{verdict(default, same)} | load {load_average()}", flush=True)
    return verdict(default, same) != "SLOWER"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="rotating triples per size and scenario")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one single-threaded run")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside it in the busy scenario")
    parser.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}; {args.reps} rotating triples of ~{args.seconds:g} s runs per size; "
          "wall-time ratios, 95% bootstrap intervals")
    with tempfile.TemporaryDirectory() as tmp:
        ok = scenario("quiet", args, Path(tmp))
        with busy_processes(args.busy):
            ok += scenario("busy", args, Path(tmp))
    print("default never measurably slower than 1 thread" if all(ok) else "default slower than 1 thread somewhere")


if __name__ == "__main__":
    main()
