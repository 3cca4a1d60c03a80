"""Where does batching pay on this machine? Per-member step time of same-shape runs alone and as one bundle.

For each WIDTHxDEPTH of a sweep file (its other settings unchanged, `--steps` steps, no evaluation but the
first and last), the first `--members` runs of that shape are trained one after another by the unbatched
loop (`train_run`) and together as one bundle (`train_bundle`), in memory (no database), alternating
alone / bundle for `--repeat` rounds, after a warm-up that takes the process's first-time costs (imports,
the fused-optimizer check) out of the clock. Reported: process CPU time per member-step of each, and
their ratio (> 1: the bundle is faster), with each shape's forward FLOPs per weight layer and step, the
quantity `engine.batched.CPU_MAX_LAYER_FLOPS` limits.

    python benchmarks/bundle_gain.py [--sweep experiments.toml] [--shapes 128x3 160x3 160x6] [--members 16]
                                     [--steps 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from scaletui.core.config import load_sweep
from scaletui.core.datasets import DATASETS
from scaletui.core.specs import RunSpec
from scaletui.engine.batched import Member, train_bundle
from scaletui.engine.loop import train_run
from scaletui.engine.models import build_model, forward_flops, weight_layers
from scaletui.engine.sinks import MemorySink

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`, when imported from elsewhere
from paired import shape_arg


def shortened(spec: RunSpec, steps: int) -> RunSpec:
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=steps, eval_every=10 * steps,
                                                                checkpoint_every=10 * steps))


def layer_mflops(spec: RunSpec) -> float:
    info = DATASETS[spec.data.dataset]
    with torch.device("meta"):
        model = build_model(spec.model, info.input_shape, info.num_classes, initialise=False)
        return spec.train.batch_size * forward_flops(model, info.input_shape) / len(weight_layers(model)) / 1e6


def alone(specs: list[RunSpec], data_dir: Path, folder: Path) -> float:
    """CPU seconds to train `specs` one after another."""
    start = time.process_time()
    for i, spec in enumerate(specs):
        train_run(spec, MemorySink(), threading.Event(), data_dir=data_dir, checkpoint_dir=folder / f"alone{i}")
    return time.process_time() - start


def together(specs: list[RunSpec], data_dir: Path, folder: Path) -> float:
    """CPU seconds to train `specs` as one bundle."""
    members = [Member(spec, MemorySink(), threading.Event(), folder / f"member{i}") for i, spec in enumerate(specs)]
    start = time.process_time()
    train_bundle(members, data_dir=data_dir)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("experiments.toml"))
    parser.add_argument("--shapes", type=shape_arg, nargs="+", default=[(128, 3), (160, 1), (160, 3), (160, 6)])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a worker of the default sweep runs
    sweep = load_sweep(args.sweep)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm = [shortened(s, 20) for s in sweep.runs if s.model == sweep.runs[0].model][:2]
        alone(warm[:1], args.data_dir, folder / "warm-alone")
        together(warm, args.data_dir, folder / "warm-bundle")
        print(f"{args.sweep}: {args.members} members, {args.steps} steps, 1 thread; CPU ms per member-step")
        print("shape    MFLOP/layer   alone  bundle  alone/bundle")
        for width, depth in args.shapes:
            specs = [shortened(s, args.steps) for s in sweep.runs
                     if (s.model.width, s.model.depth) == (width, depth)][: args.members]
            if len(specs) < 2:
                print(f"{width}x{depth}: fewer than 2 runs of that shape in {args.sweep}")
                continue
            per = 1e3 / (len(specs) * args.steps)
            times: dict[str, list[float]] = {"alone": [], "bundle": []}
            for r in range(args.repeat):
                times["alone"].append(per * alone(specs, args.data_dir, folder / f"a{width}x{depth}r{r}"))
                times["bundle"].append(per * together(specs, args.data_dir, folder / f"b{width}x{depth}r{r}"))
            a, b = statistics.median(times["alone"]), statistics.median(times["bundle"])
            mflops = layer_mflops(specs[0])
            print(f"{width:>3}x{depth:<3} {mflops:>11.2f} {a:>7.3f} {b:>7.3f} {a / b:>12.2f}x", flush=True)


if __name__ == "__main__":
    main()
