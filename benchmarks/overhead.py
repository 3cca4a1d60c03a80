"""What does scaletui's training loop cost over a bare PyTorch loop? Resolves 1-2%.

Both sides train the same model (same builder, same optimizer, same data on
MNIST-1D, batch 128) for the same number of steps:

  (a) bare:     a minimal loop: forward, loss.backward(), optimizer.step(); no logging.
  (b) scaletui: `train_run` with the full path: loss of every step recorded, per-layer
                statistics every `log_every` steps, the SQLite sink (`StoreSink`) when it
                can be imported, stop signal checked every step.

Both do the same two evaluations (before training and at the last step, as
`train_run` always does; `eval_every` is larger than the run), so evaluation
cost is equal on both sides and the ratio measures logging and bookkeeping.

How it resolves 1-2% on a loaded machine (benchmarks/paired.py): many short runs (about
`--seconds` of CPU each; the step count per size is set from a warm-up, a multiple of `log_every`)
timed as interleaved pairs in alternating order (a b, b a, ...), on two clocks (wall, and the
process's CPU time, which other processes inflate much less), summarised as the geometric mean
of the per-pair ratios b/a with a 95% bootstrap interval. The pairs are measured in `--processes`
fresh processes, one after another, and the interval resamples processes, then pairs
(paired.clustered_ci): what one process is dealt (memory layout, malloc thresholds) moves all of
its pairs alike, and one process's interval was narrower than the spread between two runs of the
same command. Each process's own mean is printed too. Goal: <= 1.03x with an interval that
excludes 1.05 (judged on CPU time). Each row also shows the minor page faults per step of both sides:
glibc's malloc thresholds move with the process's history, and a loop whose freed tensors are given
back to the OS at every step pays for faulting them in again, in either version (paired.steady_heap);
`--steady-heap` fixes the thresholds, so that noise leaves the ratio.

    python benchmarks/overhead.py [--reps 20] [--processes 3] [--seconds 0.5] [--log-every 25] [--steady-heap]
                                  [--data-dir runs/data] [--sizes 64x2,512x8]
    python benchmarks/overhead.py --profile 64x2   # cProfile of the scaletui side, top 25 by own time
    python benchmarks/overhead.py --ablate 64x2    # what each part costs: the path without it, against bare
    python benchmarks/overhead.py --inside 64x2    # each part's own time inside the full path, against the whole excess

`--ablate` times, interleaved in one process, the bare loop, the full path, and the full path without
each monitoring part in turn (the noise-scale measurement, the per-layer probe, the SQLite sink: an
in-memory one instead), then without all three, and that once more with a single log window per run (what
remains is a run's fixed cost and the loop's per-step bookkeeping): each version's CPU-time ratio to bare,
with its interval.

`--inside` times each monitoring part where it runs, inside the full path (its functions wrapped in a
clock), and sets their sum beside the whole excess of the full path over bare in the same process
(medians of interleaved pairs, wall time; the clocks add about a microsecond per wrapped call). What is
not in the parts is the loop's per-step bookkeeping (~1.5 us a step at w64 d2, timed alone) and time no
part shows as its own: callgrind counted +3.9% instructions per step at w64 d2 where the clock said +7%,
so part of the excess is the training's own work running slower beside the monitoring's.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`, when imported from elsewhere
from paired import (
    Clock,
    RatioCI,
    Timing,
    clustered_ci,
    geometric_ci,
    interleaved,
    load_average,
    paired_ratios,
    steady_heap,
    timed,
)

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.engine.data import load_dataset
from scaletui.engine.loop import evaluate, train_run
from scaletui.engine.models import build_model
from scaletui.engine.optim import build_optimizer
from scaletui.engine.sinks import MemorySink

CONFIGS = [(64, 2), (64, 8), (512, 2), (512, 8)]  # (width, depth)
CPU = torch.device("cpu")
GOAL, LIMIT = 1.03, 1.05  # the mean must be at most GOAL and the interval must stay below LIMIT


def make_spec(width: int, depth: int, steps: int, log_every: int = TrainSpec.log_every) -> RunSpec:
    train = TrainSpec(optimizer="adam", lr=1e-3, batch_size=128, steps=steps, eval_every=10 * steps,
                      log_every=log_every, checkpoint_every=10 * steps, device="cpu")  # fmt: skip
    return RunSpec("overhead", DataSpec(dataset="mnist1d"), ModelSpec(arch="mlp", width=width, depth=depth), train)


def bare_loop(spec: RunSpec, data_dir: Path) -> float:
    """(a): the same model and optimizer, the same evaluations, nothing recorded."""
    data = load_dataset(spec.data, data_dir, spec.seed, CPU)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    optimizer = build_optimizer(model.parameters(), spec.train, spec.train.lr)
    generator = torch.Generator().manual_seed(spec.seed)
    n, batch = len(data.y_train), spec.train.batch_size
    perm, pos = torch.randperm(n, generator=generator), 0
    evaluate(model, data)
    for _ in range(spec.train.steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos : pos + batch]
        pos += batch
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    evaluate(model, data)
    return loss.item()


class SinkFactory:
    """A fresh sink per repetition: StoreSink on a registered run if the store imports, else in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            from scaletui.store.writer import Store, StoreSink
        except ImportError as exc:
            self.kind = f"in-memory sink (scaletui.store.writer unavailable: {exc})"
            self._store = None
            return
        self.kind = "StoreSink (SQLite, a database in a temporary folder)"
        self._store = Store(folder / "bench.db")
        self._sink_cls = StoreSink
        self._experiment = self._store.upsert_experiment("overhead", None, None, "final")

    def make(self, spec: RunSpec) -> tuple[Any, Callable[[], None]]:
        if self._store is None:
            return MemorySink(), lambda: None
        ((run_id, _),) = self._store.register_runs(self._experiment, [spec], fresh=True)
        sink = self._sink_cls(self._store.path, run_id)
        return sink, sink.close


