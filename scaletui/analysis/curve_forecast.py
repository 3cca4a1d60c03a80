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
finished sizes, across every finished run with depth^-1/2 as a second variable (`depth_term`).

The law of one depth bends in log N, by depth in either direction (on seven runs of the default sweep
the slope of r in log N at depth 6 is 0.12 between widths 160 and 128 and 0.18-0.23 below them; at
depths 1 and 2 it flattens towards the small widths instead). So the point prediction weighs the
finished sizes by how near they are to the run's (weighted least squares, weight exp(-|log(N_i / N)| /
`NEARNESS`)): the law is then the local tangent at the nearest sizes, not a chord across all of them.
On three runs of the default sweep this took depth 6's median error from the first 30% of steps from
4.0 / 5.9 / 2.8% to 3.2 / 3.4 / 2.6%, the other depths within +-0.4% (benchmarks/curve_forecast.py).
The pooled law is weighed the same way, so its slope in log N comes from the finished sizes of any depth
nearest the run's: it predicts the first sizes of a depth, and with a chord over every size its miss
at depth 2's width 160 was 4-9% (with the tangent, depth 2's median from 30% of the steps on seven
runs went from 2.5-3.5% to 1.5-2.3%, depth 1's from 2.2-3.2% to 1.3-2.0%, in the order below).
A tangent still cannot see a bend beyond the finished sizes, and a sweep trained strictly largest
first extrapolates each depth down from its bigger sizes: depth 6's width 96 was predicted from widths
128 and 160 alone, 4.6-6.1% low (its 16 seeds' median) on four of those seven runs. So the runner starts
each depth's smallest width right after its largest (services/schedule.py) and most sizes are predicted
between two finished ones: replayed under both orders (`--order`), depth 6's median from 30% of the
steps went from 2.1-3.9% to 1.8-2.7%, the sweep's makespan unchanged (README "Learning-curve
extrapolation").
The band still comes from the law over every finished size (below): its scatter and its left-out
errors are what the law's bend can cost.

Where the run stands now. A run's loss at step t is its size's typical loss at t plus its own luck
(seed, data order), and most of that luck does not last: on the default sweep a seed's deviation from
its size's mean at step 200 of 750 carries over to its final loss with a slope of only 0.1-0.2
(correlation 0.2). Carrying all of it forward (L_t exp(r)) put 2.2-2.6% of median error on every
depth even with r known exactly at each size. So the anchor is the size's mean log loss at t over the
run and its peers (runs of the same size and plan evaluated at t: the members of its bundle, or seeds
trained before it) plus `shrink` times the run's own deviation, `shrink` being that slope measured
within the sizes of the finished runs (the least-squares slope of the final log loss on the log loss at
t, deviations from each size's mean pooled over sizes; 1, the old anchor, when no finished size has two
runs). Finished runs are anchored the same way before r is fitted, so the law and its scatter describe
the same prediction. The prediction is anchor * exp(r(N)).

The band's half width in log space combines, as independent errors, the least-squares prediction
interval of r at the run's size (Student t at the fit's residual scatter, widened by the size's
leverage, which grows as the prediction leaves the finished sizes) and the `level` quantile of the
errors made predicting each finished size from the others (the law's shape between sizes; for a depth
no finished run has, also each edge depth from the others). A depth with only two finished sizes cannot
show its law's shape; predicting outside them, it borrows the other depths' (`_borrowed_shape_half_width`).
No prediction is made from fewer finished runs than the fit has parameters plus two.

Measured on the default sweep replayed in the order it trained (benchmarks/curve_forecast.py): see
README "Learning-curve extrapolation". Only numpy and scipy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit  # Student's t quantile; scipy.stats costs ~1.2 s more to import

__all__ = ["BY_DEPTH", "POOLED", "FinalForecast", "Finished", "depth_term", "forecast_final", "latest_window",
           "window_mean", "window_means", "within_size_slope"]

BY_DEPTH = "depth"  # the ratio law of the run's own depth
POOLED = "pooled"  # every finished run, with depth^-1/2 (`depth_term`) as a second variable

