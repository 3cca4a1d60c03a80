"""The objective every scaling-law fit in scaletui minimises, with its exact gradient.

Why this shape. Hoffmann et al. (2022, Approach 3) fit L(N, D) = E + A/N^alpha + B/D^beta
by minimising a Huber loss on *log* loss, with the law written as a log-sum-exp:

    log L_hat_i = LSE(a - alpha*log N_i,  b - beta*log D_i,  e),   A = e^a, B = e^b, E = e^e

Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt") showed that the published
numbers came from an optimiser that stopped early; the objective itself is sound. Working in log
space keeps A, B and E positive without bounds, makes the residuals relative errors, and the
Huber loss with a small delta (1e-3) behaves like an L1 fit, so a few bad points cannot drag
the law. The same form covers the one-variable law (one power term plus e) and the pure power
law (one power term, no e: log L_hat is then linear in the parameters).

This module is the numeric kernel only: a `Design` (log-features, log-targets, delta, whether
there is an offset) and three pure functions over it:

* `value_and_grad` - objective and analytic gradient at one parameter vector, for L-BFGS-B.
  The gradient of an LSE is a softmax, computed the stable way (subtract the row maximum).
* `values_at` - the objective at many parameter vectors at once, to rank a start grid cheaply.
* `log_prediction` / `jacobian` - the fitted log-loss and its sensitivity to the parameters,
  used for predictions and for the identifiability check.

Parameter vector layout (`theta`), for K power terms (K = 1 or 2):
    [c_1 .. c_K, (e), p_1 .. p_K]      c_k = log coefficient, e = log E, p_k = exponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Design", "value_and_grad", "values_at", "log_prediction", "jacobian", "huber"]

FloatArray = np.ndarray


@dataclass(frozen=True, eq=False)
class Design:
    """Everything the objective needs that does not change during a fit.

    logx: (K, n) log of each variable (row k feeds power term k); logy: (n,) log observed loss.
    weights: (n,) non-negative point weights (bootstrap counts), or None for all ones.
    """

    logx: FloatArray
    logy: FloatArray
    has_offset: bool
    delta: float = 1e-3
    weights: FloatArray | None = None

    @property
    def n_terms(self) -> int:
        return int(self.logx.shape[0])

    @property
    def n_params(self) -> int:
        return 2 * self.n_terms + int(self.has_offset)

    def reweighted(self, weights: FloatArray | None) -> Design:
        """The same data with other point weights (a bootstrap resample is a reweighting)."""
        return Design(self.logx, self.logy, self.has_offset, self.delta, weights)


def huber(r: FloatArray, delta: float) -> tuple[FloatArray, FloatArray]:
    """Huber loss of residuals r and its derivative psi(r) = clip(r, -delta, delta).

    Written as psi * (r - psi/2), which is r^2/2 inside [-delta, delta] and
    delta*(|r| - delta/2) outside, without a branch.
    """
    psi = np.clip(r, -delta, delta)
    return psi * (r - 0.5 * psi), psi


def _split(theta: FloatArray, k: int, has_offset: bool) -> tuple[FloatArray, float | None, FloatArray]:
    coef = theta[:k]
    e = float(theta[k]) if has_offset else None
    return coef, e, theta[k + int(has_offset):]


def _terms(theta: FloatArray, d: Design) -> tuple[FloatArray, float | None]:
    """The power terms in log space, shape (K, n), and the log offset (or None)."""
    coef, e, expo = _split(theta, d.n_terms, d.has_offset)
    return coef[:, None] - expo[:, None] * d.logx, e


def _lse_softmax(t: FloatArray, e: float | None) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Row-wise LSE over the K terms (and e), with the softmax weights of terms and of e."""
    if e is None and t.shape[0] == 1:
        return t[0], np.ones_like(t), None
    m = t.max(axis=0)
    if e is not None:
        m = np.maximum(m, e)
    z = np.exp(t - m)
    s = z.sum(axis=0)
    ze = None
    if e is not None:
        ze = np.exp(e - m)
        s = s + ze
    return m + np.log(s), z / s, (None if ze is None else ze / s)


def log_prediction(theta: FloatArray, d: Design) -> FloatArray:
    """log L_hat at every point of the design."""
    t, e = _terms(theta, d)
    return _lse_softmax(t, e)[0]


def value_and_grad(theta: FloatArray, d: Design) -> tuple[float, FloatArray]:
    """Sum over points of w_i * Huber(log L_hat_i - log y_i) and its exact gradient in theta."""
    t, e = _terms(theta, d)
    lse, p_terms, p_e = _lse_softmax(t, e)
    h, psi = huber(lse - d.logy, d.delta)
    if d.weights is not None:
        h = h * d.weights
        psi = psi * d.weights
    g_terms = p_terms * psi  # (K, n): d objective / d c_k per point
    grads = [g_terms.sum(axis=1)]
    if p_e is not None:
        grads.append(np.array([p_e @ psi]))
    grads.append(-(g_terms * d.logx).sum(axis=1))  # d/d p_k = -softmax_k * log x_k * psi
    return float(h.sum()), np.concatenate(grads)


def jacobian(theta: FloatArray, d: Design) -> FloatArray:
    """d log L_hat_i / d theta, shape (n, n_params): the local sensitivity of the fit."""
    t, e = _terms(theta, d)
    _, p_terms, p_e = _lse_softmax(t, e)
    cols = list(p_terms)
    if p_e is not None:
        cols.append(p_e)
    cols += list(-p_terms * d.logx)
    return np.stack(cols, axis=1)


def values_at(thetas: FloatArray, d: Design, chunk_elems: int = 2_000_000) -> FloatArray:
    """The objective at each row of `thetas` (M, n_params), vectorised in memory-bounded chunks."""
    n = d.logy.shape[0]
    step = max(1, chunk_elems // max(1, n * d.n_terms))
    return np.concatenate([_values_block(thetas[i:i + step], d) for i in range(0, len(thetas), step)])


def _values_block(thetas: FloatArray, d: Design) -> FloatArray:
    k = d.n_terms
    coef = thetas[:, :k]
    expo = thetas[:, k + int(d.has_offset):]
    t = coef[:, :, None] - expo[:, :, None] * d.logx[None, :, :]  # (M, K, n)
    m = t.max(axis=1)
    if d.has_offset:
        e = thetas[:, k][:, None]
        m = np.maximum(m, e)
        s = np.exp(t - m[:, None, :]).sum(axis=1) + np.exp(e - m)
        lse = m + np.log(s)
    elif k == 1:
        lse = t[:, 0, :]
    else:
        lse = m + np.log(np.exp(t - m[:, None, :]).sum(axis=1))
    h, _ = huber(lse - d.logy[None, :], d.delta)
    if d.weights is not None:
        h = h * d.weights[None, :]
    return h.sum(axis=1)