class Sides:
    """The two timed versions of one size: registering the run and opening its sink stay outside the clock
    (once per run, like the bare loop's own process start, which is not timed either)."""

    def __init__(self, spec: RunSpec, data_dir: Path, sinks: SinkFactory, folder: Path) -> None:
        self.spec, self.data_dir, self.sinks, self.folder = spec, data_dir, sinks, folder
        self.stop = threading.Event()

    def bare(self) -> Timing:
        return timed(lambda: bare_loop(self.spec, self.data_dir))

    def full(self) -> Timing:
        sink, close = self.sinks.make(self.spec)
        ckpt = Path(tempfile.mkdtemp(dir=self.folder))
        try:
            return timed(lambda: self.train(sink, ckpt))
        finally:
            close()

    def train(self, sink: Any, ckpt: Path) -> None:
        train_run(self.spec, sink, self.stop, data_dir=self.data_dir, checkpoint_dir=ckpt, device=CPU)


def steps_for(width: int, depth: int, seconds: float, log_every: int, data_dir: Path) -> int:
    """A step count (a multiple of `log_every`, at least two windows): one bare run of about `seconds` of CPU.

    Per step from the difference of a 1-window and a 4-window run (which cancels setup and evaluation),
    each the median of three (CPU time: one pair alone gave w64 d2 anywhere from 275 to 875 steps on a
    shared machine), but at least a quarter of the 4-window run's time per step: on a loaded machine the
    difference can come out near zero and would ask for millions of steps."""
    def run(steps: int) -> float:
        return statistics.median(
            timed(lambda: bare_loop(make_spec(width, depth, steps, log_every), data_dir)).cpu for _ in range(3))

    run(log_every)  # warm-up
    short, long = run(log_every), run(4 * log_every)
    per_step = max((long - short) / (3 * log_every), long / (4 * log_every) / 4)
    return max(2 * log_every, log_every * round(seconds / per_step / log_every))