#: How near, in log params, a finished size must be to the run's to shape its law: a size at distance d
#: weighs exp(-d / NEARNESS). At 0.3 the nearest two sizes of the default sweep (0.4-1.0 apart) carry
#: the line; 0.5 and 1.0 helped depth 6 less (3.5 / 4.2 / 2.8% and 3.6 / 5.4 / 2.8%), and in the pooled
#: law 0.7 and 1.5 left the worst of seven runs at 2.4% and 3.0% at depth 2 (2.3% at 0.3), 2.3% and 3.1%
#: at depth 1 (2.0%), from 30% of the steps in the order of services/schedule.py.
NEARNESS = 0.3

#: The pooled law's depth variable is depth ** DEPTH_POWER. It predicts the sizes of a depth none of
#: whose runs has finished, in the default sweep the widest of depths 1 and 2, which train before any
#: run of their depth ends, extrapolating down from the deeper ones. With log depth (the limit of a
#: power near 0) those were predicted 4-7% low (width 160 at depth 2) and depth 2 missed 3% on two of
#: five runs (3.4, 3.2%); with depth^-1/2 depth 2 measured 2.3-3.0% from 30% of the steps, depth 1
#: 1.8-2.5% (1.7-2.5% with log depth), and 1/depth moved the miss to depth 1 (2.8-3.5%).
DEPTH_POWER = -0.5


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
    coef: tuple[float, ...]  # a, b (, c): r = a + b log N (+ c depth^-1/2), the law at the run's size
    shrink: float = 1.0  # how much of the run's deviation from its size's mean at t is carried forward
    n_peers: int = 0  # runs of its size whose loss at t made that mean, besides the run itself


def _usable(refs: Sequence[Finished]) -> list[Finished]:
    return [r for r in refs if r.params > 0 and r.depth > 0 and r.at_step > 0 and r.final > 0
            and math.isfinite(r.at_step) and math.isfinite(r.final)]


def _features(params: float, depth: int, pooled: bool) -> list[float]:
    return [1.0, math.log(params), *([depth_term(depth)] if pooled else [])]


def depth_term(depth: int) -> float:
    """The pooled law's depth variable, depth ** DEPTH_POWER."""
    return float(depth) ** DEPTH_POWER


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
                   level: float = 0.9, peers_now: Sequence[float] = ()) -> FinalForecast | None:
    """The final loss of a run of `params` x `depth` whose loss is `loss_now` at step t, from finished
    runs of the same plan measured at the same step; None when they cannot say (see `_basis`).
    `peers_now`: the losses at step t of the other runs of its size and plan (not finished ones' finals)."""
    if not (loss_now > 0 and math.isfinite(loss_now) and params > 0 and depth > 0):
        return None
    usable = _usable(refs)
    chosen = _basis(usable, depth)
    if chosen is None:
        return None
    runs, pooled = chosen
    shrink = within_size_slope(usable)
    x, y = _design(runs, shrink, pooled)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)  # the law over every finished size: the band's
    local = _weighted_fit(x, y, _nearness([r.params for r in runs], params))
    x0 = np.array(_features(params, depth, pooled))
    peers = [p for p in peers_now if p > 0 and math.isfinite(p)]
    mean_now = float(np.mean(np.log([loss_now, *peers])))
    log_now = mean_now + shrink * (math.log(loss_now) - mean_now) + float(x0 @ local)
    # Two sources of error, added as independent ones: where a new run scatters around the ratio law at
    # its size, and what the law's shape gets wrong between sizes (their larger one alone covered less:
    # 80-85% at 30-50% of training on the default sweep, benchmarks/curve_forecast.py).
    shape = (_held_out_half_width(x, y, runs, level, params, depth, pooled) if pooled or _shows_its_shape(runs, params)
             else _borrowed_shape_half_width(usable, level, params, depth, shrink))
    half = math.hypot(_t_half_width(x, y, coef, x0, level), shape)
    return FinalForecast(math.exp(log_now), math.exp(log_now - half), math.exp(log_now + half),
                         level, POOLED if pooled else BY_DEPTH, len(runs), len({r.params for r in runs}),
                         tuple(float(c) for c in local), shrink, len(peers))


