"""A run's final loss, predicted while it trains, from the runs of its sweep that have finished.

Why not extrapolate the run's own curve. With a decaying learning rate (the default sweep's warmup +
cosine) most of the last drop of the loss happens in the anneal, which the first 30% of a run has not
seen: a power law in steps fitted to that part, or the schedule-aware law of Tissue et al. (2024,
"Scaling law with learning rate annealing": L = L0 + A S1^-alpha - C S2, S1 the learning rate's area,
S2 its annealed area) fitted to the first 30% of the default sweep's runs, missed their final test loss
by a median 21-75% (depth 1-6; its annealing coefficient C is not identified before the anneal).

What works is the sweep itself: runs of the same training plan share the schedule, so how much a run
still falls from step t to its end, r = log(L_final / L_t), is a smooth function of its size, measured
on every finished run. So r is fitted, across the finished runs of the run's depth, as a power law in
params (M1 of `analysis.forms` in log space: r = a + b log N), or, when its depth has fewer than two
finished sizes, across every finished run with log depth as a second variable; the run's prediction is
L_t exp(r(N)). The band's half width in log space combines, as independent errors, the least-squares
prediction interval of r at the run's size (Student t at the fit's residual scatter, widened by the
size's leverage, which grows as the prediction leaves the finished sizes) and the `level` quantile of
the errors made predicting each finished size from the others (the law's shape between sizes). No
prediction is made from fewer finished runs than the fit has parameters plus two.

Measured on the default sweep replayed in the order it trained (benchmarks/curve_forecast.py): see
README "Learning-curve extrapolation". Only numpy and scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit  # Student's t quantile; scipy.stats costs ~1.2 s more to import

__all__ = ["BY_DEPTH", "POOLED", "FinalForecast", "Finished", "forecast_final"]

BY_DEPTH = "depth"  # the ratio law of the run's own depth
POOLED = "pooled"  # every finished run, with log depth as a second variable


@dataclass(frozen=True)
class Finished:
    """One finished run of the same plan: its size and its loss at step t and at its end."""

    params: float
    depth: int
    at_step: float
    final: float


@dataclass(frozen=True)
class FinalForecast:
    """The predicted final loss with its band at `level`; `basis` says which runs it was learned from."""

    predicted: float
    lo: float
    hi: float
    level: float
    basis: str  # BY_DEPTH or POOLED
    n_runs: int
    n_sizes: int
    coef: tuple[float, ...]  # a, b (, c): r = a + b log N (+ c log depth)


def _usable(refs: Sequence[Finished]) -> list[Finished]:
    return [r for r in refs if r.params > 0 and r.depth > 0 and r.at_step > 0 and r.final > 0
            and math.isfinite(r.at_step) and math.isfinite(r.final)]


def _features(params: float, depth: int, pooled: bool) -> list[float]:
    return [1.0, math.log(params), *([math.log(depth)] if pooled else [])]


def _basis(refs: list[Finished], depth: int) -> tuple[list[Finished], bool] | None:
    """The runs to learn from: the run's depth when it has two finished sizes, else every run when
    they span two sizes and two depths (else nothing to learn the shape of the curve from)."""
    same = [r for r in refs if r.depth == depth]
    if len({r.params for r in same}) >= 2 and len(same) >= 4:
        return same, False
    if len({r.params for r in refs}) >= 2 and len({r.depth for r in refs}) >= 2 and len(refs) >= 5:
        return refs, True
    return None


def forecast_final(loss_now: float, params: float, depth: int, refs: Sequence[Finished],
                   level: float = 0.9) -> FinalForecast | None:
    """The final loss of a run of `params` x `depth` whose loss is `loss_now` at step t, from finished
    runs of the same plan measured at the same step; None when they cannot say (see `_basis`)."""
    if not (loss_now > 0 and math.isfinite(loss_now) and params > 0 and depth > 0):
        return None
    chosen = _basis(_usable(refs), depth)
    if chosen is None:
        return None
    runs, pooled = chosen
    x = np.array([_features(r.params, r.depth, pooled) for r in runs])
    y = np.array([math.log(r.final / r.at_step) for r in runs])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    x0 = np.array(_features(params, depth, pooled))
    r0 = float(x0 @ coef)
    # Two sources of error, added as independent ones: where a new run scatters around the ratio law at
    # its size, and what the law's shape gets wrong between sizes. Their larger one alone (the band
    # before) covered 80-85% at 30-50% of training on the default sweep, this 86-90% (nominal 90%):
    # benchmarks/curve_forecast.py on two runs of the sweep with different random draws.
    half = math.hypot(_t_half_width(x, y, coef, x0, level), _held_out_half_width(x, y, runs, level))
    return FinalForecast(loss_now * math.exp(r0), loss_now * math.exp(r0 - half), loss_now * math.exp(r0 + half),
                         level, POOLED if pooled else BY_DEPTH, len(runs), len({r.params for r in runs}),
                         tuple(float(c) for c in coef))


def _t_half_width(x: np.ndarray, y: np.ndarray, coef: np.ndarray, x0: np.ndarray, level: float) -> float:
    """The least-squares prediction interval's half width at x0 (log space)."""
    dof = len(y) - x.shape[1]
    scatter = math.sqrt(float(np.sum((y - x @ coef) ** 2)) / dof)
    leverage = float(x0 @ np.linalg.pinv(x.T @ x) @ x0)
    return float(stdtrit(dof, 0.5 + level / 2)) * scatter * math.sqrt(1.0 + leverage)


def _held_out_half_width(x: np.ndarray, y: np.ndarray, runs: list[Finished], level: float) -> float:
    """The `level` quantile of the errors made predicting each finished size from the others: what the
    law's shape gets wrong between sizes, which the residual scatter of one fit does not show. 0 with
    fewer than three sizes (one left out leaves too few to fit)."""
    sizes = sorted({r.params for r in runs})
    if len(sizes) < 3:
        return 0.0
    errors: list[float] = []
    for size in sizes:
        out = np.array([r.params == size for r in runs])
        if len({r.params for r, o in zip(runs, out, strict=True) if not o}) < 2 or (~out).sum() <= x.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(x[~out], y[~out], rcond=None)
        errors.extend(np.abs(y[out] - x[out] @ coef).tolist())
    return float(np.quantile(errors, level)) if errors else 0.0