def verdict(cpu: RatioCI) -> str:
    return "ok" if cpu.mean <= GOAL and cpu.high < LIMIT else "OVER"


Measured = list[dict[str, list[Timing]]]  # one {"bare": [...], "full": [...]} per process


def report(width: int, depth: int, steps: int, processes: Measured) -> bool:
    """One line per size: both clocks' clustered intervals and each process's own CPU-time mean."""
    def ci(clock: Clock) -> RatioCI:
        return clustered_ci([paired_ratios(times, "bare", "full", clock) for times in processes])

    every = {name: [t for times in processes for t in times[name]] for name in ("bare", "full")}
    per_step = {name: 1e3 * statistics.median(t.wall for t in ts) / steps for name, ts in every.items()}
    faults = {name: statistics.median(t.faults for t in ts) / steps for name, ts in every.items()}
    wall, cpu = ci("wall"), ci("cpu")
    means = [statistics.geometric_mean(paired_ratios(times, "bare", "full", "cpu")) for times in processes]
    each = " ".join(f"{m:.3f}" for m in means)
    print(f"mlp w{width:<3} d{depth}  {steps:5d} {per_step['bare']:8.3f} {per_step['full']:8.3f} | wall {wall} | "
          f"cpu {cpu} | {verdict(cpu):4s} | per process {each} | faults/step {faults['bare']:.0f} {faults['full']:.0f} "
          f"| load {load_average()}", flush=True)
    return verdict(cpu) == "ok"


def measure(width: int, depth: int, steps: int, reps: int, log_every: int, data_dir: Path) -> dict[str, list[Timing]]:
    """`reps` interleaved pairs of one size in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sides = Sides(make_spec(width, depth, steps, log_every), data_dir, SinkFactory(folder), folder)
        return interleaved({"bare": sides.bare, "full": sides.full}, reps)


def measure_in_process(width: int, depth: int, steps: int, args: argparse.Namespace) -> dict[str, list[Timing]]:
    """The same in a fresh Python process (this script with --child), its timings read back as JSON."""
    command = [sys.executable, __file__, "--child", f"{width}x{depth}", "--steps", str(steps), "--reps", str(args.reps),
               "--log-every", str(args.log_every), "--data-dir", str(args.data_dir)]
    out = subprocess.run(command + (["--steady-heap"] if args.steady_heap else []), check=True,
                         stdout=subprocess.PIPE, text=True).stdout  # its errors go to our stderr
    return {name: [Timing(*t) for t in ts] for name, ts in json.loads(out.splitlines()[-1]).items()}


def child(size: str, steps: int, args: argparse.Namespace) -> None:
    width, depth = (int(x) for x in size.split("x"))
    times = measure(width, depth, steps, args.reps, args.log_every, args.data_dir)
    print(json.dumps({name: [[t.wall, t.cpu, t.faults] for t in ts] for name, ts in times.items()}))


def profile(size: str, seconds: float, log_every: int, data_dir: Path, folder: Path) -> None:
    width, depth = (int(x) for x in size.split("x"))
    spec = make_spec(width, depth, steps_for(width, depth, seconds, log_every, data_dir), log_every)
    sides = Sides(spec, data_dir, SinkFactory(folder), folder)
    sides.full()
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [sides.full() for _ in range(5)])
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


class NullProbe:
    """A LayerProbe that measures nothing: the loop's path without per-layer statistics (for --ablate)."""

    def __init__(self, layers: object) -> None:
        pass

    def before_step(self, grads_will_change: bool = True) -> None:
        pass

    def after_step(self) -> list[torch.Tensor]:
        return []

    def layer_stats(self, step: int, values: list[float]) -> list[Any]:
        return []


