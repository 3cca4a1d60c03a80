"""Each functional form in the coordinates its optimiser works in: residuals, exact Jacobians, bounds, seeds.

Why a second description of the forms (`forms` has the natural one): fitting needs coordinates in
which the problem is well conditioned and the constraints are boxes, and it needs them *batched*,
so one call evaluates many parameter vectors against many weightings of the data (grid seeds,
multistarts, held-out refits and bootstrap resamples are all rows of one batch). Choices:

* x enters as u = log x - mean(log x): a coefficient is fitted at the data's centre (a = log A - alpha
  mean(log x)), which decorrelates it from the exponent (for N ~ 1e9, log A and alpha are otherwise
  almost collinear);
* positive scales are fitted as logs (e = log E, log of a break's sharpness), breaks and bends as
  log-locations u;
* M4's starting plateau is E0 = max(y) + exp(e0), so E0 > every observed loss by construction.

Two residual spaces (see `solve.LossSpec`): "log", r = log L_hat - log L (relative error of the loss,
as Hoffmann et al. and Besiroglu et al.), and "log_excess", the residual in the space where the form is
a power law, r = log g(L_hat) - log g(L) with g(L) = L - E (M2, BNSL, CHINCHILLA) or
(L - E)/(E0 - L)^gamma (M4) - the objective of Alabdulmohsin et al.'s M2 and M4 code. Forms without a
floor (M1, M3) have one space of their own. A third space, "log1p", r = log(1 + L_hat) - log(1 + L)
(the mean squared log error that Caballero et al. fit BNSL with), needs nothing of a form but its
"log" residuals and Jacobian: `solve` derives it for every form. Rows whose weight is 0 (held-out
points) may violate L > E; their residuals are computed on a clipped value and then ignored by the
objective.

Seeds. Every form is linear in some parameters once the others are fixed (the coefficients
and the floor of M2, BNSL and CHINCHILLA in loss units; log E and alpha of M3 in log units; log A,
alpha and gamma of M4 in its transformed space). Seeds are therefore a dense grid over the nonlinear
parameters with the linear ones solved exactly at every grid point (non-negative least squares by
enumerating active sets, which is exact for up to 3 coefficients) - variable projection on a grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from scaletui.analysis.forms import m4_excess

__all__ = [
    "LOG",
    "LOG1P",
    "LOG_EXCESS",
    "MODELS",
    "Data",
    "Distinct",
    "Model",
    "Seeds",
    "model",
    "nnls_small",
    "normal_equations",
    "seed_normal_equations",
    "shared_normal_equations",
]

FloatArray = np.ndarray
Residuals = tuple[np.ndarray, "np.ndarray | None"]
LOG = "log"
LOG_EXCESS = "log_excess"
LOG1P = "log1p"  # log(1 + L_hat) - log(1 + L): derived from "log" by the solver for every form (solve._residuals)
TINY = 1e-300
E_MIN_FRACTION = 1e-6  # E >= this x smallest loss: below it E is zero for every purpose
FLOOR_MARGIN = 1e-3  # in "log_excess", E <= (1 - margin) x smallest loss (log(L - E) must exist)
E0_MARGIN = 1e-3  # M4: E0 >= max loss x (1 + margin); a bound B allows E0 <= B x (1 + margin)
EXPONENT_MAX = 10.0
GAMMA_MAX = 20.0
BREAK_SLOPE_MAX = 50.0
SHARPNESS_RANGE = (0.01, 10.0)


def _softplus(z: FloatArray) -> FloatArray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True, eq=False)
class Data:
    """A data set in model coordinates: u (V, n) centred log of each variable, y (n,), settings.

    upper_bound: the metric's known upper bound (M4's E0 may not exceed it), or None.
    """

    u: FloatArray
    centre: FloatArray
    y: FloatArray
    upper_bound: float | None = None
    top: float | None = None  # the largest loss, when y is not the whole data set (`Distinct`)

    @staticmethod
    def build(xs: Sequence[FloatArray], y: FloatArray, upper_bound: float | None = None) -> Data:
        logx = np.log(np.vstack([np.asarray(x, dtype=float) for x in xs]))
        centre = logx.mean(axis=1)
        return Data(logx - centre[:, None], centre, np.asarray(y, dtype=float), upper_bound)

    @cached_property
    def logy(self) -> FloatArray:
        return np.log(self.y)

    @property
    def y_top(self) -> float:
        return float(self.y.max()) if self.top is None else self.top

    @property
    def seed_points(self) -> Data:
        """The points a seed grid's basis is evaluated at: the distinct ones (`distinct`), or all."""
        shared = self.distinct
        return self if shared is None else shared.data

    def grouped(self, w: FloatArray) -> tuple[Data, FloatArray]:
        """This data set and weight rows w (R, n) with the points ordered by their distinct point (seeds
        of one size next to each other), or both unchanged when they already are or none repeat. A fit's
        answer does not depend on the order of its points; the solver's per-size sums are faster this way."""
        shared = self.distinct
        if shared is None or shared.grouped:
            return self, w
        order = shared.order
        return Data(self.u[:, order], self.centre, self.y[order], self.upper_bound, self.top), w[:, order]

    @cached_property
    def distinct(self) -> Distinct | None:
        """The data's distinct points (`Distinct`), or None when no two points share their variables."""
        points, index = np.unique(self.u, axis=1, return_inverse=True)
        if points.shape[1] == self.y.size:
            return None
        return Distinct.of(self, points, index.ravel())


