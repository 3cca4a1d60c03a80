"""Fast, exact fitting of every form in `forms`: one batched solver for fits, held-out refits and bootstraps.

The objective (Hoffmann et al. 2022; Besiroglu et al. 2024): sum_i w_i Huber_delta(r_i), with
r_i = log L_hat(x_i) - log L_i ("log", the default) or the same above the floor ("log_excess", the
space Alabdulmohsin et al.'s M2/M4 code works in; see `form_models`). Huber(r) = r^2/2 for |r| <= delta
and delta (|r| - delta/2) beyond; delta = inf is least squares. `LossSpec` picks both.

How a fit is found, and why it is exact and fast:

1. **Seeds by variable projection on a grid.** Each form is linear in some of its parameters once
   the others are fixed (`form_models`); a dense grid over the nonlinear ones, with the linear ones
   solved exactly at every grid point, is scored by the true objective in one vectorised pass.
2. **Every basin is polished.** The best few *local minima* of the grid (not just the best point:
   a second basin may win once polished) are refined together by a batched Levenberg-Marquardt
   iteration on the exact objective: iteratively reweighted Gauss-Newton, whose weights
   w_i min(1, delta/|r_i|) make the quadratic model a majoriser of the Huber loss, so every accepted
   step decreases the true objective; bounds by projection with an active set.
3. **Everything is a batch.** A row is (parameter vector, weights over the points): grid points,
   multistarts, held-out refits (weight 0 on the held-out sizes) and bootstrap resamples (weights =
   how often each group was drawn) all run through the same vectorised code, thousands at a time.
4. **Seeds of one size are one evaluation.** In the "log" space the model is evaluated at the
   distinct sizes only and each size's points are folded into the gradient and curvature
   (`form_models.Distinct`): exact for the Huber loss too, and 16x less model work on a sweep with
   16 seeds per size (the default sweep's point fit: 2.1 s of CPU before, about 0.7 s with this and
   the stall rule of `polish`).

Exact: on every curve of the external benchmark, on Chinchilla and on datablations, the objective
reached is at least as low as the multistart L-BFGS-B fitter it replaced reached (its objectives are
recorded in tests/analysis/multistart_objectives.json), and L-BFGS-B started from the answer cannot
improve it (tests/analysis/test_solve.py). Fast: no scipy optimiser call at all; a fit is a few dozen
vectorised iterations (benchmarks/fit_speed_core.py). Nor does it need OpenBLAS kept to one thread
(the old fitter's process-wide ctypes switch): measured on the default sweep, 1 vs 2 BLAS threads
changed selection and bootstrap times by less than the run-to-run noise of a loaded 2-core machine.

Only numpy and the standard library: this module runs in the app's process.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.form_models import LOG, LOG1P, LOG_EXCESS, Data, Distinct, Model, model
from scaletui.analysis.forms import FittedLaw, form, law_values

SPACES: tuple[str, ...] = (LOG, LOG1P, LOG_EXCESS)  # the residual spaces a fit can minimise in (`LossSpec`)

__all__ = [
    "DEFAULT_LOSS",
    "TWO_VARIABLE_LOSS",
    "Bootstrap",
    "FitOptions",
    "FitStopped",
    "LossSpec",
    "RowFits",
    "bootstrap",
    "check_stop",
    "default_loss",
    "fit_law",
    "fit_rows",
    "group_index",
    "huber",
    "law_of_row",
    "objective",
    "prepare",
    "resample_weights",
]

FloatArray = np.ndarray
StopCheck = Callable[[], bool]


class FitStopped(Exception):
    """A fit was asked to stop (its `should_stop()` said so) before it had an answer. Solvers consult
    the check at every iteration, so a cancel from another thread ends a fit within one iteration."""


def check_stop(should_stop: StopCheck | None) -> None:
    """Raise FitStopped when asked to stop."""
    if should_stop is not None and should_stop():
        raise FitStopped("stopped")


@dataclass(frozen=True)
class LossSpec:
    """What a fit minimises: the Huber threshold `delta` on residuals in `space` (one of `SPACES`).

    Default: log residuals, delta = 0.01. Measured with benchmarks/extrapolation.py --resamples 0
    (median rmse_log on the extrapolated points, IC / NMT / LM / BB; the authors' M4: 0.0283 / 0.0181
    / 0.0009 / 0.0090):
        delta 0.01            M4 0.0222 / 0.0059 / 0.0007 / 0.0051   auto 0.0222 / 0.0105 / 0.0007 / 0.0051
        delta 0.001           M4 0.0245 / 0.0111 / 0.0007 / 0.0067   auto 0.0245 / 0.0088 / 0.0007 / 0.0067
        least squares         M4 0.0204 / 0.0171 / 0.0007 / 0.0061   auto 0.0204 / 0.0099 / 0.0007 / 0.0061
        log_excess, 0.01      M4 0.0312 / 0.2088 / 0.0132 / 0.0163   auto 0.0312 / 0.0105 / 0.0013 / 0.0163
    0.01 and least squares tie on average; 0.01 keeps a bad point (a diverged seed) from dragging the
    law, and leaves the most margin on the tightest goal (BB). The log of the loss above its floor
    ("log_excess", the space of Alabdulmohsin et al.'s code) is worse everywhere: its optimum puts the
    floor right under the smallest loss, where log(L - E) explodes. Fit Chinchilla with 0.001 to
    compare with Besiroglu et al. "log1p", log(1 + L_hat) - log(1 + L), is the mean squared log error
    Caballero et al. fit BNSL with; forced everywhere: 0.0259 / 0.0097 / 0.0007 / 0.0061 (auto), worse
    than log on IC and BB, better on NMT and on 4-digit addition (0.0109 against 0.0111). It depends on
    the loss's units, so it is not the default; the selection tries it on the chosen form and keeps it
    where it predicts the held-out sizes better (`select.SelectOptions.alt_spaces`, `default_alt_spaces`).
    """

    space: str = LOG
    delta: float = 1e-2

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"loss space must be one of {', '.join(map(repr, SPACES))}, got {self.space!r}")
        if not self.delta > 0:
            raise ValueError(f"Huber delta must be > 0 (inf = least squares), got {self.delta}")


DEFAULT_LOSS = LossSpec()
#: Two-variable laws (CHINCHILLA) by default minimise Besiroglu et al.'s objective, delta = 1e-3: the
#: replication's numbers are for it (with 0.01 Chinchilla's alpha is 0.354, not 0.347), and 240 points
#: of L(N, D) give no held-out benchmark to tune it on.
TWO_VARIABLE_LOSS = LossSpec(LOG, 1e-3)


def default_loss(n_vars: int) -> LossSpec:
    """The measured default objective for a law of `n_vars` variables (see `LossSpec`)."""
    return TWO_VARIABLE_LOSS if n_vars == 2 else DEFAULT_LOSS


def default_alt_spaces(n_vars: int) -> tuple[str, ...]:
    """The residual spaces a law of `n_vars` variables is also tried in, by default, once its form is
    chosen (`select.SelectOptions.alt_spaces`): "log1p" for one variable (4-digit addition's broken curve
    is predicted better there, the benchmark's other 44 curves choose as before or better: see
    `select._best_space`); none for L(N, D), whose default reproduces Besiroglu et al.'s objective."""
    return () if n_vars == 2 else (LOG1P,)


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the solver.

    loss: the objective. upper_bound: the metric's known maximum (an error rate: 1), which bounds
    M4's starting plateau E0. n_basins: local minima of the seed grid polished per fit, for
    explore_iter iterations; the `keep` best of them are then polished to convergence: until no
    step improves the objective (tol = 0) or a step gains less than tol x (1 + objective), or
    max_iter iterations. resample_tol replaces tol for bootstrap resamples and held-out refits, whose
    answers need ~1e-6 precision rather than machine precision (it halves a bootstrap's time).
    """

    loss: LossSpec = DEFAULT_LOSS
    upper_bound: float | None = None
    n_basins: int = 4
    keep: int = 2
    explore_iter: int = 25
    max_iter: int = 400
    tol: float = 0.0
    resample_tol: float = 1e-10


@dataclass(frozen=True)
class RowFits:
    """Optimum per row of a batch: theta (R, p) in model coordinates, objective (R,), converged (R,),
    and each row's polished candidates (R, K, p) with their objectives (R, K) (its other basins)."""

    theta: FloatArray
    value: FloatArray
    converged: FloatArray
    candidates: FloatArray
    candidate_values: FloatArray


# ----------------------------------------------------------------------------- objective


def huber(r: FloatArray, delta: float) -> tuple[FloatArray, FloatArray]:
    """Huber loss of r and the IRLS weight psi(r)/r = min(1, delta/|r|) (1 for least squares)."""
    return _huber_value(r, delta), _irls_weight(r, delta)


def _huber_value(r: FloatArray, delta: float) -> FloatArray:
    """r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond: with c = min(|r|, delta) both are
    c (|r| - c/2), in three array operations (the polish evaluates this on every point every step)."""
    if math.isinf(delta):
        return 0.5 * r * r
    a = np.abs(r)
    c = np.minimum(a, delta)
    return c * (a - 0.5 * c)


def _irls_weight(r: FloatArray, delta: float) -> FloatArray:
    """psi(r)/r of the Huber loss: 1 inside the quadratic zone, delta/|r| beyond."""
    if math.isinf(delta):
        return np.ones_like(r)
    return delta / np.maximum(np.abs(r), delta)


def _shared(data: Data, loss: LossSpec) -> Distinct | None:
    """The distinct points to evaluate the model at, when points share them and the residual space
    allows it (see `form_models.Distinct`); None: evaluate at every point."""
    return data.distinct if loss.space in (LOG, LOG1P) else None  # "log_excess" residuals need each point's L


def _residuals(m: Model, theta: FloatArray, data: Data, loss: LossSpec,
               jac: bool) -> tuple[FloatArray, FloatArray | None]:
    """Residuals (R, n) at every point and, when `jac`, the Jacobian at the points the model was
    evaluated at: (R, k, p) at the k distinct points (`_shared`), else (R, n, p)."""
    shared = _shared(data, loss)
    if loss.space == LOG1P:
        return _log1p_residuals(m, theta, data, shared, jac)
    if shared is None:
        return m.residuals(theta, data, loss.space, jac)
    r, dr = m.residuals(theta, shared.data, LOG, jac)
    return shared.spread(r + shared.data.logy) - data.logy, dr


def _log1p_residuals(m: Model, theta: FloatArray, data: Data, shared: Distinct | None,
                     jac: bool) -> tuple[FloatArray, FloatArray | None]:
    """"log1p" residuals log(1 + L_hat) - log(1 + L) from the form's "log" ones: L_hat = exp(r_log + log L),
    and d log(1 + L_hat) = d log L_hat x L_hat / (1 + L_hat)."""
    at = data if shared is None else shared.data
    r, dr = m.residuals(theta, at, LOG, jac)
    pred = np.exp(r + at.logy)
    fitted = np.log1p(pred)
    r_out = (fitted if shared is None else shared.spread(fitted)) - np.log1p(data.y)
    return r_out, None if dr is None else dr * (pred / (1.0 + pred))[..., None]


def _model_space(m: Model, space: str) -> str:
    """The residual space a fit of `m` minimises in when asked for `space`: "log1p" for every form,
    "log_excess" for forms with a floor (others have only "log")."""
    return space if space in m.spaces or space == LOG1P else LOG


def _own_space(space: str) -> str:
    """The space of the form's own seeds and bounds ("log1p" is derived from "log")."""
    return LOG if space == LOG1P else space


def _values(m: Model, theta: FloatArray, data: Data, w: FloatArray, loss: LossSpec) -> FloatArray:
    """Objective of each row theta (R, p) under weights w (R, n)."""
    r, _ = _residuals(m, theta, data, loss, jac=False)
    h = _huber_value(np.where(w > 0, r, 0.0), loss.delta)
    return np.where(np.isfinite(h), h * w, np.inf).sum(axis=1)


def _grid_values(m: Model, theta: FloatArray, data: Data, w: FloatArray, loss: LossSpec,
                 chunk_elems: int = 1_000_000) -> FloatArray:
    """Objective of every seed theta (R, G, p), row r under weights w[r], in chunks of about
    chunk_elems residuals that may span weight rows (one vectorised call for a whole small grid)."""
    rows, g, p = theta.shape
    flat = theta.reshape(-1, p)
    owner = np.repeat(np.arange(rows), g)  # the weight row of each seed
    step = max(1, chunk_elems // max(1, data.y.size))
    out = np.empty(rows * g)
    for i in range(0, rows * g, step):
        out[i:i + step] = _values(m, flat[i:i + step], data, w[owner[i:i + step]], loss)
    return out.reshape(rows, g)


# ----------------------------------------------------------------------------- the batched polish

LAMBDA_START, LAMBDA_MIN, LAMBDA_MAX, LAMBDA_UP, LAMBDA_DOWN, LAMBDA_STOP = 1e-3, 1e-12, 1e16, 8.0, 4.0, 1e12
STALL_ITERS, STALL_TOL = 8, 1e-13  # see `polish`


@dataclass
class _State:
    """Per row: parameters, objective, residuals (R, n) and Jacobian (R, k, p) there (kept from the
    step that produced them, so each iteration evaluates the model only at its two proposals),
    the damping of each proposal, and whether the row is done."""

    theta: FloatArray
    value: FloatArray
    r: FloatArray
    jac: FloatArray
    lam: FloatArray  # (R, 2): IRLS, Newton
    done: FloatArray


def _evaluate(m: Model, data: Data, w: FloatArray, loss: LossSpec,
              theta: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Objective (R,), residuals (R, n) and Jacobian (R, k, p) of rows theta (k: the points the model
    is evaluated at, see `_residuals`); points of weight 0 (held out) get residual and Jacobian 0
    (their residuals may be undefined)."""
    r, jac = _residuals(m, theta, data, loss, jac=True)
    assert jac is not None
    used = w > 0
    r = np.where(used, r, 0.0)
    h = _huber_value(r, loss.delta)
    value = np.where(np.isfinite(h), h * w, np.inf).sum(axis=1)
    shared = _shared(data, loss)
    evaluated = used if shared is None else shared.fold(w) > 0
    return value, r, np.where(evaluated[..., None], jac, 0.0)


def _curvatures(r: FloatArray, jac: FloatArray, w: FloatArray, delta: float,
                shared: Distinct | None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact gradient (R, p) and two curvature models (R, p, p) of the objective.

    IRLS: sum_i w_i min(1, delta/|r_i|) J_i J_i^T, a majoriser of the Huber loss (safe far from
    the optimum, but with delta small the outlying points' delta/|r_i| make its steps short, so
    alone it converges only linearly). Newton: sum over the points inside the quadratic zone,
    |r_i| <= delta, of w_i J_i J_i^T, the Gauss-Newton Hessian of the piece of the objective the
    optimum lies on (the outlying points contribute delta |r_i|, whose curvature is O(delta)):
    once that piece is identified it converges in a few steps.

    With `shared` points (jac at the k distinct points), each sum over points is a sum over the
    distinct points of J_s J_s^T (or J_s) times the sum of the weights (or weighted residuals) of
    the points there: the same numbers, with the model evaluated k times instead of n.
    """
    omega = _irls_weight(r, delta)
    inside = np.where(omega >= 1.0, w, 0.0)
    omega = omega * w
    gr = omega * r
    if shared is not None:  # one fold for the three (each fold is a gather and a reduction)
        omega, inside, gr = np.split(shared.fold(np.concatenate([omega, inside, gr])), 3)
    jac_t = jac.transpose(0, 2, 1)
    grad = (jac_t @ gr[..., None])[..., 0]
    return grad, (jac_t * omega[:, None, :]) @ jac, (jac_t * inside[:, None, :]) @ jac


def _damped_steps(curvatures: FloatArray, grad: FloatArray, lam: FloatArray, scale: FloatArray,
                  theta: FloatArray, lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Levenberg-Marquardt proposals for C curvature models (C, R, p, p) with dampings lam (R, C),
    projected on the bounds: (C * R, p), model by model. A parameter at a bound that the gradient
    pushes outward is held fixed (active set). One batched solve for all of them."""
    n_models, rows, p = curvatures.shape[0], theta.shape[0], theta.shape[1]
    free = ~(((theta <= lo) & (grad > 0)) | ((theta >= hi) & (grad < 0)))
    system = curvatures * (free[:, :, None] & free[:, None, :])
    diag = np.arange(p)
    system[..., diag, diag] += np.where(free, (lam.T[..., None] + 1e-12) * scale, 1.0)
    rhs = np.where(free, -grad, 0.0)[..., None]  # (R, p, 1), the same for every model: broadcast
    step = np.linalg.solve(system, rhs)[..., 0]  # (C, R, p)
    proposal = np.clip(theta + np.where(np.isfinite(step), step, 0.0), lo, hi)
    return proposal.reshape(n_models * rows, p)


def polish(m: Model, data: Data, w: FloatArray, theta0: FloatArray, lo: FloatArray, hi: FloatArray,
           loss: LossSpec, max_iter: int = 400, tol: FloatArray | float = 0.0,
           should_stop: StopCheck | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Levenberg-Marquardt on the exact Huber objective for every row at once.

    Each iteration proposes two steps per row (the IRLS and the Newton curvature, each with its
    own damping) and keeps the better one if it lowers the objective. A row stops when neither
    step helps at damping above LAMBDA_STOP (a minimum to machine precision), when a nearly
    undamped step gains at most tol x (1 + objective) (tol: one value, or one per row), when
    STALL_ITERS iterations together gained at most max(tol, STALL_TOL) x (1 + objective), or after
    max_iter iterations. The stall rule is for Huber objectives with many points in the linear zone
    (seeds scattered beyond delta): there each step crosses kinks of the objective, the damping
    settles near 0.03 instead of vanishing, and the gains shrink only linearly (a quarter per 10
    iterations on the default sweep's broken power law) - without the rule such a fit ran 300
    iterations for gains below 1e-13 of its objective. Returns (theta, objective, converged) per
    row; only unfinished rows are computed. `should_stop` is consulted before every iteration
    (FitStopped).
    """
    theta = np.clip(theta0, lo, hi)
    rows = theta.shape[0]
    st = _State(theta, *_evaluate(m, data, w, loss, theta), np.full((rows, 2), LAMBDA_START),
                np.zeros(rows, bool))
    converged = np.zeros(rows, bool)
    tols = np.broadcast_to(np.asarray(tol, dtype=float), (rows,))
    mark = st.value.copy()
    for done_iter in range(1, max_iter + 1):
        idx = np.flatnonzero(~st.done)
        if idx.size == 0:
            break
        check_stop(should_stop)
        converged[idx] = _advance(m, data, w[idx], loss, lo[idx], hi[idx], st, idx, tols[idx])
        if done_iter % STALL_ITERS == 0:
            stalled = ~st.done & (mark - st.value <= np.maximum(tols, STALL_TOL) * (1.0 + np.abs(st.value)))
            st.done |= stalled
            converged |= stalled
            mark = st.value.copy()
    return st.theta, st.value, converged


def _advance(m: Model, data: Data, w: FloatArray, loss: LossSpec, lo: FloatArray, hi: FloatArray,
             st: _State, idx: FloatArray, tol: FloatArray) -> FloatArray:
    """One iteration for rows idx; returns which of them are now done."""
    theta, old, lam = st.theta[idx], st.value[idx], st.lam[idx]
    grad, h_irls, h_newton = _curvatures(st.r[idx], st.jac[idx], w, loss.delta, _shared(data, loss))
    diag = np.diagonal(h_irls, axis1=1, axis2=2)
    scale = np.maximum(diag, 1e-12 * (diag.max(axis=1, keepdims=True) + 1e-300))
    cand = _damped_steps(np.stack([h_irls, h_newton]), grad, lam, scale, theta, lo, hi)
    value, r, jac = _evaluate(m, data, np.concatenate([w, w]), loss, cand)
    rows = idx.size
    ok = np.stack([value[:rows], value[rows:]], axis=1) < old[:, None]  # (R, 2)
    pick = np.where(ok[:, 1] & (value[rows:] <= value[:rows]), 1, 0)  # the better proposal
    accept = ok[np.arange(rows), pick]
    src = np.where(accept, pick * rows + np.arange(rows), -1)
    _store(st, idx, accept, src, cand, value, r, jac)
    st.lam[idx] = np.where(ok, np.maximum(lam / LAMBDA_DOWN, LAMBDA_MIN), np.minimum(lam * LAMBDA_UP, LAMBDA_MAX))
    stuck = ~accept & np.all(st.lam[idx] > LAMBDA_STOP, axis=1)
    # a nearly undamped step that gains almost nothing: the minimum (a damped one may just be short)
    undamped = lam[np.arange(rows), pick] <= 1e-2
    small = accept & undamped & (old - st.value[idx] <= tol * (1.0 + np.abs(st.value[idx])))
    st.done[idx] = stuck | small
    return st.done[idx]


def _store(st: _State, idx: FloatArray, accept: FloatArray, src: FloatArray, cand: FloatArray,
           value: FloatArray, r: FloatArray, jac: FloatArray) -> None:
    """Move the accepted proposals (cand[src]) into the state of rows idx."""
    rows = idx[accept]
    take = src[accept]
    st.theta[rows], st.value[rows], st.r[rows], st.jac[rows] = cand[take], value[take], r[take], jac[take]


# ----------------------------------------------------------------------------- global fit of rows


def _local_minima(values: FloatArray, shape: tuple[int, ...]) -> FloatArray:
    """Mask (R, G) of grid points no worse than any axis neighbour on the grid `shape`."""
    grid = values.reshape((values.shape[0],) + shape)
    is_min = np.isfinite(grid)
    for axis in range(1, grid.ndim):
        pad = [(0, 0)] * grid.ndim
        pad[axis] = (1, 1)
        padded = np.pad(grid, pad, constant_values=np.inf)
        size = int(grid.shape[axis])
        before = np.take(padded, np.arange(0, size), axis=axis)
        after = np.take(padded, np.arange(2, size + 2), axis=axis)
        is_min &= (grid <= before) & (grid <= after)
    return is_min.reshape(values.shape)


def _basins(seeds: FloatArray, values: FloatArray, shape: tuple[int, ...], k: int) -> FloatArray:
    """The k best local minima of each row's seed grid (padded with the best seed): (R, k, p)."""
    ranked = np.where(_local_minima(values, shape), values, np.inf)
    order = np.argsort(ranked, axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(ranked, order, axis=1)
    best = np.argmin(values, axis=1)[:, None]
    order = np.where(np.isfinite(found), order, best)
    return np.take_along_axis(seeds, order[..., None], axis=1)


def _starts(m: Model, data: Data, w: FloatArray, loss: LossSpec, lo: FloatArray, hi: FloatArray,
            k: int) -> FloatArray:
    """The k best basins of each row's seed grid, ranked by the true objective: (R, k, p).

    A large grid with a cheap proxy is first cut to its 3k best local minima by the proxy."""
    seeds = m.seeds(data, w, _own_space(loss.space))
    theta = np.clip(seeds.theta, lo[:, None, :], hi[:, None, :])
    if not seeds.rank_by_proxy:
        return _basins(theta, _grid_values(m, theta, data, w, loss), seeds.shape, k)
    assert seeds.proxy is not None
    theta = _basins(theta, seeds.proxy, seeds.shape, 3 * k)
    order = np.argsort(_grid_values(m, theta, data, w, loss), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(theta, order[..., None], axis=1)


def _proxy_starts(m: Model, data: Data, w: FloatArray, loss: LossSpec, lo: FloatArray, hi: FloatArray,
                  k: int) -> FloatArray:
    """The k best basins of each row's seed grid by the cheap proxy, (R, k, p); (R, 0, p) if the
    form has no proxy (M1, M2, M3, CHINCHILLA: a resample stays in the basin of the full fit; see
    tests/analysis/test_solve.py)."""
    if not m.has_proxy:
        return np.zeros((w.shape[0], 0, m.n_params))
    seeds = m.seeds(data, w, _own_space(loss.space))
    assert seeds.proxy is not None
    return _basins(np.clip(seeds.theta, lo[:, None, :], hi[:, None, :]), seeds.proxy, seeds.shape, k)


def _polish_rows(m: Model, data: Data, w: FloatArray, starts: FloatArray, lo: FloatArray, hi: FloatArray,
                 loss: LossSpec, max_iter: int, tol: FloatArray,
                 should_stop: StopCheck | None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Polish starts (R, K, p) of weight rows w (R, n): results (R, K, p), (R, K), (R, K).

    A start equal to an earlier start of its row is polished once: its row's two kept basins are often
    one point (a grid with a single local minimum pads its basins with it, and two basins may meet
    while exploring; on the default sweep 11 of M4's 13 rows and every row of M2 and M3), and a
    polish of a row depends on nothing but the row."""
    rows, k, p = starts.shape
    flat = starts.reshape(-1, p)
    first = _first_equal(starts)
    todo = np.flatnonzero(first == np.arange(rows * k))
    owner = np.repeat(np.arange(rows), k)[todo]
    theta, value, conv = polish(m, data, w[owner], flat[todo], lo[owner], hi[owner], loss, max_iter,
                                tol[owner], should_stop)
    pos = np.searchsorted(todo, first)  # each start's polished copy
    return theta[pos].reshape(rows, k, p), value[pos].reshape(rows, k), conv[pos].reshape(rows, k)


def _first_equal(starts: FloatArray) -> FloatArray:
    """For each start of starts (R, K, p), flattened: the flat index of the first start of its row
    equal to it in every parameter (itself when none before it is)."""
    rows, k, _ = starts.shape
    first = np.tile(np.arange(k), (rows, 1))
    for j in range(1, k):
        for i in range(j - 1, -1, -1):  # the earliest equal one wins: scan down to 0
            same = np.all(starts[:, i] == starts[:, j], axis=1)
            first[same, j] = first[same, i]
    return (first + np.arange(rows)[:, None] * k).ravel()


def fit_rows(m: Model, data: Data, w: FloatArray, opts: FitOptions,
             starts: FloatArray | None = None, exact_rows: int = 1,
             should_stop: StopCheck | None = None) -> RowFits:
    """Global fit of every weight row w (R, n): grid seeds (or the given starts (R, K, p)), polished.

    All basins are polished for `explore_iter` iterations; then only the `keep` best of each row
    continue to convergence (a basin that is clearly worse after the exploration is not the global
    minimum; polishing it further is most of the cost). The answer per row is its best candidate.
    The first `exact_rows` rows are polished with `opts.tol`, the others (held-out refits,
    resamples) with `opts.resample_tol`. Raises FitStopped when `should_stop()` says so.
    """
    tol = np.where(np.arange(w.shape[0]) < exact_rows, opts.tol, opts.resample_tol)
    data, w = data.grouped(np.asarray(w, dtype=float))
    with np.errstate(all="ignore"):  # overflow and 0/0 in far-off trial points are expected
        return _fit_rows(m, data, w, opts, starts, tol, should_stop)


def _fit_rows(m: Model, data: Data, w: FloatArray, opts: FitOptions, starts: FloatArray | None,
              tol: FloatArray, should_stop: StopCheck | None) -> RowFits:
    space = _model_space(m, opts.loss.space)
    loss = LossSpec(space, opts.loss.delta)
    lo, hi = m.bounds(data, w, _own_space(space))
    if starts is None:
        starts = _starts(m, data, w, loss, lo, hi, opts.n_basins)
    theta, value, conv = _polish_rows(m, data, w, starts, lo, hi, loss, opts.explore_iter, tol, should_stop)
    if theta.shape[1] > opts.keep:
        order = np.argsort(value, axis=1, kind="stable")[:, :opts.keep]
        kept = np.take_along_axis(theta, order[..., None], axis=1)
        theta, value, conv = _polish_rows(m, data, w, kept, lo, hi, loss, opts.max_iter, tol, should_stop)
    elif opts.max_iter > opts.explore_iter:
        theta, value, conv = _polish_rows(m, data, w, theta, lo, hi, loss, opts.max_iter, tol, should_stop)
    best = np.argmin(value, axis=1)
    pick = np.arange(theta.shape[0])
    return RowFits(theta[pick, best], value[pick, best], conv[pick, best], theta, value)


# ----------------------------------------------------------------------------- input checks


def _features(xs: ArrayLike | Sequence[ArrayLike]) -> tuple[FloatArray, ...]:
    arr = np.asarray(xs, dtype=float)
    if arr.ndim == 1:
        return (arr,)
    if arr.ndim == 2:
        return tuple(arr)
    raise ValueError(f"x must be one array or one array per variable, got shape {arr.shape}")


def _check_points(n_vars: int, name: str, feats: tuple[FloatArray, ...], y: FloatArray) -> None:
    if len(feats) != n_vars:
        raise ValueError(f"{name} needs {n_vars} variable(s), got {len(feats)}")
    for var, v in zip(("x",) if n_vars == 1 else ("N", "D"), feats, strict=True):
        if v.shape != y.shape:
            raise ValueError(f"{var} and loss must have the same length, got {v.size} and {y.size}")
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(f"every {var} must be finite and > 0 (laws are fitted in log x)")
    if not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError("every loss must be finite and > 0 (laws are fitted in log loss)")


def prepare(form_name: str, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike,
            upper_bound: float | None = None) -> tuple[Model, Data]:
    """Check the inputs of a fit and build its model and data; ValueError with one clear line if bad."""
    f = form(form_name)
    feats, y = _features(xs), np.asarray(loss, dtype=float).ravel()
    _check_points(f.n_vars, f.name, feats, y)
    m = model(f.name)
    distinct = np.unique(np.vstack(feats), axis=1).shape[1]
    if distinct < m.min_points():
        raise ValueError(f"{f.name} has {m.n_params} parameters and needs at least {m.min_points()} "
                         f"distinct sizes; got {distinct}")
    if upper_bound is not None and not float(y.max()) < upper_bound * (1 + 1e-3):
        raise ValueError(f"a loss of {y.max():.4g} exceeds the stated upper bound {upper_bound:g}")
    return m, Data.build(feats, y, upper_bound)


def _law_of(m: Model, data: Data, theta: FloatArray, value: float, converged: bool, w: FloatArray,
            opts: FitOptions, variables: tuple[str, ...] | None = None) -> FittedLaw:
    used = w > 0
    x0 = np.exp(data.u[0] + data.centre[0])[used]
    space = _model_space(m, opts.loss.space)
    names = variables or (("x",) if m.n_vars == 1 else ("N", "D"))
    return FittedLaw(m.name, m.natural(theta, data), names, (float(x0.min()), float(x0.max())),
                     int(used.sum()), space, opts.loss.delta, float(value), bool(converged), opts.upper_bound)


def law_of_row(m: Model, data: Data, fits: RowFits, row: int, w: FloatArray, opts: FitOptions) -> FittedLaw:
    """The FittedLaw of one row of a batch fitted with weights w (n,) (0 = point left out)."""
    return _law_of(m, data, fits.theta[row], fits.value[row], fits.converged[row], w, opts)


def fit_law(form_name: str, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
            weights: ArrayLike | None = None, options: FitOptions = FitOptions(),
            variables: tuple[str, ...] | None = None) -> FittedLaw:
    """Fit form `form_name` (a key of forms.FORMS) to loss at x (or at (N, D)); the global optimum.

    weights: optional non-negative weight per point (0 leaves a point out). Raises ValueError with
    one line on bad input (see `prepare`).
    """
    m, data = prepare(form_name, xs, loss, options.upper_bound)
    w = np.ones((1, data.y.size)) if weights is None else np.asarray(weights, dtype=float).reshape(1, -1)
    if w.shape[1] != data.y.size or not np.all(np.isfinite(w) & (w >= 0)):
        raise ValueError("weights must be one finite non-negative number per point")
    fits = fit_rows(m, data, w, options)
    return _law_of(m, data, fits.theta[0], fits.value[0], fits.converged[0], w[0], options, variables)


def objective(law: FittedLaw, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike) -> float:
    """sum_i Huber_delta(log L_hat(x_i) - log L_i) of a fitted law (delta: the law's), to compare fitters."""
    pred = law_values(law.form, law.params, *_features(xs))
    value, _ = huber(np.log(pred) - np.log(np.asarray(loss, dtype=float)), law.delta)
    return float(value.sum())


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Bootstrap:
    """A group bootstrap of one fit. `samples[i, j]` is parameter `names[j]` refitted on resample i
    (resamples whose refit failed are dropped: `n_failed`). When cancelled, `stopped` is True and
    everything holds the resamples finished so far."""

    law: FittedLaw
    names: tuple[str, ...]
    samples: FloatArray
    n_requested: int
    n_groups: int
    n_failed: int
    stopped: bool
    seconds: float = 0.0

    @property
    def n_done(self) -> int:
        return int(self.samples.shape[0])

    def interval(self, name: str, level: float = 0.9) -> tuple[float, float]:
        """Percentile interval of parameter `name` at `level`."""
        col = self.samples[:, self.names.index(name)]
        q = 50 * (1 - level), 50 * (1 + level)
        return (float(np.percentile(col, q[0])), float(np.percentile(col, q[1]))) if col.size else (math.nan, math.nan)

    def predictions(self, *xs: ArrayLike) -> FloatArray:
        """The law of every resample at x: shape (n_done, len(x))."""
        params = {n: self.samples[:, j:j + 1] for j, n in enumerate(self.names)}
        return law_values(self.law.form, params, *(np.asarray(x, dtype=float).ravel()[None, :] for x in xs))


def group_index(groups: ArrayLike | None, n: int) -> tuple[FloatArray, int]:
    """Group labels -> (index 0..G-1 per point, G); no groups: every point is its own group."""
    if groups is None:
        return np.arange(n), n
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must have one label per point ({n}), got shape {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.ravel(), int(inverse.max()) + 1


def resample_weights(rng: np.random.Generator, index: FloatArray, n_groups: int, count: int) -> FloatArray:
    """`count` resamples at once: draw n_groups groups with replacement; each point weighs as often
    as its group was drawn. Shape (count, n)."""
    return _group_counts(rng, n_groups, count)[:, index]


def _group_counts(rng: np.random.Generator, n_groups: int, count: int) -> FloatArray:
    """How often each group is drawn in each of `count` resamples: (count, n_groups). Kept per group
    (the per-point weights of 100,000 resamples of 400 points would be 320 MB, and drawing them
    took a second before a cancelled bootstrap could stop)."""
    draws = rng.integers(0, n_groups, size=(count, n_groups))
    flat = (np.arange(count)[:, None] * n_groups + draws).ravel()
    return np.bincount(flat, minlength=count * n_groups).reshape(count, n_groups).astype(float)


def bootstrap(form_name: str, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
              groups: ArrayLike | None = None, n_resamples: int = 1000,
              rng: np.random.Generator | int | None = None, options: FitOptions = FitOptions(),
              chunk: int = 125, threads: int = 2, should_stop: Callable[[], bool] | None = None,
              progress: Callable[[int, int], None] | None = None) -> Bootstrap:
    """Bootstrap a fit by resampling whole groups (all points of a group together).

    Resamples are refitted `chunk` at a time as one vectorised batch, from every basin the full fit
    found plus the resample's own best grid basins (so a resample may change basin), on `threads`
    threads (numpy releases the GIL inside its loops; 2 by default, the machines this runs on have 2
    cores at least and the app leaves them idle while a sweep is not training). All resample
    weights are drawn first, so the
    result does not depend on thread timing. `should_stop()` is checked before each chunk starts
    (a stopped bootstrap returns what it has, within a chunk's time); `progress(done, total)` is
    called as chunks finish. Call it from a worker thread; it touches no shared state.
    """
    t0 = time.perf_counter()
    m, data = prepare(form_name, xs, loss, options.upper_bound)
    full_w = np.ones((1, data.y.size))
    full = fit_rows(m, data, full_w, options)  # one row: not worth a stop check, and a stopped band keeps its law
    law = law_of_row(m, data, full, 0, full_w[0], options)
    starts = _distinct(full.candidates[0], full.candidate_values[0])
    index, n_groups = group_index(groups, data.y.size)
    counts = _group_counts(np.random.default_rng(rng), n_groups, n_resamples)
    chunks = [counts[i:i + chunk] for i in range(0, n_resamples, chunk)]
    thetas, failed, stopped = _run_chunks(lambda c: _refit_chunk(m, data, c[:, index], options, starts), chunks,
                                          threads, should_stop, progress, n_resamples)
    samples = _natural_rows(m, data, np.concatenate(thetas) if thetas else np.zeros((0, m.n_params)))
    return Bootstrap(law, form(m.name).param_names, samples, n_resamples, n_groups, failed, stopped,
                     time.perf_counter() - t0)


def _run_chunks(refit: Callable[[FloatArray], tuple[FloatArray, int]], chunks: list[FloatArray], threads: int,
                should_stop: Callable[[], bool] | None, progress: Callable[[int, int], None] | None,
                total: int) -> tuple[list[FloatArray], int, bool]:
    """Refit the chunks on a small thread pool, in order; stop submitting when should_stop()."""
    results: list[FloatArray] = []
    failed, done, stopped = 0, 0, False
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque[Future[tuple[FloatArray, int]]] = deque()
        for w in chunks:
            if should_stop is not None and should_stop():
                stopped = True
                break
            pending.append(pool.submit(refit, w))
            if len(pending) >= max(1, threads):
                done, failed = _collect(pending.popleft(), results, done, failed, progress, total)
        while pending:
            done, failed = _collect(pending.popleft(), results, done, failed, progress, total)
    return results, failed, stopped


def _collect(future: Future[tuple[FloatArray, int]], results: list[FloatArray], done: int, failed: int,
             progress: Callable[[int, int], None] | None, total: int) -> tuple[int, int]:
    got, bad = future.result()
    results.append(got)
    done += got.shape[0] + bad
    if progress is not None:
        progress(done, total)
    return done, failed + bad


def _distinct(candidates: FloatArray, values: FloatArray, rel: float = 1e-6) -> FloatArray:
    """Polished candidates with duplicates (same basin) removed, best first: (K', p)."""
    kept: list[FloatArray] = []
    for i in np.argsort(values):
        new = all(np.max(np.abs(candidates[i] - k)) > rel * (1 + np.max(np.abs(k))) for k in kept)
        if np.isfinite(values[i]) and new:
            kept.append(candidates[i])
    return np.array(kept)


def _refit_chunk(m: Model, data: Data, w: FloatArray, opts: FitOptions,
                 starts: FloatArray) -> tuple[FloatArray, int]:
    """Refit resamples w (R, n) from the full fit's basins plus each resample's own best grid basins
    by proxy (a resample of a multimodal form - M4, BNSL - can move to another basin)."""
    rows = w.shape[0]
    space = _model_space(m, opts.loss.space)
    lo, hi = m.bounds(data, w, _own_space(space))
    with np.errstate(all="ignore"):
        own = _proxy_starts(m, data, w, LossSpec(space, opts.loss.delta), lo, hi, opts.n_basins)
    warm = np.clip(np.broadcast_to(starts, (rows, *starts.shape)), lo[:, None, :], hi[:, None, :])
    fits = fit_rows(m, data, w, opts, np.concatenate([warm, own], axis=1), exact_rows=0)
    ok = np.isfinite(fits.value)
    return fits.theta[ok], int((~ok).sum())


def _natural_rows(m: Model, data: Data, thetas: FloatArray) -> FloatArray:
    names = form(m.name).param_names
    return np.array([[m.natural(t, data)[n] for n in names] for t in thetas]).reshape(-1, len(names))
