"""Caballero et al.'s 4-digit addition curve (fit the first 14 sizes, extrapolate 3): the broken power
law that auto-selection picks is the global optimum of scaletui's objective, so what separates its
extrapolation (rmse_log 0.0111) from the authors' published 0.0109 is the objective, not the search.

The authors minimise the squared error of log(1 + L) (their fitting script); scaletui minimises
Huber(0.01) of log L, which on this curve is least squares (every residual is below 0.002).
A 60-start bounded least-squares search from random points over the form's whole box finds no lower
objective than scaletui's break search."""

from __future__ import annotations

import numpy as np
import pytest
import refdata
from scipy.optimize import least_squares

from scaletui.analysis.solve import fit_law


def _log_residuals(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log L_hat - log L for BNSL1 with p = (E, log A, alpha, c1, log d1, log f1)."""
    floor, log_a, alpha, c1, log_d, log_f = p
    f = np.exp(log_f)
    lx = np.log(x)
    power = np.exp(log_a - alpha * lx - c1 * f * np.logaddexp(0.0, (lx - log_d) / f))
    return np.log(floor + power) - np.log(y)


def test_the_break_search_reaches_the_global_optimum_on_4_digit_addition() -> None:
    refdata.require_refdata()
    curve = refdata.bnsl_addition()
    x, y = curve.x_fit, curve.y_fit
    law = fit_law("BNSL1", x, y)
    lx = np.log(x)
    lo = [1e-6 * y.min(), -50.0, 0.0, 0.0, lx.min(), np.log(0.01)]
    hi = [y.min() * 0.999, 50.0, 10.0, 50.0, lx.max(), np.log(10.0)]
    rng = np.random.default_rng(0)
    best = np.inf
    for _ in range(60):
        start = rng.uniform(lo, hi)
        found = least_squares(_log_residuals, start, bounds=(lo, hi), args=(x, y), xtol=1e-15, ftol=1e-15,
                              gtol=1e-15, max_nfev=2000)
        best = min(best, 0.5 * float(np.sum(found.fun**2)))
    assert law.objective <= best * (1 + 1e-9)
    assert law.objective == pytest.approx(best, rel=1e-6)  # the same optimum, not a lucky lower point
