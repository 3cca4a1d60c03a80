"""A policy network against a tuned PID controller, swept over width x depth through `train.entrypoint`.

The question (in the spirit of research note 003): how much better than a well-tuned PID does a small
neural policy control a plant, and how does that depend on the policy's size? `cost` is the policy's
tracking cost divided by the PID's on the same held-out episodes (same targets, same noise): 1.0 is
"as good as the PID", lower is better. experiments.toml states it once as the experiment's loss.

The plant: a mass on a stiffening spring with friction (a double integrator plus `-stiffness * p**3`),
driven through an actuator that saturates at +-1, acts `delay` steps late and whose strength depends
on the position (`1 + ripple * sin(3 p)`), with process noise;
it must follow a target that jumps to a new level every `hold` steps. The delay and the saturation
are what a PID handles badly; the policy sees its own in-flight commands and the target's next
`preview` values (as a planner would), and must learn what to do with them.

Training is backpropagation through the simulated episodes (the plant is differentiable), so every
run takes a few seconds to a minute on one CPU core. scaletui calls `train(config, run)` in its worker
processes; the function uses the handle as a script would use `scaletui.init`'s, plus the two things
a sweep gives it: `run.should_stop` (the app's `k`, `X` and Ctrl-C) and `run.checkpoint_dir` with
`run.last_step` (resume where an interrupted run stopped, without logging a step twice).

    scaletui run --headless examples/own_loop/control/experiments.toml --db runs/control.db
    scaletui fit --db runs/control.db --experiment control-vs-pid
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "policy.pt"
TUNE_EPISODES, EVAL_EPISODES = 64, 128
TUNE_SEED, EVAL_SEED = 10_000, 20_000  # episodes no training batch ever uses


@dataclass(frozen=True)
class Plant:
    """The simulated system; see the module docstring."""

    delay: int = 3  # steps between a command and its effect
    horizon: int = 100  # steps per episode
    hold: int = 25  # steps between target jumps
    dt: float = 0.1
    friction: float = 0.5
    stiffness: float = 4.0  # of the cubic spring: the plant is nonlinear away from 0
    ripple: float = 0.7  # the actuator's gain is 1 + ripple * sin(3 p): it depends on where the mass is
    umax: float = 1.0  # actuator saturation
    noise: float = 0.02  # process noise (velocity), per step
    effort: float = 0.01  # cost weight of u**2 against the squared tracking error
    preview: int = 8  # future target values the policy sees (the PID sees only the present one)


def episodes(plant: Plant, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and process noise of `n` episodes, (horizon, n) each, fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.rand(plant.horizon // plant.hold + 1, n, generator=gen) * 2 - 1
    targets = levels.repeat_interleave(plant.hold, dim=0)[: plant.horizon]
    noise = plant.noise * torch.randn(plant.horizon, n, generator=gen)
    return targets, noise


#: control(targets now and next `preview` steps (1 + preview, n), position, velocity, in-flight commands) -> u
Controller = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]


def simulate(plant: Plant, control: Controller, targets: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean cost per step of each episode under `control`."""
    n = targets.shape[1]
    p, v = torch.zeros(n), torch.zeros(n)
    in_flight = [torch.zeros(n) for _ in range(plant.delay)]  # commands issued, not yet acting
    cost = torch.zeros(n)
    ahead = torch.cat([targets, targets[-1:].expand(plant.preview, n)])  # the last target holds past the end
    for t in range(plant.horizon):
        r = targets[t]
        u = plant.umax * torch.tanh(control(ahead[t : t + 1 + plant.preview], p, v, in_flight) / plant.umax)
        cost = cost + (p - r) ** 2 + plant.effort * u**2
        in_flight.append(u)
        applied = in_flight.pop(0)
        force = applied * (1 + plant.ripple * torch.sin(3 * p)) - plant.friction * v - plant.stiffness * p**3
        v = v + plant.dt * force + noise[t]
        p = p + plant.dt * v
    return cost / plant.horizon


class Pid:
    """A discrete PID per episode lane (gains may differ per lane: one simulation tunes a whole grid)."""

    def __init__(self, kp: torch.Tensor, ki: torch.Tensor, kd: torch.Tensor, dt: float) -> None:
        self.kp, self.ki, self.kd, self.dt = kp, ki, kd, dt
        self.integral: torch.Tensor | float = 0.0
        self.last_error: torch.Tensor | None = None

    def __call__(self, ahead: torch.Tensor, p: torch.Tensor, v: torch.Tensor,
                 in_flight: list[torch.Tensor]) -> torch.Tensor:
        error = ahead[0] - p
        self.integral = self.integral + error * self.dt
        change = torch.zeros_like(error) if self.last_error is None else (error - self.last_error) / self.dt
        self.last_error = error
        return self.kp * error + self.ki * self.integral + self.kd * change


