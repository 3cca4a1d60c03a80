"""The checks that say when a fitted law is not to be trusted: monotone data, identifiable parameters.

A law through points that do not fall with size, or whose parameters trade off against each other,
is a curve through points, not a law; these checks say so in plain words, one line per finding.
(Whether it predicts is `select`'s held-out error and `heldout`'s per-point report; whether its
exponent holds over training is `stability`.)

* `check_monotone`: is the mean loss decreasing in x within each group (widths within a depth)?
  Each violation is judged against the seed spread.
* `fit_warnings`: too few sizes, an optimiser that did not converge, an exponent at its bound, a
  floor E that the data do not identify, a bootstrap interval spanning orders of magnitude, and an
  ill-conditioned fit (`conditioning`).

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.form_models import EXPONENT_MAX
from scaletui.analysis.forms import FittedLaw, law_values

__all__ = [
    "MAX_CONDITION",
    "MAX_INTERVAL_RATIO",
    "MIN_DISTINCT_X",
    "NEGLIGIBLE_E",
    "Monotonicity",
    "Violation",
    "check_monotone",
    "conditioning",
    "fit_warnings",
]

FloatArray = np.ndarray

# ----------------------------------------------------------------------------- monotonicity


@dataclass(frozen=True)
class Violation:
    """Within one group, a larger x whose mean loss is higher than the next smaller x's.

    `spread` is the seed spread: the larger of the two seed standard deviations (ddof=1);
    NaN when both sides have a single point, and then `exceeds_spread` is None (unknown).
    """

    group: Hashable
    x_small: float
    x_large: float
    loss_small: float
    loss_large: float
    spread: float
    exceeds_spread: bool | None

    @property
    def gap(self) -> float:
        return self.loss_large - self.loss_small


@dataclass(frozen=True)
class Monotonicity:
    """Is mean loss decreasing in x within each group? `by_group[g]` answers per group."""

    by_group: dict[Hashable, bool]
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def _mean_sd(x: FloatArray, y: FloatArray) -> list[tuple[float, float, float]]:
    """(x, mean loss, seed sd) per distinct x, ascending; sd is NaN for a single point."""
    out = []
    for xv in np.unique(x):
        v = y[x == xv]
        out.append((float(xv), float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan))
    return out


def _group_violations(g: Hashable, x: FloatArray, y: FloatArray) -> list[Violation]:
    out = []
    for (xs, ms, ss), (xl, ml, sl) in itertools.pairwise(_mean_sd(x, y)):
        if ml > ms:
            spread = math.nan if math.isnan(ss) and math.isnan(sl) else float(np.nanmax([ss, sl]))
            exceeds = None if math.isnan(spread) else bool(ml - ms > spread)
            out.append(Violation(g, xs, xl, ms, ml, spread, exceeds))
    return out


def check_monotone(x: ArrayLike, loss: ArrayLike, group: ArrayLike | None = None) -> Monotonicity:
    """Compare each pair of adjacent distinct x within each group (e.g. widths within a depth).

    Adjacent pairs, not all pairs: one bad size then shows as one or two violations next to
    it, which is what a researcher needs to look at, rather than as every pair it takes part in.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    ga = np.zeros(xa.shape, dtype=int) if group is None else np.asarray(group)
    by_group: dict[Hashable, bool] = {}
    violations: list[Violation] = []
    for g in np.unique(ga):
        sel = ga == g
        key = g.item() if hasattr(g, "item") else g
        found = _group_violations(key, xa[sel], ya[sel])
        by_group[key] = not found
        violations += found
    return Monotonicity(by_group, tuple(violations))


# ----------------------------------------------------------------------------- warnings

MIN_DISTINCT_X = 4  # a 3-parameter law through 3 sizes is an interpolation, not a law
NEGLIGIBLE_E = 1e-3  # E below this fraction of the smallest loss: no floor is identified
MAX_INTERVAL_RATIO = 10.0  # bootstrap interval hi/lo above this spans orders of magnitude
MAX_CONDITION = 1e4  # cond(J^T J): predictions 100x less sensitive along some direction than another
EXPONENTS = ("alpha", "beta")  # the scaling exponents, bounded to [0, EXPONENT_MAX] by the solver
_RAW = ("alpha", "beta", "gamma", "c1", "c2")  # parameters varied as they are; the others as their logs
_FD_STEP = 1e-5


def _features(xs: ArrayLike | Sequence[ArrayLike]) -> tuple[FloatArray, ...]:
    arr = np.asarray(xs, dtype=float)
    return (arr.ravel(),) if arr.ndim <= 1 else tuple(np.asarray(v, dtype=float).ravel() for v in arr)


def _log_prediction(law: FittedLaw, coords: FloatArray, names: Sequence[str],
                    feats: tuple[FloatArray, ...]) -> FloatArray:
    params = {n: float(c) if n in _RAW else math.exp(c) for n, c in zip(names, coords, strict=True)}
    with np.errstate(all="ignore"):
        return np.log(law_values(law.form, params, *feats))


