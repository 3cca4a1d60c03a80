"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2 and the critical batch size it suggests.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training"): with per-example gradients of mean
G and covariance Sigma, a batch of B examples gives a gradient G_B with E|G_B|^2 = |G|^2 + tr(Sigma) / B.
So two batch sizes B_small < B_big give unbiased estimates of both terms (their Appendix A.1):

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each single measurement is very noisy (either can come out negative), and the ratio of two noisy
estimates is biased, so the pieces are averaged over measurements first (a mean, or a debiased EMA for a
running value) and only then divided. The critical batch size, the batch above which doubling the batch
no longer halves the steps, is about B_simple (B_crit ~ B_noise ~ B_simple in the paper), and it grows as
the loss falls, so the suggestion uses the last part of training.

Uncertainty: the delta method on the ratio of two means, treating measurements as independent (they are
taken steps apart, but along one trajectory: read it as a lower bound on the error).

numpy only: the engine measures the squared norms (torch), the services feed them in from the database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The fraction of a run's measurements, at its end, that the critical batch size is judged on.
TAIL_FRACTION = 0.5
EMA_BETA = 0.9  # the engine's running estimate: vocabulary.DebiasedEma's default beta


@dataclass(frozen=True)
class NoisePieces:
    """Per-measurement unbiased estimates of |G|^2 and tr(Sigma), in measurement order."""

    g2: np.ndarray  # (n,)
    trace: np.ndarray  # (n,)

    def __len__(self) -> int:
        return int(self.g2.shape[0])

    def tail(self, fraction: float = TAIL_FRACTION) -> NoisePieces:
        """The last `fraction` of the measurements (at least one, when there are any)."""
        n = len(self)
        keep = min(n, max(1, math.ceil(fraction * n))) if n else 0
        return NoisePieces(self.g2[n - keep :], self.trace[n - keep :])


def noise_pieces(sq_small: Sequence[float] | np.ndarray, sq_big: Sequence[float] | np.ndarray,
                 b_small: float, b_big: float, population: float = math.inf) -> NoisePieces:
    """Unbiased |G|^2 and tr(Sigma) from squared gradient norms measured at batch sizes b_small < b_big.

    `population`: batches drawn without replacement from this many examples (a training set of N, one
    permutation per epoch). A batch mean's variance is then tr(Sigma) (1/B - 1/N), so the two-batch
    |G|^2 estimate reads tr(Sigma) / N low and gets it added back; infinite = the paper's data stream."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small {b_small}, b_big {b_big}")
    small, big = np.asarray(sq_small, dtype=float), np.asarray(sq_big, dtype=float)
    if small.shape != big.shape:
        raise ValueError(f"{small.shape[0]} small-batch norms but {big.shape[0]} big-batch norms")
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    g2 = (b_big * big - b_small * small) / (b_big - b_small) + trace / population
    return NoisePieces(g2, trace)


@dataclass(frozen=True)
class NoiseEstimate:
    """B_simple from the means of n measurements, with its standard error (None: not resolved)."""

    b_simple: float | None  # None when the mean |G|^2 is not positive: the gradient is lost in the noise
    stderr: float | None
    g2: float  # mean |G|^2 estimate
    trace: float  # mean tr(Sigma) estimate
    n: int


def estimate(pieces: NoisePieces) -> NoiseEstimate:
    """Ratio of the means, with the delta-method standard error of a ratio of two correlated means."""
    n = len(pieces)
    if n == 0:
        return NoiseEstimate(None, None, math.nan, math.nan, 0)
    g, t = float(pieces.g2.mean()), float(pieces.trace.mean())
    if not g > 0:
        return NoiseEstimate(None, None, g, t, n)
    ratio = t / g
    return NoiseEstimate(ratio, _ratio_stderr(pieces, g, ratio), g, t, n)


def _ratio_stderr(pieces: NoisePieces, g: float, ratio: float) -> float | None:
    """sqrt(var(t - R g) / n) / mean(g): the delta method for R = mean(t) / mean(g)."""
    n = len(pieces)
    if n < 2:
        return None
    residual = pieces.trace - ratio * pieces.g2
    return float(np.sqrt(residual.var(ddof=1) / n) / g)


def running_b_simple(pieces: NoisePieces, beta: float = EMA_BETA) -> np.ndarray:
    """B_simple after each measurement: debiased EMAs of both pieces, then their ratio (NaN while the
    |G|^2 average is not positive). What the training loops record as they go."""
    out = np.full(len(pieces), np.nan)
    g_raw = t_raw = 0.0
    for i, (g, t) in enumerate(zip(pieces.g2, pieces.trace, strict=True)):
        g_raw, t_raw = beta * g_raw + (1 - beta) * g, beta * t_raw + (1 - beta) * t
        debias = 1 - beta ** (i + 1)
        if g_raw / debias > 0:
            out[i] = t_raw / g_raw  # the debiasing factors cancel in the ratio
    return out


@dataclass(frozen=True)
class CriticalBatch:
    """The critical batch size suggested by B_simple over the last part of training, with its evidence."""

    b_crit: float | None  # ~ B_simple of the tail; None when |G|^2 was not resolved there
    stderr: float | None
    low: float | None  # B_simple -/+ 2 standard errors (the low end floored at 0)
    high: float | None
    measurements: int  # all measurements
    tail: int  # measurements in the tail the estimate uses
    spread: tuple[float, float] | None  # min and max of the running B_simple over the tail (finite ones)


def critical_batch(runs: Sequence[NoisePieces], tail_fraction: float = TAIL_FRACTION) -> CriticalBatch:
    """B_crit ~ B_simple from the means of the last `tail_fraction` of each run's measurements, pooled
    (runs of one size: seeds, learning rates); the spread is that of the running B_simple over those tails."""
    tails = [run.tail(tail_fraction) for run in runs]
    est = estimate(pooled(tails))
    running = [running_b_simple(run)[len(run) - len(tail) :] for run, tail in zip(runs, tails, strict=True)]
    finite = np.concatenate([r[np.isfinite(r)] for r in running]) if running else np.zeros(0)
    spread = (float(finite.min()), float(finite.max())) if finite.size else None
    low = high = None
    if est.b_simple is not None and est.stderr is not None:
        low, high = max(0.0, est.b_simple - 2 * est.stderr), est.b_simple + 2 * est.stderr
    return CriticalBatch(est.b_simple, est.stderr, low, high, sum(len(r) for r in runs), est.n, spread)


def pooled(parts: Sequence[NoisePieces]) -> NoisePieces:
    """Several runs' measurements as one sample."""
    if not parts:
        return NoisePieces(np.zeros(0), np.zeros(0))
    return NoisePieces(np.concatenate([p.g2 for p in parts]), np.concatenate([p.trace for p in parts]))


def suggested_batch(b_crit: float, *, power_of_two: bool = True) -> int:
    """A batch size to use: B_crit rounded to the nearest power of two (batch sizes usually are), at least 1."""
    if not b_crit > 0 or not math.isfinite(b_crit):
        raise ValueError(f"B_crit must be a positive number, got {b_crit}")
    if not power_of_two:
        return max(1, round(b_crit))
    return int(2 ** max(0, round(math.log2(b_crit))))