@dataclass(frozen=True, eq=False)
class Distinct:
    """The distinct points of a data set (a sweep's seeds share their size), for evaluating a form once
    per size instead of once per seed.

    In the "log" space a residual is log L_hat(x_i) - log y_i: the model's part depends on x_i only,
    so the solver evaluates it (and its Jacobian) at the distinct points and spreads it to the points
    (`index`); the Huber weights of a size's points are then summed per size (`fold`) for the
    gradient and the curvature. That is exact for any loss, not the fit of per-size means (which is
    exact for least squares only: sum_j (f - z_j)^2 = n (f - mean z)^2 + const, while Huber's
    minimiser over a size's seeds is not a function of their mean). `data` holds the distinct points
    with y = the geometric mean there (only its log is read) and the whole data set's largest loss
    (M4 places its upper plateau above it). "log_excess" residuals, log(y_i - E), depend on each
    point's own loss, so that space uses every point.
    """

    data: Data
    index: FloatArray  # (n,): the distinct point of each point
    order: FloatArray  # (n,): the points sorted by their distinct point
    starts: FloatArray  # (k,): where each distinct point's run begins in `order`
    grouped: bool  # the points are already sorted by their distinct point (`order` is the identity)

    @staticmethod
    def of(data: Data, points: FloatArray, index: FloatArray) -> Distinct:
        order = np.argsort(index, kind="stable")
        starts = np.searchsorted(index[order], np.arange(points.shape[1]))
        mean_logy = np.bincount(index, data.logy) / np.bincount(index)
        at = Data(points, data.centre, np.exp(mean_logy), data.upper_bound, data.y_top)
        return Distinct(at, index, order, starts, bool(np.all(np.diff(index) >= 0)))

    def fold(self, values: FloatArray) -> FloatArray:
        """Per-point values (R, n) summed over each distinct point's points: (R, k). On grouped points
        a plain segment sum; otherwise the gather that groups them first costs 2-4x the sum (the
        solver folds three (R, n) arrays every iteration, hence `Data.grouped`)."""
        return np.add.reduceat(values if self.grouped else values[:, self.order], self.starts, axis=1)

    def spread(self, values: FloatArray) -> FloatArray:
        """Per-distinct-point values (R, k) repeated for each of its points: (R, n)."""
        return values[:, self.index]