def _jacobian(law: FittedLaw, feats: tuple[FloatArray, ...]) -> FloatArray:
    """d log L_hat / d (log of each positive scale, each exponent as it is), by central differences."""
    names = list(law.params)
    coords = np.array([v if n in _RAW else math.log(max(v, 1e-300)) for n, v in law.params.items()])
    cols = []
    for i in range(coords.size):
        step = np.zeros_like(coords)
        step[i] = _FD_STEP * max(1.0, abs(coords[i]))
        cols.append((_log_prediction(law, coords + step, names, feats)
                     - _log_prediction(law, coords - step, names, feats)) / (2 * step[i]))
    return np.stack(cols, axis=1)


def conditioning(law: FittedLaw, xs: ArrayLike | Sequence[ArrayLike]) -> float:
    """Condition number of J^T J at the fit, J = d log L_hat / d theta with unit-norm columns.

    theta: the log of every positive scale (E, A, B, x_c, a break's location and sharpness) and
    every exponent as it is. Why not the Huber objective's own Hessian: with a small delta most
    residuals are in the linear part, whose second derivative is zero, so that Hessian is
    near-singular at every good fit. J^T J is singular exactly when a direction in parameter space
    leaves every prediction unchanged (E -> 0 makes its column vanish; E, A and alpha trading off
    over a narrow range of x make columns nearly parallel). Two choices make the number independent
    of units: each coefficient is taken at the geometric centre of its variable (A x_c^-alpha, not A
    at x = 1, which for N ~ 1e9 would make A and alpha collinear by construction), and the columns
    are scaled to unit norm.
    """
    feats = _features(xs)
    j = _jacobian(law, feats)
    names = list(law.params)
    for coef, expo, f in (("A", "alpha", feats[0]), ("B", "beta", feats[-1])):
        if coef in names and expo in names:  # d/d alpha at fixed A x_c^-alpha
            j[:, names.index(expo)] += float(np.mean(np.log(f))) * j[:, names.index(coef)]
    norms = np.linalg.norm(j, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(j)):
        return math.inf
    s = np.linalg.svd(j / norms, compute_uv=False)
    return math.inf if s[-1] <= 0 else float((s[0] / s[-1]) ** 2)


def _size_warnings(law: FittedLaw, feats: tuple[FloatArray, ...]) -> list[str]:
    out = []
    for name, f in zip(law.variables if len(law.variables) == len(feats) else ("x",) * len(feats), feats,
                       strict=True):
        k = int(np.unique(f).size)
        if k < MIN_DISTINCT_X:
            out.append(f"only {k} distinct {name} values: a law needs at least {MIN_DISTINCT_X}")
    return out


def _bound_warnings(law: FittedLaw) -> list[str]:
    out = []
    for name in EXPONENTS:
        value = law.params.get(name)
        if value is not None and min(abs(value), abs(value - EXPONENT_MAX)) < 1e-6:
            out.append(f"{name} = {value:.4g} is at its bound [0, {EXPONENT_MAX:g}]")
    return out


def _floor_warnings(law: FittedLaw, y: FloatArray) -> list[str]:
    e = law.params.get("E")
    if e is None or NEGLIGIBLE_E * float(y.min()) <= e:
        return []
    coef = f" (A = {law.params['A']:.3g})" if "A" in law.params else ""
    hint = " (try M1, the pure power law)" if len(law.variables) == 1 else ""  # M1 has one variable only
    return [f"E = {e:.3g} is ~0{coef}: the data show no loss floor; E is not identified{hint}"]


def _interval_warnings(intervals: Mapping[str, tuple[float, float]], level: float) -> list[str]:
    out = []
    for name, (lo, hi) in intervals.items():
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        if lo <= 0 or hi / lo > MAX_INTERVAL_RATIO:
            out.append(f"{name} not identified: its {level:.0%} bootstrap interval "
                       f"[{lo:.3g}, {hi:.3g}] spans more than a factor {MAX_INTERVAL_RATIO:g}")
    return out


def fit_warnings(law: FittedLaw, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
                 intervals: Mapping[str, tuple[float, float]] | None = None, level: float = 0.9) -> tuple[str, ...]:
    """Plain-language reasons not to trust `law` (fitted to xs, loss); empty when none apply.

    Criteria (module constants): fewer than MIN_DISTINCT_X distinct values of a variable; the
    optimiser did not converge; an exponent at its bound; E below NEGLIGIBLE_E of the smallest
    loss (no floor identified, the other parameters absorb it); a bootstrap interval (`intervals`,
    at `level`) whose hi/lo exceeds MAX_INTERVAL_RATIO (or reaches 0); J^T J with condition number
    above MAX_CONDITION.
    """
    feats, y = _features(xs), np.asarray(loss, dtype=float).ravel()
    out = _size_warnings(law, feats)
    if not law.converged:
        out.append("optimiser did not converge: the parameters are the best found, not a minimum")
    out += _bound_warnings(law) + _floor_warnings(law, y)
    out += _interval_warnings(intervals or {}, level)
    cond = conditioning(law, feats)
    if cond > MAX_CONDITION:
        out.append(f"ill-conditioned fit (cond(J^T J) = {cond:.2g}): parameters trade off "
                   "against each other and are not separately identified")
    return tuple(out)
