"""The compute-optimal frontier of L(N, D) = E + A/N^alpha + B/D^beta: for a compute budget C, which model
size N and how much data D give the lowest loss, with intervals, and how far each trained run was from it.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Approach 3) minimise the fitted law
under the constraint C = 6 N D (2 FLOPs per parameter per token forward, 3x that for forward + backward).
With the constraint written C = k N D (k = 6 for a dense net; see `services.frontier` for the k a sweep
measures), the minimum has a closed form:

    G = (alpha A / (beta B))^(1/(alpha + beta)),  a = beta/(alpha + beta),  b = alpha/(alpha + beta),
    N_opt(C) = G (C/k)^a,  D_opt(C) = G^-1 (C/k)^b,  so N_opt D_opt = C/k and a + b = 1.

(Setting the derivative of A N^-alpha + B (C/(kN))^-beta to zero gives alpha A N^-alpha = beta B D^-beta:
at the optimum the two reducible terms are in the ratio beta : alpha.) The frontier's loss is the law at
(N_opt(C), D_opt(C)). Besiroglu et al. 2024 (arXiv:2404.10102) refit Approach 3 and give the policy's
uncertainty from bootstrap draws of the five parameters; here too every interval is a percentile interval
of the closed forms evaluated on the bootstrap's parameter draws (`solve.bootstrap`), never a delta method:
G is a ratio of two coefficients raised to 1/(alpha + beta), far from linear in them.

A draw whose law has no interior optimum (alpha, beta, A or B not > 0: one term does not fall, so the
budget all goes to the other variable) gives no allocation; such draws are left out and counted.

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.forms import law_values

__all__ = [
    "HOFFMANN_K",
    "Allocation",
    "Placement",
    "PolicyBands",
    "allocation",
    "closest",
    "d_opt",
    "frontier_loss",
    "n_opt",
    "place_points",
    "policy_bands",
]

FloatArray = np.ndarray
Params = Mapping[str, "float | FloatArray"]
#: FLOPs per parameter per training example (token) in C = k N D: 2 forward (a multiply and an add per
#: weight) times 3 for forward + backward. Hoffmann et al. 2022's C = 6 N D.
HOFFMANN_K = 6.0
_CHINCHILLA = "CHINCHILLA"


@dataclass(frozen=True)
class Allocation:
    """The closed form of one law (or of many: arrays, one entry per bootstrap draw): G, a, b.

    `ok` says where the law has an interior optimum (alpha, beta, A, B all > 0 and G finite)."""

    G: FloatArray
    a: FloatArray
    b: FloatArray
    ok: FloatArray


def _as(params: Params, name: str) -> FloatArray:
    return np.asarray(params[name], dtype=float)


def allocation(params: Params) -> Allocation:
    """G = (alpha A / (beta B))^(1/(alpha + beta)), a = beta/(alpha + beta), b = alpha/(alpha + beta).

    Computed in logs (G of a small-data law can be 1e-30 or 1e30); entries without an interior optimum
    get NaN and `ok` False."""
    A, B, alpha, beta = (_as(params, n) for n in ("A", "B", "alpha", "beta"))
    ok = (alpha > 0) & (beta > 0) & (A > 0) & (B > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = np.where(ok, alpha + beta, np.nan)
        log_g = (np.log(np.where(ok, alpha * A, np.nan)) - np.log(np.where(ok, beta * B, np.nan))) / total
        G = np.exp(log_g)
    ok = ok & np.isfinite(G) & (G > 0)
    nan = np.full(np.shape(ok), np.nan)
    return Allocation(np.where(ok, G, nan), np.where(ok, beta / total, nan), np.where(ok, alpha / total, nan), ok)


def _per_unit(compute: ArrayLike, k: float) -> FloatArray:
    """C/k = N D, the budget in parameter-examples; ValueError for a budget or k that is not > 0."""
    c = np.asarray(compute, dtype=float)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"FLOPs per parameter per example must be finite and > 0, got {k}")
    if not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError("every compute budget must be finite and > 0")
    return c / k


def n_opt(params: Params, compute: ArrayLike, k: float = HOFFMANN_K) -> FloatArray:
    """N_opt(C) = G (C/k)^a. Parameters may be arrays of shape (S, 1) against budgets of shape (m,):
    the result is (S, m), one row per parameter draw."""
    al = allocation(params)
    return al.G * _per_unit(compute, k) ** al.a


def d_opt(params: Params, compute: ArrayLike, k: float = HOFFMANN_K) -> FloatArray:
    """D_opt(C) = G^-1 (C/k)^b (broadcast as in `n_opt`)."""
    al = allocation(params)
    return _per_unit(compute, k) ** al.b / al.G


def frontier_loss(params: Params, compute: ArrayLike, k: float = HOFFMANN_K) -> FloatArray:
    """The lowest loss the law reaches for compute C: L(N_opt(C), D_opt(C))."""
    return law_values(_CHINCHILLA, params, n_opt(params, compute, k), d_opt(params, compute, k))


# ----------------------------------------------------------------------------- intervals from bootstrap draws


def _interval(values: FloatArray, level: float) -> tuple[FloatArray, FloatArray]:
    """Percentile interval over axis 0 of the finite values (NaN where there are none)."""
    q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    finite = np.isfinite(values)
    if not finite.any():
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan
    lo, hi = np.nanpercentile(np.where(finite, values, np.nan), q, axis=0)
    return np.asarray(lo), np.asarray(hi)


@dataclass(frozen=True)
class PolicyBands:
    """Percentile intervals at `level` of the policy at each budget, from bootstrap parameter draws.

    Each (lo, hi) pair holds one entry per budget; `a`, `b` are the exponents' intervals. `n_draws`: draws
    used; `n_degenerate`: draws left out because their law has no interior optimum."""

    compute: FloatArray
    n_opt: tuple[FloatArray, FloatArray]
    d_opt: tuple[FloatArray, FloatArray]
    loss: tuple[FloatArray, FloatArray]
    d_per_n: tuple[FloatArray, FloatArray]
    a: tuple[float, float]
    b: tuple[float, float]
    level: float
    n_draws: int
    n_degenerate: int


def _draw_params(names: Sequence[str], samples: FloatArray) -> dict[str, FloatArray]:
    """Bootstrap draws (S, p) as parameters of shape (S, 1), which broadcast against budgets (m,)."""
    return {n: samples[:, j:j + 1] for j, n in enumerate(names)}


def policy_bands(names: Sequence[str], samples: ArrayLike, compute: ArrayLike, *, k: float = HOFFMANN_K,
                 level: float = 0.9) -> PolicyBands:
    """Intervals of N_opt, D_opt, the frontier's loss and D_opt/N_opt at each budget, and of a and b, from
    bootstrap draws `samples[i, j]` of parameter `names[j]` (the rows of `solve.Bootstrap.samples`)."""
    draws = np.asarray(samples, dtype=float).reshape(-1, len(names))
    c = np.atleast_1d(np.asarray(compute, dtype=float))
    params = _draw_params(names, draws)
    al = allocation(params)
    good = al.ok[:, 0]
    params = {n: v[good] for n, v in params.items()}
    n = n_opt(params, c, k)
    d = d_opt(params, c, k)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = law_values(_CHINCHILLA, params, n, d)
    a_lo, a_hi = _interval(al.a[good, 0], level)
    b_lo, b_hi = _interval(al.b[good, 0], level)
    return PolicyBands(c, _interval(n, level), _interval(d, level), _interval(loss, level), _interval(d / n, level),
                       (float(a_lo), float(a_hi)), (float(b_lo), float(b_hi)), level, int(good.sum()),
                       int((~good).sum()))


# ----------------------------------------------------------------------------- where the trained runs lie


@dataclass(frozen=True)
class Placement:
    """One trained (N, D) against the frontier at its own compute C.

    ratio: measured loss / frontier loss at C (1 = on the frontier; below 1 only by noise or misfit).
    law_ratio: the law's loss at (N, D) / frontier loss at C (>= 1 when C = k N D: what the law says this
    split of the budget cost). log10_n_ratio: log10(N / N_opt(C)), > 0 for a model too big for its budget
    (too little data), < 0 for one too small."""

    n: float
    d: float
    compute: float
    loss: float
    frontier_loss: float
    ratio: float
    law_ratio: float
    log10_n_ratio: float


def place_points(params: Params, n: ArrayLike, d: ArrayLike, compute: ArrayLike, loss: ArrayLike, *,
                 k: float = HOFFMANN_K) -> list[Placement]:
    """Each point (N, D, its compute, its measured loss) placed against the frontier of the law `params`."""
    N, D, C, L = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (n, d, compute, loss))
    best = frontier_loss(params, C, k)
    law = law_values(_CHINCHILLA, params, N, D)
    n_best = n_opt(params, C, k)
    return [Placement(float(N[i]), float(D[i]), float(C[i]), float(L[i]), float(best[i]), float(L[i] / best[i]),
                      float(law[i] / best[i]), float(np.log10(N[i] / n_best[i]))) for i in range(N.size)]


def closest(placements: Sequence[Placement], by: str = "ratio") -> int:
    """Index of the point closest to optimal: the loss nearest the frontier's at its compute (`by="ratio"`:
    the smallest |log(loss / frontier loss)|), or the smallest distance from N_opt(C) in log N (`by="log_n"`).

    Near in either direction: no run can beat the optimum, so a loss below the frontier is noise or a law that
    misfits there, and the point furthest below it is not the best-spent budget. ValueError for no points or
    an unknown `by`."""
    if not placements:
        raise ValueError("no points to place against the frontier")
    keys = {"ratio": lambda p: abs(math.log(p.ratio)), "log_n": lambda p: abs(p.log10_n_ratio)}
    if by not in keys:
        raise ValueError(f"closest by {by!r}: choose ratio or log_n")
    key = keys[by]
    return min(range(len(placements)), key=lambda i: (key(placements[i]), i))