def _row_extremes(y: FloatArray, w: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Smallest and largest y among the points each weight row uses, shape (R,) each."""
    used = w > 0
    return np.where(used, y, np.inf).min(axis=1), np.where(used, y, -np.inf).max(axis=1)


def _floor_bounds(y: FloatArray, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
    """Bounds of e = log E per row: E >= 1e-6 ymin; E <= ymax (log) or (1 - margin) ymin (log_excess)."""
    lo_y, hi_y = _row_extremes(y, w)
    upper = hi_y if space == LOG else lo_y * (1.0 - FLOOR_MARGIN)
    return np.log(E_MIN_FRACTION * lo_y), np.log(upper)


def _log_above(y: FloatArray, floor: FloatArray) -> FloatArray:
    """log(y - E), clipped where a held-out point lies below E (its residual is ignored)."""
    return np.log(np.maximum(y - floor, TINY))


# ----------------------------------------------------------------------------- small exact NNLS


@dataclass(frozen=True)
class Normal:
    """Normal equations of a weighted least-squares problem sum_i w_i (phi_i . c - z_i)^2:
    gram = Phi^T W Phi (..., m, m), rhs = Phi^T W z (..., m), zz = z^T W z (...)."""

    gram: FloatArray
    rhs: FloatArray
    zz: FloatArray


def normal_equations(phi: FloatArray, z: FloatArray, w: FloatArray) -> Normal:
    """Normal equations for phi (..., n, m), z (..., n), w (..., n), broadcast over leading axes."""
    wphi = phi * w[..., None]
    return Normal(np.einsum("...ni,...nj->...ij", wphi, phi), np.einsum("...ni,...n->...i", wphi, z),
                  np.sum(w * z * z, axis=-1))


def shared_normal_equations(phi: FloatArray, z: FloatArray, w: FloatArray) -> Normal:
    """Normal equations for a basis shared by every weight row: phi (G, n, m), z (n,) or (R, n),
    w (R, n) -> shapes (R, G, m, m), (R, G, m), (R, 1). Each entry is one matrix product
    (R, n) x (n, G), so a grid of thousands of bases costs a few BLAS calls."""
    m = phi.shape[-1]
    gram = np.empty((w.shape[0], phi.shape[0], m, m))
    for i in range(m):
        for j in range(i, m):
            gram[..., i, j] = gram[..., j, i] = w @ (phi[..., i] * phi[..., j]).T
    wz = w * z
    rhs = np.stack([wz @ phi[..., i].T for i in range(m)], axis=-1)
    return Normal(gram, rhs, np.sum(wz * z, axis=-1, keepdims=True))


def seed_normal_equations(phi: FloatArray, z: FloatArray, w: FloatArray, data: Data) -> Normal:
    """Normal equations of sum_i w_i (phi_s(i) . c - z_i)^2 for a basis shared by every weight row and
    given at the data's `seed_points` (G, k, m), with a target z (n,) and weights w (R, n) per point.

    The points of one size share its basis row, so their terms add up exactly: a size contributes
    phi_s phi_s^T sum w, phi_s sum w z, and sum w z^2 - the same equations from k rows instead of n
    (the matrix products of a seed grid shrink by the number of seeds per size)."""
    shared = data.distinct
    weight, moment = (w, w * z) if shared is None else (shared.fold(w), shared.fold(w * z))
    target = np.divide(moment, weight, out=np.zeros_like(moment), where=weight > 0)
    eq = shared_normal_equations(phi, target, weight)
    return Normal(eq.gram, eq.rhs, np.sum(w * z * z, axis=-1, keepdims=True))


def _cross_normal_equations(phi: FloatArray, z: FloatArray, w: FloatArray) -> Normal:
    """Normal equations for every pair of a basis phi (L, n, m) shared by all rows and a target
    z (R, F, n) per row: shapes (R, 1, L, m, m), (R, F, L, m), (R, F, 1), all by matrix products."""
    shared = shared_normal_equations(phi, np.zeros(phi.shape[1]), w)
    wz = w[:, None, :] * z
    rhs = np.einsum("rfn,lnj->rflj", wz, phi, optimize=True)
    return Normal(shared.gram[:, None], rhs, np.sum(wz * z, axis=-1)[..., None])


def nnls_small(eq: Normal, nonneg: Sequence[bool]) -> tuple[FloatArray, FloatArray]:
    """Solution c and residual sum of squares of min sum_i w_i (phi_i . c - z_i)^2 with c_j >= 0
    where nonneg[j], for every problem of a batch of normal equations (m <= 4).

    Exact: a convex QP with sign constraints is solved by the unconstrained solution on some
    support, so every support (active set) is solved and the best feasible one kept.
    """
    m = eq.rhs.shape[-1]
    if m == 2:
        return _nnls2(eq, nonneg)
    ridge = 1e-12 * (np.trace(eq.gram, axis1=-2, axis2=-1)[..., None, None] + 1e-300)
    constrained = [j for j in range(m) if nonneg[j]]
    best, best_sse = np.zeros(eq.rhs.shape), np.broadcast_to(eq.zz, eq.rhs.shape[:-1]).copy()  # c = 0
    for k in range(len(constrained) + 1):
        for zeroed in itertools.combinations(constrained, k):
            keep = np.array([j not in zeroed for j in range(m)])
            if not keep.any():
                continue
            c = _solve_support(eq.gram, eq.rhs, keep, ridge)
            sse = eq.zz - 2 * np.sum(c * eq.rhs, axis=-1) + np.einsum("...i,...ij,...j->...", c, eq.gram, c)
            if constrained:
                sse = np.where(np.all(c[..., constrained] >= -1e-12, axis=-1), sse, np.inf)
            take = sse < best_sse
            best = np.where(take[..., None], c, best)
            best_sse = np.where(take, sse, best_sse)
    return np.maximum(best, np.where(np.array(nonneg), 0.0, -np.inf)), best_sse


def _nnls2(eq: Normal, nonneg: Sequence[bool]) -> tuple[FloatArray, FloatArray]:
    """`nnls_small` for two coefficients, written out (the seed grids solve ~10^6 of these)."""
    g00, g01, g11 = eq.gram[..., 0, 0], eq.gram[..., 0, 1], eq.gram[..., 1, 1]
    r0, r1 = eq.rhs[..., 0], eq.rhs[..., 1]
    ridge = 1e-12 * (g00 + g11) + 1e-300
    d0, d1 = g00 + ridge, g11 + ridge
    det = d0 * d1 - g01 * g01
    f0, f1 = (d1 * r0 - g01 * r1) / det, (d0 * r1 - g01 * r0) / det  # both coefficients free
    free_sse = eq.zz - (f0 * r0 + f1 * r1)  # at an unconstrained optimum, sse = zz - c.rhs
    ok = ~(((f0 < 0) & nonneg[0]) | ((f1 < 0) & nonneg[1]))
    zz = np.broadcast_to(eq.zz, free_sse.shape)
    c0, c1 = np.where(ok, f0, 0.0), np.where(ok, f1, 0.0)  # else start from c = 0 (always feasible)
    best_sse = np.where(ok, free_sse, zz)
    for keep_first in (True, False):  # one coefficient zero (only if that one is constrained)
        if not nonneg[1 if keep_first else 0]:
            continue
        c = r0 / d0 if keep_first else r1 / d1
        sse = eq.zz - c * (r0 if keep_first else r1)
        take = ((c >= 0) | (not nonneg[0 if keep_first else 1])) & (sse < best_sse)
        c0 = np.where(take, c if keep_first else 0.0, c0)
        c1 = np.where(take, 0.0 if keep_first else c, c1)
        best_sse = np.where(take, sse, best_sse)
    return np.stack([c0, c1], axis=-1), best_sse


def _solve_support(gram: FloatArray, rhs: FloatArray, keep: FloatArray, ridge: FloatArray) -> FloatArray:
    """Unconstrained normal equations on the columns in `keep`; the others are 0."""
    eye = np.eye(gram.shape[-1])
    g = np.where(keep[:, None] & keep[None, :], gram, 0.0) + np.where(keep, 0.0, 1.0) * eye + ridge * eye
    return solve_small(g, np.where(keep, rhs, 0.0))


def solve_small(a: FloatArray, b: FloatArray) -> FloatArray:
    """x with a x = b for a batch of small systems a (..., m, m), b (..., m). m <= 2 in closed form
    (np.linalg.solve costs microseconds per call, and seed grids solve hundreds of thousands)."""
    m = b.shape[-1]
    if m == 1:
        return b / a[..., 0]
    if m == 2:
        det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
        x0 = (a[..., 1, 1] * b[..., 0] - a[..., 0, 1] * b[..., 1]) / det
        x1 = (a[..., 0, 0] * b[..., 1] - a[..., 1, 0] * b[..., 0]) / det
        return np.stack([x0, x1], axis=-1)
    if m == 3:
        return _solve3(a, b)
    return np.linalg.solve(a, b[..., None])[..., 0]


def _solve3(a: FloatArray, b: FloatArray) -> FloatArray:
    """Cramer's rule for a batch of 3 x 3 systems: x_k = det(a with column k replaced by b) / det(a)."""
    a = np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape[:-1] + (3, 3)))
    cols = []
    for k in range(3):
        ak = a.copy()
        ak[..., :, k] = b
        cols.append(_det3(ak))
    return np.stack(cols, axis=-1) / _det3(a)[..., None]


