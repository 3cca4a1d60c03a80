"""Does the exponent hold still over training? The law refitted at every evaluation step.

A law whose exponent moves between training regimes predicts nothing about a larger model, whichever
step one quotes: so the chosen form is refitted to the losses every run had at each evaluation step
and alpha is compared over the last few.

Fast because the refits are warm: the last step is fitted from the form's seed grid, and every earlier
step starts where the step after it ended (consecutive evaluations differ little). That is exact for
the forms with one basin (M1, M2, M3: a small change of the data keeps the optimum in its basin, as
the bootstrap relies on too, see `solve`); the forms with several basins (M4, the broken power laws)
are refitted from their grid at every step, since a warm start could stay in a basin that is no
longer the best.

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.form_models import model
from scaletui.analysis.forms import FittedLaw
from scaletui.analysis.solve import FitOptions, StopCheck, check_stop, fit_rows, law_of_row, prepare

__all__ = ["Stability", "exponent_stability"]

FloatArray = np.ndarray
DEFAULT_OPTIONS = FitOptions()


@dataclass(frozen=True)
class Stability:
    """The law refitted at every evaluation step. NaN where a step had too few sizes to fit.

    Over the last `last_k` fitted steps: range and sd of alpha, and `stable` = range within
    `rel_tol` of |median alpha|.
    """

    steps: FloatArray
    alpha: FloatArray
    laws: tuple[FittedLaw | None, ...]
    last_k: int
    alpha_range: float
    alpha_std: float
    rel_range: float
    rel_tol: float
    stable: bool
    notes: tuple[str, ...] = field(default=())
    form: str = ""


def _fit_step(form: str, x: FloatArray, y: FloatArray, warm: FloatArray | None,
              options: FitOptions, should_stop: StopCheck | None) -> tuple[FloatArray, FittedLaw]:
    """One step's optimum (model coordinates, for the next warm start) and its law; ValueError
    (from `prepare`) when the step's points cannot fit the form."""
    m, data = prepare(form, x, y, options.upper_bound)
    w = np.ones((1, y.size))
    starts = None if warm is None or m.has_proxy else warm[None, None, :]
    fits = fit_rows(m, data, w, options, starts=starts, exact_rows=0, should_stop=should_stop)
    return fits.theta[0], law_of_row(m, data, fits, 0, w[0], options)


def exponent_stability(x: ArrayLike, loss: ArrayLike, step: ArrayLike, *, form: str = "M2", last_k: int = 5,
                       rel_tol: float = 0.1, options: FitOptions = DEFAULT_OPTIONS,
                       should_stop: StopCheck | None = None) -> Stability:
    """Refit the one-variable form `form` at each distinct step (latest first, each warm-started from
    the one after it); steps whose points cannot fit the form (too few sizes, a bad loss) are NaN.
    Raises solve.FitStopped when `should_stop()` says so."""
    xa, ya, sa = (np.asarray(v, dtype=float).ravel() for v in (x, loss, step))
    if model(form).n_vars != 1:
        raise ValueError(f"exponent_stability fits one-variable forms, not {form}")
    steps = np.unique(sa)
    laws: list[FittedLaw | None] = [None] * steps.size
    warm: FloatArray | None = None
    for i in range(steps.size - 1, -1, -1):
        check_stop(should_stop)
        sel = sa == steps[i]
        try:
            warm, laws[i] = _fit_step(form, xa[sel], ya[sel], warm, options, should_stop)
        except ValueError:  # too few sizes at this step, a non-positive loss: no law here
            continue
    return _summary(steps, laws, last_k, rel_tol, form)


def _summary(steps: FloatArray, laws: list[FittedLaw | None], last_k: int, rel_tol: float, form: str) -> Stability:
    alpha = np.array([math.nan if law is None else law.params.get("alpha", math.nan) for law in laws])
    tail = alpha[np.isfinite(alpha)][-last_k:]
    notes: tuple[str, ...] = ()
    if tail.size < 2:
        notes = (f"only {tail.size} step(s) could be fitted: stability unknown",)
        rng_, sd, rel, stable = math.nan, math.nan, math.nan, False
    else:
        rng_, sd = float(np.ptp(tail)), float(tail.std(ddof=1))
        median = float(np.median(tail))
        rel = rng_ / abs(median) if median != 0 else math.inf
        stable = bool(rel <= rel_tol)
    return Stability(steps, alpha, tuple(laws), last_k, rng_, sd, rel, rel_tol, stable, notes, form.upper())
