"""Your own training loop, recorded by scaletui: an MLP fitting a synthetic function, swept over widths.

The question: how does the held-out error of a small regression network fall with its size, and where
does it level off? The data come from a fixed random "teacher" network plus a little noise, so the
answer has a floor (the noise) and a power law on the way down to it: E + A * params^-alpha.

Everything here is a plain PyTorch loop; scaletui only sees it through `scaletui.init`, `run.watch`,
`run.log` and `run.summary`. The runs land in the same database a built-in sweep uses, so the app
(`scaletui --db runs/own_loop.db`), `scaletui ls`, `scaletui fit` and `scaletui export` all work on them.

    python examples/own_loop/regression.py                   # ~30 s on 2 CPU cores
    scaletui fit --db runs/own_loop.db --experiment own-regression

What you should see: the test loss falling with width, the fit's floor E near the noise variance
(0.01), and a per-layer gradient table in the app for each run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import scaletui

EXPERIMENT = "own-regression"
INPUTS, TEACHER_WIDTH, NOISE = 8, 64, 0.1  # noise std: the loss floor is NOISE**2 = 0.01


def teacher(seed: int) -> nn.Module:
    """The function to learn: a fixed random tanh network, scaled so that its output has variance ~1."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(INPUTS, TEACHER_WIDTH), nn.Tanh(), nn.Linear(TEACHER_WIDTH, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / max(p.shape[-1], 1)) ** 0.5)
        x = torch.randn(4096, INPUTS, generator=gen)
        net[2].weight /= net(x).std()
    return net.requires_grad_(False)


def batch(target: nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh samples every step (no overfitting: the loss is limited by the model, not the data)."""
    x = torch.randn(n, INPUTS, generator=gen)
    return x, target(x) + NOISE * torch.randn(n, 1, generator=gen)


def student(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    size = INPUTS
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 1))


def train_one(db: str, width: int, depth: int, seed: int, steps: int, lr: float, batch_size: int) -> float:
    """One run, from init to its last evaluation; returns its final test loss."""
    torch.manual_seed(seed)
    target = teacher(seed=1234)  # the same function for every run of the sweep
    gen = torch.Generator().manual_seed(seed)
    x_test, y_test = batch(target, 4096, torch.Generator().manual_seed(99))
    model = student(width, depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    config = {"width": width, "depth": depth, "lr": lr, "seed": seed, "steps": steps, "batch_size": batch_size,
              "optimizer": "adam", "teacher_width": TEACHER_WIDTH, "noise": NOISE}
    with scaletui.init(db=db, experiment=EXPERIMENT, config=config, loss="test_loss", loss_rule="final") as run:
        run.watch(model, every=25)
        run.summary(params=sum(p.numel() for p in model.parameters()))
        for step in range(1, steps + 1):
            x, y = batch(target, batch_size, gen)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            metrics = {"train_loss": loss}
            if step % 100 == 0 or step == steps:
                with torch.no_grad():
                    metrics["test_loss"] = nn.functional.mse_loss(model(x_test), y_test)
            run.log(metrics, step=step)
        final = float(metrics["test_loss"])
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="runs/own_loop.db")
    # Twelve widths a factor ~sqrt(2) apart and 3000 steps: the largest nets get near the noise floor, which
    # a law needs to see to find it (six widths at 1500 steps put E at 0.016 and missed the largest by 26%).
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and leaves a core to the writer
    started = time.monotonic()
    for width in args.widths:
        for seed in args.seeds:
            t0 = time.monotonic()
            final = train_one(args.db, width, args.depth, seed, args.steps, args.lr, args.batch_size)
            print(f"width {width:4d} seed {seed}: test loss {final:.4f} ({time.monotonic() - t0:.1f} s)", flush=True)
    print(f"done in {time.monotonic() - started:.0f} s; now: scaletui fit --db {args.db} --experiment {EXPERIMENT}")


if __name__ == "__main__":
    main()