def _det3(a: FloatArray) -> FloatArray:
    return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
            - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
            + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))


# ----------------------------------------------------------------------------- the model interface


@dataclass(frozen=True)
class Seeds:
    """Starting points from a grid: theta (R, G, p) for each weight row and the grid's `shape`
    (prod = G, for finding its local minima). `proxy` (R, G), when given, is a cheap stand-in for
    the objective (the seed's least-squares error in the space where it was solved): it ranks a
    grid too large to score exactly (`rank_by_proxy`), or adds diverse starts to a bootstrap."""

    theta: FloatArray
    shape: tuple[int, ...]
    proxy: FloatArray | None = None
    rank_by_proxy: bool = False


class Model:
    """One form in optimiser coordinates. Subclasses define the formulas; this class the plumbing."""

    name: str = ""
    names: tuple[str, ...] = ()  # optimiser coordinates, for messages
    spaces: tuple[str, ...] = (LOG, LOG_EXCESS)
    n_vars: int = 1
    has_proxy: bool = False  # its seeds come with a cheap proxy of the objective (see Seeds)

    @property
    def n_params(self) -> int:
        return len(self.names)

    def residuals(self, theta: FloatArray, data: Data, space: str, jac: bool = True) -> Residuals:
        """r (R, n) and, when `jac`, dr/dtheta (R, n, p) for parameter rows theta (R, p)."""
        raise NotImplementedError

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        """Box bounds (R, p) for each weight row w (R, n)."""
        raise NotImplementedError

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        """Starting points for each weight row w (R, n) (see `Seeds`)."""
        raise NotImplementedError

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        """Natural parameters (the names of `forms`) of one optimum theta (p,)."""
        raise NotImplementedError

    def min_points(self) -> int:
        """Fewest distinct sizes this form needs: its parameter count plus one to judge the fit."""
        return self.n_params + 1


# ----------------------------------------------------------------------------- M1


class M1(Model):
    """log L = a - alpha u: linear, so the seed is the exact least-squares line."""

    name, names, spaces = "M1", ("a", "alpha"), (LOG,)

    def residuals(self, theta: FloatArray, data: Data, space: str, jac: bool = True) -> Residuals:
        u = data.u[0]
        r = theta[:, :1] - theta[:, 1:2] * u - data.logy
        if not jac:
            return r, None
        return r, np.broadcast_to(np.stack([np.ones_like(u), -u], axis=-1), r.shape + (2,))

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        rows = w.shape[0]
        return (np.tile([-np.inf, 0.0], (rows, 1)), np.tile([np.inf, EXPONENT_MAX], (rows, 1)))

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        u = data.seed_points.u[0]
        phi = np.stack([np.ones_like(u), -u], axis=-1)[None]
        coef, _ = nnls_small(seed_normal_equations(phi, data.logy, w, data), (False, True))
        return Seeds(coef, (1,))

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        a, alpha = theta
        return {"A": math.exp(a + alpha * data.centre[0]), "alpha": float(alpha)}


# ----------------------------------------------------------------------------- floor + power term(s)