def _design(runs: Sequence[Finished], shrink: float, pooled: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ratio law's least-squares problem over `runs`: features (1, log N[, depth term]) and each run's
    final log loss less its anchor (`_log_anchors`)."""
    x = np.array([_features(r.params, r.depth, pooled) for r in runs])
    y = np.array([math.log(r.final) - a for r, a in zip(runs, _log_anchors(runs, shrink), strict=True)])
    return x, y


def _nearness(sizes: Sequence[float], params: float) -> np.ndarray:
    """Each finished run's weight in the law at `params`: exp(-|log(size / params)| / NEARNESS), the
    nearest size at 1 (so no weight underflows however far the run lies from every size)."""
    distance = np.abs(np.log(np.asarray(sizes, dtype=float) / params))
    return np.exp(-(distance - distance.min()) / NEARNESS)


def _weighted_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares: the coefficients minimising sum(weights * (y - x @ coef) ** 2)."""
    root = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)
    return coef


def _size_key(r: Finished) -> tuple[float, int]:
    return (r.params, r.depth)


def within_size_slope(refs: Sequence[Finished]) -> float:
    """How much of a run's deviation from its size's mean log loss at step t is still there at the end:
    the least-squares slope of log final on log loss at t, deviations taken from each size's mean and
    pooled over sizes, clipped to [0, 1]. 1 (carry it all) when no size has two runs that differ at t."""
    sizes: dict[tuple[float, int], list[Finished]] = defaultdict(list)
    for r in refs:
        sizes[_size_key(r)].append(r)
    sxx = sxy = 0.0
    for group in sizes.values():
        at = np.log([r.at_step for r in group])
        final = np.log([r.final for r in group])
        sxx += float(np.sum((at - at.mean()) ** 2))
        sxy += float(np.sum((at - at.mean()) * (final - final.mean())))
    return min(1.0, max(0.0, sxy / sxx)) if sxx > 0 else 1.0


def _log_anchors(runs: Sequence[Finished], shrink: float) -> list[float]:
    """Each finished run's anchor: its size's mean log loss at t plus `shrink` times its own deviation."""
    logs: dict[tuple[float, int], list[float]] = defaultdict(list)
    for r in runs:
        logs[_size_key(r)].append(math.log(r.at_step))
    means = {k: float(np.mean(v)) for k, v in logs.items()}
    return [means[_size_key(r)] + shrink * (math.log(r.at_step) - means[_size_key(r)]) for r in runs]


def _t_half_width(x: np.ndarray, y: np.ndarray, coef: np.ndarray, x0: np.ndarray, level: float) -> float:
    """The least-squares prediction interval's half width at x0 (log space)."""
    dof = len(y) - x.shape[1]
    scatter = math.sqrt(float(np.sum((y - x @ coef) ** 2)) / dof)
    leverage = float(x0 @ np.linalg.pinv(x.T @ x) @ x0)
    return float(stdtrit(dof, 0.5 + level / 2)) * scatter * math.sqrt(1.0 + leverage)


def _held_out_half_width(x: np.ndarray, y: np.ndarray, runs: list[Finished], level: float, params: float,
                         depth: int, pooled: bool) -> float:
    """The `level` quantile of the errors made predicting finished sizes from the others: what the law's
    shape gets wrong between sizes, which the residual scatter of one fit does not show. A run inside
    the finished sizes is judged by every size left out; a run outside them by the two edge sizes left
    out (extrapolations, like its own), their errors scaled up when it lies farther from the finished
    sizes than the left-out edge lay from the rest: the law bends, so a longer extrapolation misses by
    more (without this the band covered 82-85% at 30% of training on the default sweep, with it 86-89%).
    A pooled law predicting a depth no finished run has is judged the same way along depth too (the edge
    depths left out, scaled by the gap in log depth; the larger of the two quantiles): the first size of
    a new depth missed by up to 9% with a band made for sizes alone, and depth 1 was covered 71-80% from
    30-50% of training, 86-91% with it. An axis with fewer than three values adds nothing (one left out
    leaves too few to fit)."""
    sizes, depths = sorted({r.params for r in runs}), sorted({r.depth for r in runs})
    errors: list[float] = []
    if len(sizes) >= 3:
        outside = not sizes[0] <= params <= sizes[-1]
        errors = _left_out_errors(x, y, np.array([r.params for r in runs]), [sizes[0], sizes[-1]] if outside else sizes,
                                  params if outside else None)
    half = float(np.quantile(errors, level)) if errors else 0.0
    if pooled and depth not in depths and len(depths) >= 3:
        along = _left_out_errors(x, y, np.array([float(r.depth) for r in runs]), [depths[0], depths[-1]], depth)
        half = max(half, float(np.quantile(along, level))) if along else half
    return half


