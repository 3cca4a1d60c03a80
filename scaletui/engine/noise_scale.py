"""Measuring the gradient noise scale during training, at a few percent of a run's time.

B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018; see analysis/noise_scale.py for the estimator) needs
squared gradient norms at two batch sizes. A step already has the gradient of its whole batch (B); on a
measuring step the loop also takes the gradient of the loss over the first half of the batch (B/2), by a
second backward pass through the step's own forward graph (`torch.autograd.grad(..., retain_graph=True)`,
before the step's own backward). Why this way, and not a separate forward pass on half a batch:

- it changes nothing about training: no extra dropout draws, no BatchNorm running statistics, no
  accumulation into `.grad`, so a run with the measurement is the run without it (a test checks this);
- it costs one backward pass and the norms on one step in `noise_every` (>= NOISE_MIN_INTERVAL steps
  apart: under 1% of a run at width 512, 1.3-1.7% at width 64, where a step is mostly dispatch;
  measured in benchmarks/noise_scale_cost.py).

With an even batch the second half's gradient comes free: g_second = 2 g - g_first, so the small-batch
squared norm is the mean of both halves' (half the variance). With BatchNorm, a half's gradient flows
through statistics of the whole batch, so it is an approximation of a B/2 batch's gradient.

The per-tensor norms come back as 0-d tensors that ride along in the logging step's one host transfer;
on the host `squared_norms` sums their squares and `measurement_pieces` turns those into the two
unbiased pieces. G is the gradient of the training set the run samples from, without
replacement (an epoch is a permutation): a batch mean's variance is then tr(Sigma) (1/B - 1/N), so the
|G|^2 estimate gains + tr(Sigma) / N (without it, a 256-example training set reads |G|^2 too low by
tr(Sigma) / 256, often below zero; checked against exact per-example gradients, see the README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Measuring steps are at least this many steps apart. A measurement costs one extra backward pass and
#: the norms: 20 of 24 ms at width 512 depth 8 (CPU, batch 128), and at width 64 depth 2, whose 0.26 ms
#: steps are mostly dispatch, about 1.7 plain steps (the measuring step 1.4, the step after it 0.3).
#: Every 50 steps it was ~1.1-1.4% of a run (py-spy) and the largest single piece of the loop's 3%
#: monitoring budget; every 100 steps it measured 1.3-1.7% at width 64 and 0.3-0.5% at width 512
#: (benchmarks/noise_scale_cost.py, 2026-12-04). A 750-step run (the default sweep's) gets 7
#: measurements, and the running estimate averages them (B_simple is a ratio of EMAs, see record_noise).
NOISE_MIN_INTERVAL = 100


def noise_every(log_every: int) -> int:
    """The measuring cadence: the smallest multiple of `log_every` that is >= NOISE_MIN_INTERVAL, so a
    measurement always falls on a logging step (and travels in its host transfer)."""
    return log_every * math.ceil(NOISE_MIN_INTERVAL / log_every)


def measures_noise(step: int, log_every: int, batch_size: int) -> bool:
    """Whether `step` measures the noise scale (a batch needs two examples to have a half)."""
    return batch_size >= 2 and step % noise_every(log_every) == 0


def half_size(batch_size: int) -> int:
    """Examples in the small batch: the first half of the step's batch."""
    return batch_size // 2


def half_gradients(half_loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of the first half's loss, through the step's graph (kept for the step's own backward)."""
    grads = torch.autograd.grad(half_loss, list(params), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def tensor_norms(half: Sequence[torch.Tensor], full: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """The L2 norm of every tensor of the first half's gradients and of the whole batch's (the
    parameters' .grad after the step's backward), and, with an even batch, of the second half's
    (2 g - g_first): 0-d tensors on the device from ONE fused norm call, in the gradients' own precision
    (float32 norms are good to ~1e-6 relative, far below the estimator's own noise). They ride along in
    the logging step's one host transfer; `squared_norms` sums their squares on the host, where a few
    dozen float operations cost less than the five device ops that did it before (70 us less of a
    measurement's ~0.7 ms at width 64 x depth 2)."""
    tensors = list(half) + list(full)
    if batch_size % 2 == 0:
        tensors += torch._foreach_lerp(list(half), list(full), 2.0)  # half + 2 (full - half) = 2 full - half
    return list(torch._foreach_norm(tensors))


def squared_norms(norms: Sequence[float], batch_size: int) -> tuple[float, float]:
    """(|g_small|^2, |g_big|^2) from the host copy of `tensor_norms`: with an even batch the second half
    counts too, |g_small|^2 being then the mean of both halves'."""
    parts = 3 if batch_size % 2 == 0 else 2
    t = len(norms) // parts
    squares = [math.fsum(n * n for n in norms[i * t : (i + 1) * t]) for i in range(parts)]
    sq_small = squares[0] if parts == 2 else (squares[0] + squares[2]) / 2
    return sq_small, squares[1]


def member_squared_norms(half: Sequence[torch.Tensor], full: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The bundle's version: `half` holds (M, *shape) gradients of the first halves' losses (in the flat
    layout's parameter order), `full` the (M, P) gradient buffer. Returns a (2, M) float64 tensor on the
    device: every member's |g_small|^2 and |g_big|^2 (as `squared_norms` of `tensor_norms`)."""
    members = full.shape[0]
    first = torch.cat([g.reshape(members, -1) for g in half], dim=1)  # (M, P)
    parts = [first, full] if batch_size % 2 else [first, full, 2 * full - first]
    squares = torch.linalg.vector_norm(torch.stack(parts), dim=2).double().square()  # (2 or 3, M)
    sq_small = squares[0] if batch_size % 2 else (squares[0] + squares[2]) / 2
    return torch.stack([sq_small, squares[1]])


def measurement_pieces(sq_small: float, sq_big: float, batch_size: int, population: int) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) of one measurement (McCandlish et al. 2018, A.1) with B_small = B // 2,
    B_big = B, for batches drawn without replacement from `population` training examples (the same
    formulas as analysis.noise_scale.noise_pieces, which the engine may not import)."""
    b_small, b_big = half_size(batch_size), batch_size
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small) + trace / population
    return g2, trace