def without(sides: Sides, folder: Path, *, noise: bool = True, probe: bool = True,
            store: bool = True) -> Callable[[], Timing]:
    """The full path of `sides` with the named parts switched off (engine.loop's names replaced for the
    duration of one run, then put back)."""
    from scaletui.engine import loop

    def run() -> Timing:
        with ExitStack() as patches:
            if not noise:
                patches.enter_context(patch.object(loop, "measures_noise", lambda *args: False))
            if not probe:
                patches.enter_context(patch.object(loop, "LayerProbe", NullProbe))
            if store:
                return sides.full()
            ckpt = Path(tempfile.mkdtemp(dir=folder))
            return timed(lambda: sides.train(MemorySink(), ckpt))
    return run


#: The monitoring parts `--inside` times, each the functions (engine.loop names, or LayerProbe methods) whose
#: own time it is. The window's host transfer and records are `_send_losses` less the parts it calls.
WINDOW = "log window (transfer, records, sink)"
PARTS: dict[str, tuple[str, ...]] = {
    "per-layer probe": ("LayerProbe.before_step", "LayerProbe.after_step", "LayerProbe.layer_stats"),
    "noise-scale measurement": ("half_gradients", "_grads", "tensor_norms", "squared_norms", "record_noise"),
    WINDOW: ("_send_losses",),
}
CALLED_BY_WINDOW = ("LayerProbe.layer_stats", "squared_norms", "record_noise")  # inside _send_losses


