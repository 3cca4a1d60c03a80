"""What does scaletui's training loop cost over a bare PyTorch loop?

Both sides train the same model (same builder, same optimizer, same data on
MNIST-1D, batch 128) for the same number of steps:

  (a) bare:     a minimal loop: forward, loss.backward(), optimizer.step(); no logging.
  (b) scaletui: `train_run` with the full path: loss of every step recorded, per-layer
                statistics every `log_every` steps, the SQLite sink (`StoreSink`) when it
                can be imported, stop signal checked every step.

Both do the same two evaluations (before training and at the last step, as
`train_run` always does; `eval_every` is larger than the run), so evaluation
cost is equal on both sides and the ratio measures logging and bookkeeping.
The two are timed alternately in one process (a, b, then b, a, ...) and the
per-pair ratio b/a is summarised by its median and spread. Goal: <= 1.03x.

    python benchmarks/overhead.py [--reps 7] [--steps 1000] [--log-every 25] [--data-dir runs/data]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.engine.data import load_dataset
from scaletui.engine.loop import evaluate, train_run
from scaletui.engine.models import build_model
from scaletui.engine.optim import build_optimizer
from scaletui.engine.sinks import MemorySink

CONFIGS = [(64, 2), (64, 8), (512, 2), (512, 8)]  # (width, depth)
CPU = torch.device("cpu")


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
        self.kind = f"StoreSink (SQLite at {folder / 'bench.db'})"
        self._store = Store(folder / "bench.db")
        self._sink_cls = StoreSink
        self._experiment = self._store.upsert_experiment("overhead", None, None, "final")

    def make(self, spec: RunSpec) -> tuple[Any, Callable[[], None]]:
        if self._store is None:
            return MemorySink(), lambda: None
        ((run_id, _),) = self._store.register_runs(self._experiment, [spec], fresh=True)
        sink = self._sink_cls(self._store.path, run_id)
        return sink, sink.close


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()  # start every measurement with the same (empty) garbage backlog
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    spec: RunSpec, data_dir: Path, sinks: SinkFactory, folder: Path, reps: int
) -> tuple[list[float], list[float]]:
    """Alternate (a) and (b) `reps` times after one untimed warm-up of each; returns both time lists."""
    stop = threading.Event()
    bare_times: list[float] = []
    full_times: list[float] = []

    def full() -> float:
        sink, close = sinks.make(spec)
        ckpt = Path(tempfile.mkdtemp(dir=folder))
        try:
            return timed(lambda: train_run(spec, sink, stop, data_dir=data_dir, checkpoint_dir=ckpt, device=CPU))
        finally:
            close()

    def bare() -> float:
        return timed(lambda: bare_loop(spec, data_dir))

    bare(), full()  # warm-up: allocator, fused-kernel probe, dataset cache
    for rep in range(reps):
        order = (bare, full) if rep % 2 == 0 else (full, bare)
        for fn in order:
            (bare_times if fn is bare else full_times).append(fn())
    return bare_times, full_times


def summarise(bare_times: list[float], full_times: list[float]) -> str:
    ratios = sorted(f / b for b, f in zip(bare_times, full_times, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    bare_ms, full_ms = statistics.median(bare_times) * 1e3, statistics.median(full_times) * 1e3
    return (
        f"bare {bare_ms:7.1f} ms  scaletui {full_ms:7.1f} ms  b/a median {statistics.median(ratios):.3f}x"
        f"  IQR {q1:.3f}-{q3:.3f}  min-max {ratios[0]:.3f}-{ratios[-1]:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=TrainSpec.log_every,
                        help="per-layer statistics cadence of (b) (default: the default cadence)")
    parser.add_argument("--data-dir", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sinks = SinkFactory(folder)
        print(f"torch {torch.__version__}, 1 thread, mnist1d, batch 128, {args.steps} steps, "
              f"log_every {args.log_every}, {args.reps} pairs")
        print(f"sink: {sinks.kind}")
        for width, depth in CONFIGS:
            spec = make_spec(width, depth, args.steps, args.log_every)
            bare_times, full_times = measure(spec, args.data_dir, sinks, folder, args.reps)
            print(f"mlp w{width:<3} d{depth}:  {summarise(bare_times, full_times)}", flush=True)


if __name__ == "__main__":
    main()