def _shows_its_shape(runs: Sequence[Finished], params: float) -> bool:
    """Whether a by-depth law's own finished sizes can say what its shape gets wrong at `params`: three
    sizes or more (one left out leaves a line), or `params` between its two (an interpolation)."""
    sizes = sorted({r.params for r in runs})
    return len(sizes) >= 3 or sizes[0] <= params <= sizes[-1]


def _borrowed_shape_half_width(usable: Sequence[Finished], level: float, params: float, depth: int,
                               shrink: float) -> float:
    """The shape term of a by-depth law that extrapolates from two sizes, which cannot show its own: the
    median over the other depths with three or more finished sizes of their `_held_out_half_width` at
    the same log distance outside their sizes; with none, the pooled law's (every finished run, depth as
    a second variable). Without it such a band held only the seeds' scatter around a two-point line: on
    seven runs of the default sweep it covered 79% from 30% of the steps (width 96 at depth 6, predicted
    from widths 128 and 160 alone, 1 time in 16 on one of them) against 97% for every other prediction;
    with it 96%, its mean half width 4.2 -> 7.6% (the others' 8.6%)."""
    own = sorted({r.params for r in usable if r.depth == depth})
    gap = _log_gap(params, own)
    shapes = []
    for other in sorted({r.depth for r in usable} - {depth}):
        runs = [r for r in usable if r.depth == other]
        sizes = sorted({r.params for r in runs})
        if len(sizes) < 3:
            continue
        at = sizes[0] * math.exp(-gap) if params < own[0] else sizes[-1] * math.exp(gap)
        shapes.append(_held_out_half_width(*_design(runs, shrink, False), runs, level, at, other, False))
    if shapes:
        return float(np.median(shapes))
    if len({r.params for r in usable}) < 3 or len({r.depth for r in usable}) < 2:
        return 0.0
    return _held_out_half_width(*_design(usable, shrink, True), list(usable), level, params, depth, True)


def _left_out_errors(x: np.ndarray, y: np.ndarray, groups: np.ndarray, left_out: Sequence[float],
                     at: float | None) -> list[float]:
    """|error| of every run of each group in `left_out` (a value of `groups`, one per run: its params or
    its depth) predicted by the law fitted on the other groups; scaled by how much farther `at` lies from
    the groups than the left-out one lay from the rest, when `at` is given (an extrapolation)."""
    values = sorted(set(groups.tolist()))
    errors: list[float] = []
    for value in left_out:
        out = groups == value
        # the rest must pin the law down: more runs than coefficients, no direction left free
        if (~out).sum() <= x.shape[1] or np.linalg.matrix_rank(x[~out]) < x.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(x[~out], y[~out], rcond=None)
        rest = [v for v in values if v != value]
        scale = 1.0 if at is None else max(1.0, _log_gap(at, values) / _log_gap(value, rest))
        errors.extend((scale * np.abs(y[out] - x[out] @ coef)).tolist())
    return errors


def _log_gap(size: float, others: Sequence[float]) -> float:
    """How far `size` lies from the nearest of `others`, in log (params or depth)."""
    return min(abs(math.log(size / o)) for o in others)


# ----------------------------------------------------------------------------- train-loss log windows


def window_mean(losses: Mapping[int, float], step: int, width: int) -> float | None:
    """The mean train loss of the `width` steps ending at `step` (a log window: one step's loss is one
    batch's, too noisy to start from); None unless each of them is there, finite and positive."""
    if width < 1 or step < width:
        return None
    values = [losses.get(s) for s in range(step - width + 1, step + 1)]
    kept = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return sum(kept) / width if len(kept) == width else None


def window_means(losses: Mapping[int, float], width: int, before: int) -> dict[int, float]:
    """The mean of every complete log window ending at a multiple of `width` below `before`."""
    if width < 1:
        return {}
    means = {s: window_mean(losses, s, width) for s in range(width, before, width)}
    return {s: m for s, m in means.items() if m is not None}


def latest_window(losses: Mapping[int, float], width: int, before: int) -> int | None:
    """The last step below `before`, a multiple of `width`, whose log window is complete; None if none."""
    if width < 1 or not losses:
        return None
    top = min(max(losses), before - 1)
    for step in range(top - top % width, 0, -width):
        if window_mean(losses, step, width) is not None:
            return step
    return None
