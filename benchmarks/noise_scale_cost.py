"""What does measuring the gradient noise scale cost a run? Side by side, the same run with and without it.

Both sides are `train_run` (and, for the bundle rows, `train_bundle` of 4 seeds) on MNIST-1D, batch 128,
with every other recording as usual (train loss every step, per-layer statistics every `log_every` steps,
an in-memory sink, so the database is not what is timed). The "off" side is the same code with the
measurement switched off for the run (`measures_noise` patched to say no: the only difference is the
measurement itself: one extra backward pass per measuring step, the squared norms, three metric rows).

Timing: benchmarks/paired.py (many short interleaved pairs, wall and CPU time, the geometric mean of the
per-pair ratios with a 95% bootstrap interval). The expected cost is about (2/3 of a step) / noise_every.

    python benchmarks/noise_scale_cost.py [--reps 20] [--seconds 0.5] [--sizes 64x2,512x8] [--bundle 64x2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`, when imported from elsewhere
from paired import Timing, interleaved, load_average, ratio_ci, timed

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.engine import batched, loop
from scaletui.engine.batched import Member, train_bundle
from scaletui.engine.dataset_files import prepare_dataset
from scaletui.engine.noise_scale import noise_every
from scaletui.engine.sinks import MemorySink

CPU = torch.device("cpu")
BUNDLE = 4  # members of a bundle row


def make_spec(width: int, depth: int, steps: int, log_every: int, seed: int = 0) -> RunSpec:
    train = TrainSpec(optimizer="adam", lr=1e-3, batch_size=128, steps=steps, eval_every=10 * steps,
                      log_every=log_every, checkpoint_every=10 * steps, device="cpu")  # fmt: skip
    model = ModelSpec(arch="mlp", width=width, depth=depth)
    return RunSpec("noise-cost", DataSpec(dataset="mnist1d"), model, train, seed=seed)


def specs_of(width: int, depth: int, seeds: int, log_every: int) -> Callable[[int], list[RunSpec]]:
    """The runs of one row (one alone, or a bundle's seeds), for a given number of steps."""
    return lambda steps: [make_spec(width, depth, steps, log_every, seed) for seed in range(seeds)]


@contextmanager
def measuring(on: bool) -> Iterator[None]:
    """The run measures the noise scale (the default) or, for the "off" side, never does."""
    if on:
        yield
        return
    saved = loop.measures_noise, batched.measures_noise
    loop.measures_noise = batched.measures_noise = lambda step, log_every, batch_size: False
    try:
        yield
    finally:
        loop.measures_noise, batched.measures_noise = saved


def one_run(specs: list[RunSpec], data_dir: Path, folder: Path, on: bool) -> Timing:
    """Time one run alone (one spec) or one bundle (several), measuring or not."""
    ckpt = Path(tempfile.mkdtemp(dir=folder))
    stop = threading.Event()

    def train() -> None:
        if len(specs) == 1:
            loop.train_run(specs[0], MemorySink(), stop, data_dir=data_dir, checkpoint_dir=ckpt, device=CPU)
        else:
            members = [Member(s, MemorySink(), stop, ckpt / s.key) for s in specs]
            train_bundle(members, data_dir=data_dir, device=CPU)

    with measuring(on):
        return timed(train)


def steps_for(specs_of: Callable[[int], list[RunSpec]], seconds: float, cadence: int, data_dir: Path,
              folder: Path) -> int:
    """A step count (a multiple of the measuring cadence) that makes one "off" run last about `seconds`."""
    probe = 4 * cadence
    one_run(specs_of(probe), data_dir, folder, on=False)  # warm-up
    per_step = one_run(specs_of(probe), data_dir, folder, on=False).wall / probe
    return max(2 * cadence, cadence * round(seconds / per_step / cadence))


def compare(label: str, specs_of: Callable[[int], list[RunSpec]], args: argparse.Namespace, folder: Path) -> None:
    cadence = noise_every(args.log_every)
    steps = steps_for(specs_of, args.seconds, cadence, args.data_dir, folder)
    specs = specs_of(steps)
    times = interleaved({"off": lambda: one_run(specs, args.data_dir, folder, on=False),
                         "on": lambda: one_run(specs, args.data_dir, folder, on=True)}, args.reps)
    per_step = {name: 1e3 * statistics.median(t.wall for t in ts) / steps for name, ts in times.items()}
    wall, cpu = ratio_ci(times, "off", "on", "wall"), ratio_ci(times, "off", "on", "cpu")
    print(f"{label:<16} {steps:5d} {steps // cadence:4d} {per_step['off']:8.3f} {per_step['on']:8.3f} | wall {wall} | "
          f"cpu {cpu} | load {load_average()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="interleaved pairs per row")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one run without the measurement")
    parser.add_argument("--log-every", type=int, default=TrainSpec.log_every)
    parser.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    parser.add_argument("--sizes", default="64x2,64x8,512x2,512x8", help="runs alone, e.g. 64x2,512x8")
    parser.add_argument("--bundle", default="64x2", help=f"bundles of {BUNDLE} seeds (empty: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepare_dataset(DataSpec(dataset="mnist1d"), args.data_dir)
    print(f"torch {torch.__version__}, 1 thread, mnist1d, batch 128, log_every {args.log_every}, a measurement "
          f"every {noise_every(args.log_every)} steps, {args.reps} alternating pairs of ~{args.seconds:g} s runs; "
          f"load {load_average()}")
    print("row              steps meas ms/step: off on | on/off, wall (95% CI) | the same, CPU time")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in filter(None, args.sizes.split(",")):
            w, d = (int(x) for x in size.split("x"))
            compare(f"alone w{w} d{d}", specs_of(w, d, 1, args.log_every), args, folder)
        for size in filter(None, args.bundle.split(",")):
            w, d = (int(x) for x in size.split("x"))
            compare(f"bundle{BUNDLE} w{w} d{d}", specs_of(w, d, BUNDLE, args.log_every), args, folder)

if __name__ == "__main__":
    main()