@functools.cache
def tuned_pid(plant: Plant) -> tuple[float, float, float]:
    """The best (kp, ki, kd) of a grid, by mean cost on tuning episodes (once per process)."""
    grid = torch.cartesian_prod(torch.tensor([0.5, 1, 2, 3, 4, 6, 8, 12.0]), torch.tensor([0, 0.25, 0.5, 1, 2.0]),
                                torch.tensor([0, 0.5, 1, 1.5, 2, 3.0]))
    targets, noise = episodes(plant, TUNE_EPISODES, TUNE_SEED)
    lanes = grid.repeat_interleave(TUNE_EPISODES, dim=0)  # every gain triple on every episode
    pid = Pid(lanes[:, 0], lanes[:, 1], lanes[:, 2], plant.dt)
    costs = simulate(plant, pid, targets.repeat(1, len(grid)), noise.repeat(1, len(grid)))
    best = int(costs.view(len(grid), TUNE_EPISODES).mean(dim=1).argmin())
    kp, ki, kd = (float(g) for g in grid[best])
    return kp, ki, kd


@functools.cache
def pid_cost(plant: Plant) -> float:
    """The tuned PID's mean cost on the evaluation episodes: the yardstick `cost` divides by."""
    kp, ki, kd = tuned_pid(plant)
    targets, noise = episodes(plant, EVAL_EPISODES, EVAL_SEED)
    ones = torch.ones(EVAL_EPISODES)
    return float(simulate(plant, Pid(kp * ones, ki * ones, kd * ones, plant.dt), targets, noise).mean())


class Policy(nn.Module):
    """An MLP from what the controller can know (errors now and ahead, velocity, position, its in-flight
    commands) to u."""

    def __init__(self, plant: Plant, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 3 + plant.preview + plant.delay
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.Tanh()]
            size = width
        self.net = nn.Sequential(*layers, nn.Linear(size, 1))

    def forward(self, ahead: torch.Tensor, p: torch.Tensor, v: torch.Tensor,
                in_flight: list[torch.Tensor]) -> torch.Tensor:
        features = torch.cat([(ahead - p).T, torch.stack([v, p, *in_flight], dim=1)], dim=1)
        return 3.0 * self.net(features).squeeze(1)  # room to saturate the actuator either way


def evaluate(plant: Plant, policy: Policy) -> float:
    """The policy's cost relative to the tuned PID's, on the same held-out episodes."""
    targets, noise = episodes(plant, EVAL_EPISODES, EVAL_SEED)
    with torch.no_grad():
        return float(simulate(plant, policy, targets, noise).mean()) / pid_cost(plant)


def train(config: dict[str, Any], run: Any) -> None:
    """The entrypoint: one run of the sweep. `config` has seed, steps, width, depth, lr and [user]'s keys."""
    plant = Plant(delay=int(config.get("delay", 3)), horizon=int(config.get("horizon", 100)))
    torch.manual_seed(config["seed"])
    policy = Policy(plant, config["width"], config["depth"])
    optimizer = torch.optim.Adam(policy.parameters(), lr=config["lr"])
    run.summary(params=sum(p.numel() for p in policy.parameters()), width=config["width"], depth=config["depth"])
    run.watch(policy, every=25)
    start = _resume(run, policy, optimizer)
    steps, batch, eval_every = config["steps"], int(config.get("batch", 64)), int(config.get("eval_every", 50))
    for step in range(start, steps):
        if run.should_stop:  # the app's k / X, or Ctrl-C: keep the progress, the sweep resumes it later
            _save(run, policy, optimizer, step - 1)
            return
        targets, noise = episodes(plant, batch, seed=config["seed"] * 1_000_003 + step)  # the same batch on resume
        loss = simulate(plant, policy, targets, noise).mean() / pid_cost(plant)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        values = {"train_loss": loss.detach()}
        if (step + 1) % eval_every == 0 or step == steps - 1:
            values["cost"] = evaluate(plant, policy)
            _save(run, policy, optimizer, step)
        run.log(values, step=step)


def _resume(run: Any, policy: Policy, optimizer: torch.optim.Optimizer) -> int:
    """The first step to train: after the checkpoint, when the run was interrupted and left one."""
    path = Path(run.checkpoint_dir) / CHECKPOINT
    if run.last_step is None or not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    if state["step"] > run.last_step:  # never ahead of the records the database holds
        return 0
    policy.load_state_dict(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]) + 1


def _save(run: Any, policy: Policy, optimizer: torch.optim.Optimizer, step: int) -> None:
    if step < 0:
        return
    path = Path(run.checkpoint_dir) / CHECKPOINT
    state = {"step": step, "policy": policy.state_dict(), "optimizer": optimizer.state_dict()}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # a kill mid-save leaves the previous checkpoint whole


if __name__ == "__main__":  # the yardstick alone: python examples/own_loop/control/control.py
    plant = Plant()
    print("tuned PID gains (kp, ki, kd):", tuned_pid(plant), "cost per step:", f"{pid_cost(plant):.4f}")
    print("an untrained policy, relative to it:", f"{evaluate(plant, Policy(plant, 16, 2)):.3f}")