class _Floored(Model):
    """Forms L = E + exp(h(theta_h, u)): M2, BNSL, CHINCHILLA share the floor arithmetic.

    theta = [theta_h..., e] with e = log E last. Subclasses give h and dh/dtheta_h (R, n, p-1).
    """

    def head(self, theta: FloatArray, data: Data, jac: bool = True) -> Residuals:
        """h (R, n) = log of the power part, and dh/dtheta_h (R, n, p - 1) when `jac`."""
        raise NotImplementedError

    def residuals(self, theta: FloatArray, data: Data, space: str, jac: bool = True) -> Residuals:
        h, dh = self.head(theta[:, :-1], data, jac)
        e = theta[:, -1:]
        if space == LOG:
            lse = np.logaddexp(h, e)
            if dh is None:
                return lse - data.logy, None
            share = np.exp(h - lse)  # d lse / d h; the floor's share is 1 - share
            return lse - data.logy, np.concatenate([dh * share[..., None], (1.0 - share)[..., None]], axis=-1)
        floor = np.exp(e)
        r = h - _log_above(data.y, floor)
        if dh is None:
            return r, None
        de = floor / np.maximum(data.y - floor, TINY)  # d/de of -log(y - e^e)
        return r, np.concatenate([dh, de[..., None]], axis=-1)

    def floor_seed(self, basis: FloatArray, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        """Solve (E, coefficients >= 0) by relative least squares, min sum_i w_i (L_hat_i / L_i - 1)^2,
        for power terms given at the data's `seed_points` as a basis shared by all rows (G, k, m) or
        per row (R, G, k, m).

        Points sharing a size share their basis row phi_s, so their terms add up exactly:
        sum_i w_i (phi_s.c / y_i - 1)^2 = (phi_s.c)^2 sum w/y^2 - 2 phi_s.c sum w/y + sum w.

        Returns ((R, G, m + 1) = [log of each coefficient, log E] with E clipped into its bounds,
        the relative sum of squares (R, G)).
        """
        ones = np.ones(basis.shape[:-1] + (1,))
        phi = np.concatenate([ones, basis], axis=-1)
        relative = w / data.y**2  # sum_i w_i (phi.c / y_i - 1)^2 = sum_i (w_i / y_i^2) (phi.c - y_i)^2
        if basis.ndim == 3:
            eq = seed_normal_equations(phi, data.y, relative, data)
        else:
            eq = _per_row_normal_equations(phi, data.y, relative, data)
        coef, sse = nnls_small(eq, (True,) * phi.shape[-1])
        lo, hi = _floor_bounds(data.y, w, space)
        e = np.clip(np.log(np.maximum(coef[..., 0], TINY)), lo[:, None], hi[:, None])
        return np.concatenate([np.log(np.maximum(coef[..., 1:], TINY)), e[..., None]], axis=-1), sse


def _per_row_normal_equations(phi: FloatArray, z: FloatArray, w: FloatArray, data: Data) -> Normal:
    """`seed_normal_equations` for a basis per weight row (R, G, k, m)."""
    shared = data.distinct
    weight, moment = (w, w * z) if shared is None else (shared.fold(w), shared.fold(w * z))
    target = np.divide(moment, weight, out=np.zeros_like(moment), where=weight > 0)
    eq = normal_equations(phi, target[:, None, :], weight[:, None, :])
    return Normal(eq.gram, eq.rhs, np.sum(w * z * z, axis=-1)[:, None])


class M2(_Floored):
    """L = E + exp(a - alpha u); seeds from a dense alpha grid with (E, A) solved at each value."""

    name, names = "M2", ("a", "alpha", "e")
    ALPHAS = np.concatenate([[0.0], np.geomspace(0.005, EXPONENT_MAX, 160)])

    def head(self, theta: FloatArray, data: Data, jac: bool = True) -> Residuals:
        u = data.u[0]
        h = theta[:, :1] - theta[:, 1:2] * u
        if not jac:
            return h, None
        return h, np.stack([np.ones_like(h), -np.broadcast_to(u, h.shape)], axis=-1)

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        lo_e, hi_e = _floor_bounds(data.y, w, space)
        rows = w.shape[0]
        lo = np.column_stack([np.full(rows, -np.inf), np.zeros(rows), lo_e])
        hi = np.column_stack([np.full(rows, np.inf), np.full(rows, EXPONENT_MAX), hi_e])
        return lo, hi

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        alphas = self.ALPHAS
        lin, _ = self.floor_seed(np.exp(-alphas[:, None] * data.seed_points.u[0][None, :])[..., None], data, w, space)
        theta = np.stack([lin[..., 0], np.broadcast_to(alphas, lin.shape[:2]), lin[..., 1]], axis=-1)
        return Seeds(theta, (alphas.size,))

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        a, alpha, e = theta
        return {"E": math.exp(e), "A": math.exp(a + alpha * data.centre[0]), "alpha": float(alpha)}


class Chinchilla(_Floored):
    """L = E + exp(a - alpha u_N) + exp(b - beta u_D); seeds on an (alpha, beta) grid, (E, A, B) solved."""

    name, names, n_vars = "CHINCHILLA", ("a", "alpha", "b", "beta", "e"), 2
    EXPONENTS = np.concatenate([[0.0], np.geomspace(0.02, 3.0, 24)])

    def head(self, theta: FloatArray, data: Data, jac: bool = True) -> Residuals:
        un, ud = data.u
        t1 = theta[:, :1] - theta[:, 1:2] * un
        t2 = theta[:, 2:3] - theta[:, 3:4] * ud
        h = np.logaddexp(t1, t2)
        if not jac:
            return h, None
        s1 = np.exp(t1 - h)
        s2 = 1.0 - s1
        dh = np.stack([s1, -s1 * un, s2, -s2 * ud], axis=-1)
        return h, dh

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        lo_e, hi_e = _floor_bounds(data.y, w, space)
        rows = w.shape[0]
        free, zero, top = np.full(rows, np.inf), np.zeros(rows), np.full(rows, EXPONENT_MAX)
        return (np.column_stack([-free, zero, -free, zero, lo_e]), np.column_stack([free, top, free, top, hi_e]))

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        g = self.EXPONENTS
        al, be = (v.ravel() for v in np.meshgrid(g, g, indexing="ij"))
        un, ud = data.seed_points.u
        basis = np.stack([np.exp(-al[:, None] * un), np.exp(-be[:, None] * ud)], axis=-1)
        lin, _ = self.floor_seed(basis, data, w, space)
        shape = lin.shape[:2]
        theta = np.stack([lin[..., 0], np.broadcast_to(al, shape), lin[..., 1], np.broadcast_to(be, shape),
                          lin[..., 2]], axis=-1)
        return Seeds(theta, (g.size, g.size))

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        a, alpha, b, beta, e = theta
        return {"E": math.exp(e), "A": math.exp(a + alpha * data.centre[0]), "alpha": float(alpha),
                "B": math.exp(b + beta * data.centre[1]), "beta": float(beta)}


class BNSL(_Floored):
    """L = E + exp(a - alpha u - sum_i c_i f_i softplus((u - v_i) / f_i)), f_i = exp(phi_i).

    theta = [a, alpha, (c_i, v_i, phi_i)..., e]; v_i = log d_i - mean log x. Breaks are kept inside
    the observed range (a break beyond the data is a guess the data cannot support).
    Seeds: one break on a grid over (alpha, c1, v1, f1) with (E, A) solved; a second break is
    added to the best one-break fits on a grid over (c2, v2, f2).
    """

    has_proxy = True

    def __init__(self, breaks: int) -> None:
        self.breaks = breaks
        self.name = f"BNSL{breaks}"
        per = tuple(f"{k}{i}" for i in range(1, breaks + 1) for k in ("c", "v", "phi"))
        self.names = ("a", "alpha") + per + ("e",)

    def head(self, theta: FloatArray, data: Data, jac: bool = True) -> Residuals:
        u = data.u[0]
        h = theta[:, :1] - theta[:, 1:2] * u
        cols = [np.ones_like(h), -np.broadcast_to(u, h.shape)]
        for i in range(self.breaks):
            first = 2 + 3 * i
            c, v, f = theta[:, first:first + 1], theta[:, first + 1:first + 2], np.exp(theta[:, first + 2:first + 3])
            z = (u - v) / f
            sp = _softplus(z)
            h = h - c * f * sp
            if jac:
                sg = _sigmoid(z)
                cols += [-f * sp, c * sg, -c * f * (sp - z * sg)]
        return h, (np.stack(cols, axis=-1) if jac else None)

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        lo_e, hi_e = _floor_bounds(data.y, w, space)
        rows = w.shape[0]
        u_lo, u_hi = float(data.u[0].min()), float(data.u[0].max())
        lo = [-np.inf, 0.0] + [0.0, u_lo, math.log(SHARPNESS_RANGE[0])] * self.breaks
        hi = [np.inf, EXPONENT_MAX] + [BREAK_SLOPE_MAX, u_hi, math.log(SHARPNESS_RANGE[1])] * self.breaks
        return (np.column_stack([np.tile(lo, (rows, 1)), lo_e]), np.column_stack([np.tile(hi, (rows, 1)), hi_e]))

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        out = {"E": math.exp(theta[-1]), "A": math.exp(theta[0] + theta[1] * data.centre[0]),
               "alpha": float(theta[1])}
        for i in range(self.breaks):
            c, v, phi = theta[2 + 3 * i:5 + 3 * i]
            out.update({f"c{i + 1}": float(c), f"d{i + 1}": math.exp(v + data.centre[0]), f"f{i + 1}": math.exp(phi)})
        return out

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        one = _bnsl1_seeds(self, data, w, space)
        return one if self.breaks == 1 else _bnsl2_seeds(self, data, w, space, one)


def _bnsl_grid(u: FloatArray) -> tuple[FloatArray, ...]:
    alphas = np.array([0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0])
    slopes = np.array([0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    locs = np.linspace(float(u.min()), float(u.max()), 14)
    phis = np.log([0.02, 0.1, 0.3, 1.0])
    return alphas, slopes, locs, phis


Break = tuple[FloatArray, FloatArray, FloatArray]  # slope change c, log-location v, log-sharpness phi


def _bnsl_basis(u: FloatArray, alpha: FloatArray, breaks: Sequence[Break]) -> FloatArray:
    """exp(h) with a = 0 for parameter arrays of shape (G,), as a (G, n) basis."""
    h = -alpha[:, None] * u
    for c, v, phi in breaks:
        f = np.exp(phi)[:, None]
        h = h - c[:, None] * f * _softplus((u - v[:, None]) / f)
    return np.exp(np.clip(h, -700, 700))


def _bnsl1_seeds(m: BNSL, data: Data, w: FloatArray, space: str) -> Seeds:
    """One break on a grid over (alpha, c1, v1, f1), (E, A) solved at every grid point."""
    grids = _bnsl_grid(data.u[0])
    flat = [g.ravel() for g in np.meshgrid(*grids, indexing="ij")]
    shape = tuple(g.size for g in grids)
    al, c, v, ph = flat
    lin, sse = m.floor_seed(_bnsl_basis(data.seed_points.u[0], al, [(c, v, ph)])[..., None], data, w, space)
    rows_shape = lin.shape[:2]
    cols = [lin[..., 0]] + [np.broadcast_to(g, rows_shape) for g in flat] + [lin[..., 1]]
    return Seeds(np.stack(cols, axis=-1), shape, sse, rank_by_proxy=True)


def _bnsl2_seeds(m: BNSL, data: Data, w: FloatArray, space: str, one: Seeds) -> Seeds:
    """Add a second break, on a grid over (c2, v2, f2), to each row's 4 best one-break seeds."""
    assert one.proxy is not None
    u = data.u[0]
    best = np.argsort(one.proxy, axis=1)[:, :4]
    base = np.take_along_axis(one.theta, best[..., None], axis=1)  # (R, 4, 6)
    grid = np.meshgrid([0.1, 0.3, 1.0, 3.0], np.linspace(u.min(), u.max(), 8), np.log([0.1, 1.0]), indexing="ij")
    extra = np.stack([g.ravel() for g in grid], axis=-1)  # (24*..., 3)
    rows, nb, ng = base.shape[0], base.shape[1], extra.shape[0]
    b = np.repeat(base, ng, axis=1)
    add = np.broadcast_to(np.tile(extra, (nb, 1)), (rows, nb * ng, 3))
    theta = np.concatenate([b[..., :5], add, b[..., 5:]], axis=-1)
    theta, sse = _refit_floor(m, theta, data, w, space)
    return Seeds(theta, (nb * ng,), sse, rank_by_proxy=True)


def _refit_floor(m: _Floored, theta: FloatArray, data: Data, w: FloatArray,
                 space: str) -> tuple[FloatArray, FloatArray]:
    """Re-solve (A, E) of floored seeds (R, G, p) for their nonlinear parameters."""
    rows, g, p = theta.shape
    flat = theta.reshape(-1, p).copy()
    flat[:, 0] = 0.0
    h, _ = m.head(flat[:, :-1], data.seed_points, jac=False)
    basis = np.exp(np.clip(h, -700, 700)).reshape(rows, g, -1)[..., None]
    lin, sse = m.floor_seed(basis, data, w, space)
    out = theta.copy()
    out[..., 0], out[..., -1] = lin[..., 0], lin[..., 1]
    return out, sse


# ----------------------------------------------------------------------------- M3


class M3(Model):
    """log L = e + alpha softplus(k - u), k = log x_c - mean log x: linear in (e, alpha) for fixed k."""

    name, names, spaces = "M3", ("e", "k", "alpha"), (LOG,)
    SPAN = 10.0  # x_c within e^10 of the observed range

    def residuals(self, theta: FloatArray, data: Data, space: str, jac: bool = True) -> Residuals:
        u = data.u[0]
        z = theta[:, 1:2] - u
        sp = _softplus(z)
        r = theta[:, :1] + theta[:, 2:3] * sp - data.logy
        if not jac:
            return r, None
        return r, np.stack([np.ones_like(r), theta[:, 2:3] * _sigmoid(z), sp], axis=-1)

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        rows = w.shape[0]
        u = data.u[0]
        lo = [-np.inf, float(u.min()) - self.SPAN, 0.0]
        hi = [np.inf, float(u.max()) + self.SPAN, EXPONENT_MAX]
        return np.tile(lo, (rows, 1)), np.tile(hi, (rows, 1))

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        u = data.seed_points.u[0]
        ks = np.linspace(float(u.min()) - self.SPAN, float(u.max()) + self.SPAN, 121)
        sp = _softplus(ks[:, None] - u[None, :])  # (G, k)
        coef, _ = nnls_small(seed_normal_equations(np.stack([np.ones_like(sp), sp], axis=-1), data.logy, w, data),
                             (False, True))
        theta = np.stack([coef[..., 0], np.broadcast_to(ks, coef.shape[:2]), coef[..., 1]], axis=-1)
        return Seeds(theta, (ks.size,))

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        e, k, alpha = theta
        return {"E": math.exp(e), "x_c": math.exp(k + data.centre[0]), "alpha": float(alpha)}


# ----------------------------------------------------------------------------- M4


class M4(Model):
    """(L - E)/(E0 - L)^gamma = exp(a - alpha u), E = exp(e), E0 = max(y) + exp(e0), b = E0 - E.

    theta = [q, alpha, gamma, e, e0], where q pins the curve at the data's centre (u = 0): there the
    loss above the floor is w_c = b s(q), s the logistic function, so
    a = log w_c - gamma log(b - w_c) = (1 - gamma) log b - softplus(-q) + gamma softplus(q).
    Why not fit a directly: with a free, a change of gamma or of E0 moves the whole curve unless a
    compensates, and the optimiser then crawls along that valley for hundreds of steps.

    In "log_excess" (the authors' space) the residual is a - alpha u - log(y - E) + gamma log(E0 - y);
    in "log" it is log(E + w) - log y with w solving w/(b - w)^gamma = e^t, t = a - alpha u
    (`forms.m4_excess`), differentiated implicitly: F = log w - gamma log(b - w) - t = 0,
    F_w = 1/w + gamma/(b - w), dw/dz = -F_z / F_w.
    """

    name, names, has_proxy = "M4", ("q", "alpha", "gamma", "e", "e0"), True

    @staticmethod
    def _coefficient(theta: FloatArray, data: Data) -> tuple[FloatArray, FloatArray]:
        """a (R, 1) and its derivatives (R, 5) with respect to theta (zero for alpha)."""
        q, gamma, e, e0 = theta[:, 0:1], theta[:, 2:3], theta[:, 3:4], theta[:, 4:5]
        floor, lift = np.exp(e), np.exp(e0)
        b = data.y_top + lift - floor
        a = (1.0 - gamma) * np.log(b) - _softplus(-q) + gamma * _softplus(q)
        da_db = (1.0 - gamma) / b
        grad = np.concatenate([_sigmoid(-q) + gamma * _sigmoid(q), np.zeros_like(q),
                               -(np.log(b) - _softplus(q)), -floor * da_db, lift * da_db], axis=1)
        return a, grad

    def residuals(self, theta: FloatArray, data: Data, space: str, jac: bool = True) -> Residuals:
        a, da = self._coefficient(theta, data)
        r, j = self._residuals_in_a(np.concatenate([a, theta[:, 1:]], axis=1), data, space, jac)
        if j is None:
            return r, None
        return r, j + j[..., :1] * da[:, None, :] - np.where(np.arange(5) == 0, j[..., :1], 0.0)

    def _residuals_in_a(self, theta: FloatArray, data: Data, space: str, jac: bool) -> Residuals:
        u, top = data.u[0], data.y_top
        a, alpha, gamma, e, e0 = (theta[:, j:j + 1] for j in range(5))
        floor, lift = np.exp(e), np.exp(e0)
        t = a - alpha * u
        if space == LOG_EXCESS:
            room = top + lift - data.y  # E0 - y > 0
            r = t - _log_above(data.y, floor) + gamma * np.log(room)
            if not jac:
                return r, None
            ones = np.ones_like(r)
            cols = [ones, -ones * u, np.log(room) * ones, floor / np.maximum(data.y - floor, TINY),
                    gamma * lift / room]
            return r, np.stack(cols, axis=-1)
        return self._log_residuals(t, u, gamma, floor, top + lift - floor, lift, data, jac)

    @staticmethod
    def _log_residuals(t: FloatArray, u: FloatArray, gamma: FloatArray, floor: FloatArray, b: FloatArray,
                       lift: FloatArray, data: Data, jac: bool) -> Residuals:
        v, log_w = m4_excess(t, gamma, b)
        w = np.exp(log_w)
        if not jac:
            return np.log(floor + w) - data.logy, None
        s, s_bar = _sigmoid(v), _sigmoid(-v)  # w = b s, b - w = b s_bar (when w < b)
        pos = (gamma > 0) | (t < np.log(b))  # else gamma = 0 and w = e^t >= b: the M2 limit
        # dw/dt = 1/F_w = b s s_bar / (s_bar + gamma s); the gamma = 0 limit is w (w = e^t)
        dw_dt = np.where(pos, b * s * s_bar / np.maximum(s_bar + gamma * s, TINY), w)
        log_room = np.log(b) - _softplus(v)  # log(b - w)
        dw_dgamma = np.where(pos, log_room * dw_dt, 0.0)
        dw_db = np.where(pos, gamma / np.maximum(b * s_bar, TINY) * dw_dt, 0.0)
        pred = floor + w
        r = np.log(pred) - data.logy
        cols = [dw_dt, -u * dw_dt, dw_dgamma, floor * (1.0 - dw_db), lift * dw_db]
        return r, np.stack([c / pred for c in cols], axis=-1)

    def bounds(self, data: Data, w: FloatArray, space: str) -> tuple[FloatArray, FloatArray]:
        lo_e, hi_e = _floor_bounds(data.y, w, LOG_EXCESS)  # E below every loss in either space
        top, rows = data.y_top, w.shape[0]
        lift_hi = math.log(100.0 * top) if data.upper_bound is None else \
            math.log(max(data.upper_bound * (1 + E0_MARGIN) - top, E0_MARGIN * top))
        lo = np.column_stack([np.full(rows, -np.inf), np.zeros(rows), np.zeros(rows), lo_e,
                              np.full(rows, math.log(E0_MARGIN * top))])
        hi = np.column_stack([np.full(rows, np.inf), np.full(rows, EXPONENT_MAX), np.full(rows, GAMMA_MAX), hi_e,
                              np.full(rows, lift_hi)])
        return lo, hi

    def seeds(self, data: Data, w: FloatArray, space: str) -> Seeds:
        lo, hi = self.bounds(data, w, space)
        fracs = np.concatenate([[E_MIN_FRACTION], np.linspace(0.05, 1.0 - FLOOR_MARGIN, 24)])
        lifts = lo[0, 4] + np.linspace(0.0, 1.0, 8) * (hi[0, 4] - lo[0, 4])  # e0 bounds are the same for all rows
        phi = self._seed_basis(data, lifts)  # (L, n, 3): the regressors depend on E0 only
        lo_y, _ = _row_extremes(data.y, w)
        e = np.log(fracs[None, :] * lo_y[:, None])  # (R, F)
        z = _log_above(data.y, np.exp(e)[..., None])  # (R, F, n): the target depends on E only
        eq = _cross_normal_equations(phi, z, w)
        coef, sse = nnls_small(eq, (False, True, True))  # (R, F, L, 3)
        rows, shape = w.shape[0], (fracs.size, lifts.size)
        coef, sse = coef.reshape(rows, -1, 3), sse.reshape(rows, -1)
        e = np.repeat(e, lifts.size, axis=1)
        e0 = np.broadcast_to(np.tile(lifts, fracs.size), e.shape)
        gamma = np.clip(coef[..., 2], lo[:, None, 2], hi[:, None, 2])
        q, _ = m4_excess(coef[..., 0], gamma, data.y_top + np.exp(e0) - np.exp(e))  # centre of the curve
        theta = np.stack([q, coef[..., 1], gamma, e, e0], axis=-1)
        # the transformed-space error misranks basins of the log-space fit: a proxy for diversity only
        return Seeds(np.clip(theta, lo[:, None, :], hi[:, None, :]), shape, sse)

    @staticmethod
    def _seed_basis(data: Data, lifts: FloatArray) -> FloatArray:
        """Regressors [1, -u, log(E0 - y)] of the transformed law for each E0 = max(y) + e^lift."""
        u = data.u[0]
        room = np.log(data.y_top + np.exp(lifts)[:, None] - data.y)
        return np.stack([np.ones_like(room), np.broadcast_to(-u, room.shape), room], axis=-1)

    def natural(self, theta: FloatArray, data: Data) -> dict[str, float]:
        _, alpha, gamma, e, e0 = theta
        a = float(self._coefficient(theta[None, :], data)[0][0, 0])
        return {"E": math.exp(e), "E0": data.y_top + math.exp(e0), "A": math.exp(a + alpha * data.centre[0]),
                "alpha": float(alpha), "gamma": float(gamma)}

    def min_points(self) -> int:
        return self.n_params + 1


MODELS: dict[str, Model] = {m.name: m for m in (M1(), M2(), M3(), M4(), BNSL(1), BNSL(2), Chinchilla())}


def model(name: str) -> Model:
    """The optimiser model of form `name` (a key of forms.FORMS)."""
    return MODELS[name.upper()]