class PartClocks:
    """Wraps the functions of PARTS in a clock while in use (the loop's module names and LayerProbe's
    methods, put back on exit by `unittest.mock.patch`) and sums each one's seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {name: 0.0 for names in PARTS.values() for name in names}
        self._patches = ExitStack()

    def __enter__(self) -> PartClocks:
        from scaletui.engine import loop

        for name in self.seconds:
            owner, attribute = (loop.LayerProbe, name.split(".")[1]) if "." in name else (loop, name)
            clocked = self._clocked(name, getattr(owner, attribute))
            self._patches.enter_context(patch.object(owner, attribute, clocked))
        return self

    def __exit__(self, *exc: object) -> None:
        self._patches.close()

    def _clocked(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return clocked

    def parts(self) -> dict[str, float]:
        """Seconds of each part of PARTS (the window without what it calls of the other parts)."""
        out = {part: sum(self.seconds[name] for name in names) for part, names in PARTS.items()}
        out[WINDOW] -= sum(self.seconds[name] for name in CALLED_BY_WINDOW)
        return out


def inside(size: str, args: argparse.Namespace, folder: Path) -> None:
    width, depth = (int(x) for x in size.split("x"))
    steps = steps_for(width, depth, args.seconds, args.log_every, args.data_dir)
    sides = Sides(make_spec(width, depth, steps, args.log_every), args.data_dir, SinkFactory(folder), folder)
    clocks = PartClocks()

    def full() -> Timing:
        with clocks:
            return sides.full()

    times = interleaved({"bare": sides.bare, "full": full}, args.reps)  # the warm-up's parts are counted too
    runs = args.reps + 1
    bare = statistics.median(t.wall for t in times["bare"])
    excess = statistics.median(t.wall for t in times["full"]) - bare
    print(f"mlp w{width} d{depth}, {steps} steps, log_every {args.log_every}, {args.reps} pairs in one process "
          f"(wall time, per run); load {load_average()}")
    print(f"  bare loop                               {1e3 * bare:8.2f} ms")
    direct = 0.0
    for part, seconds in clocks.parts().items():
        direct += seconds / runs
        print(f"  {part:38s}  {1e3 * seconds / runs:8.2f} ms  {100 * seconds / runs / bare:5.2f}% of bare")
    print(f"  the parts together                      {1e3 * direct:8.2f} ms  {100 * direct / bare:5.2f}%")
    print(f"  the full path's whole excess over bare  {1e3 * excess:8.2f} ms  {100 * excess / bare:5.2f}%")
    print(f"  not in any part                         {1e3 * (excess - direct):8.2f} ms  "
          f"{100 * (excess - direct) / bare:5.2f}% (the per-step bookkeeping, and what no clock of a part sees)")


def ablate(size: str, args: argparse.Namespace, folder: Path) -> None:
    width, depth = (int(x) for x in size.split("x"))
    steps = steps_for(width, depth, args.seconds, args.log_every, args.data_dir)
    sides = Sides(make_spec(width, depth, steps, args.log_every), args.data_dir, SinkFactory(folder), folder)
    versions = {"bare": sides.bare, "full": sides.full, "no noise scale": without(sides, folder, noise=False),
                "no probe": without(sides, folder, probe=False), "in-memory sink": without(sides, folder, store=False),
                "none of them": without(sides, folder, noise=False, probe=False, store=False),
                # the same with one log window per run: what is left is the fixed cost of a run and the
                # loop's per-step bookkeeping; the difference to "none of them" is the windows themselves
                "none, 1 window": without(Sides(make_spec(width, depth, steps, steps), args.data_dir, sides.sinks,
                                                folder), folder, noise=False, probe=False, store=False)}
    times = interleaved(versions, args.reps)
    print(f"mlp w{width} d{depth}, {steps} steps, {args.reps} rotations in one process; load {load_average()}")
    for name in list(versions)[1:]:
        cpu = 1e3 * statistics.median(t.cpu for t in times[name]) / steps
        ratio = geometric_ci(paired_ratios(times, "bare", name, "cpu"))
        print(f"  {name:15s} {ratio} of bare (CPU), {cpu:.3f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="interleaved pairs per size in each process")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per size, one after another")
    parser.add_argument("--seconds", type=float, default=0.5, help="CPU seconds of one bare run")
    parser.add_argument("--log-every", type=int, default=TrainSpec.log_every,
                        help="per-layer statistics cadence of (b) (default: the default cadence)")
    parser.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    parser.add_argument("--sizes", default=",".join(f"{w}x{d}" for w, d in CONFIGS), help="e.g. 64x2,512x8")
    parser.add_argument("--profile", metavar="WxD", help="profile the scaletui side of one size instead")
    parser.add_argument("--ablate", metavar="WxD", help="what each monitoring part costs at one size (one process)")
    parser.add_argument("--inside", metavar="WxD", help="each part's own time inside the full path vs the whole excess")
    parser.add_argument("--steady-heap", action="store_true", help="fix glibc's malloc thresholds (paired.steady_heap)")
    parser.add_argument("--child", metavar="WxD", help=argparse.SUPPRESS)  # one process's pairs, as JSON
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    heap = steady_heap() if args.steady_heap else None
    if args.child:
        return child(args.child, args.steps, args)
    if heap:
        print(f"malloc thresholds: {heap}")
    if args.ablate:
        with tempfile.TemporaryDirectory() as tmp:
            return ablate(args.ablate, args, Path(tmp))
    if args.inside:
        with tempfile.TemporaryDirectory() as tmp:
            return inside(args.inside, args, Path(tmp))
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            return profile(args.profile, args.seconds, args.log_every, args.data_dir, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        kind = SinkFactory(Path(tmp)).kind
    print(f"torch {torch.__version__}, 1 thread, mnist1d, batch 128, log_every {args.log_every}, {args.reps} "
          f"alternating pairs of ~{args.seconds:g} s runs per size in each of {args.processes} processes; "
          f"load {load_average()}")
    print(f"sink: {kind}; goal scaletui/bare <= {GOAL}x, 95% interval below {LIMIT}x (process CPU time; "
          "the interval resamples processes, then pairs)")
    print("size        steps ms/step: bare scaletui | scaletui/bare, wall (95% CI) | the same, CPU time | "
          "each process's CPU-time mean | minor page faults per step: bare scaletui")
    ok = []
    for width, depth in (tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")):
        steps = steps_for(width, depth, args.seconds, args.log_every, args.data_dir)
        processes = [measure_in_process(width, depth, steps, args) for _ in range(args.processes)]
        ok.append(report(width, depth, steps, processes))
    print("all within the goal" if all(ok) else "some sizes over the goal")


if __name__ == "__main__":
    main()
