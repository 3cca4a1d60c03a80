"""The law fitted without the largest sizes, judged point by point on them: what a researcher reads.

Form selection (`select`) scores each form by its RMS log error over many rolling origins; a
person deciding whether to trust the law wants the two nearest of those origins spelled out: the
largest size left out (then the two largest), and for each left-out point what the law predicted
against what was measured. The fits are the selection's own (`FormScore.origin_laws`): nothing is
refitted here.

A point is a distinct value of the variables: x, or a trained (N, D) for the two-variable law, so
an N trained at three D is three points. Its "actual" is the mean loss of the rows at exactly that
point (its seeds), never a mean over different D: that would be a loss no run had.

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.forms import FittedLaw, form, predict
from scaletui.analysis.select import FormScore, size_levels

__all__ = ["HeldOut", "HeldOutReport", "heldout_report", "judge"]

FloatArray = np.ndarray
REPORTED = (1, 2)  # left out: the largest size, then the two largest


@dataclass(frozen=True)
class HeldOut:
    """The law fitted without the `left_out` largest values of the first variable, judged on them.

    One entry per held-out point: `points[i]` its variables ((x,) or (N, D)), `x_out[i]` the first of
    them, `n_obs[i]` how many rows its `actual` averages, `rel_error[i]` = |predicted - actual| / actual.
    """

    left_out: int
    x_out: tuple[float, ...]
    predicted: tuple[float, ...]
    actual: tuple[float, ...]
    rel_error: tuple[float, ...]
    law: FittedLaw
    points: tuple[tuple[float, ...], ...] = ()
    n_obs: tuple[int, ...] = ()

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error)


@dataclass(frozen=True)
class HeldOutReport:
    """The largest size left out (`leave_one`) and the two largest (`leave_two`); a check is None
    when the remaining sizes cannot determine the law, and `notes` says why."""

    checks: tuple[HeldOut, ...] = ()
    notes: tuple[str, ...] = ()

    def left_out(self, k: int) -> HeldOut | None:
        return next((h for h in self.checks if h.left_out == k), None)

    @property
    def leave_one(self) -> HeldOut | None:
        return self.left_out(1)

    @property
    def leave_two(self) -> HeldOut | None:
        return self.left_out(2)


def _features(xs: ArrayLike | Sequence[ArrayLike]) -> tuple[FloatArray, ...]:
    arr = np.asarray(xs, dtype=float)
    return (arr.ravel(),) if arr.ndim <= 1 else tuple(np.asarray(v, dtype=float).ravel() for v in arr)


def judge(law: FittedLaw, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, left_out: int) -> HeldOut:
    """Predicted vs actual at every distinct point whose first variable is among the `left_out`
    largest sizes (`select.size_levels`), ascending (by N, then D)."""
    feats, y = _features(xs), np.asarray(loss, dtype=float).ravel()
    levels = size_levels(feats[0])
    sel = levels >= np.unique(levels)[-left_out]
    tuples, inverse = np.unique(np.vstack([f[sel] for f in feats]).T, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n_obs = np.bincount(inverse, minlength=len(tuples))
    actual = np.bincount(inverse, weights=y[sel], minlength=len(tuples)) / n_obs
    pred = predict(law, *tuples.T)
    err = np.abs(pred - actual) / actual
    return HeldOut(left_out, tuple(float(t[0]) for t in tuples), tuple(map(float, pred)), tuple(map(float, actual)),
                   tuple(map(float, err)), law, tuple(tuple(map(float, t)) for t in tuples), tuple(map(int, n_obs)))


def heldout_report(score: FormScore, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike,
                   left_out: Sequence[int] = REPORTED) -> HeldOutReport:
    """The per-point checks of one scored form, from the laws its rolling origins fitted."""
    checks, notes = [], []
    sizes = int(np.unique(size_levels(_features(xs)[0])).size)
    for k in left_out:
        if k <= len(score.origin_laws):
            checks.append(judge(score.origin_laws[k - 1], xs, loss, k))
        else:
            notes.append(f"leave-{k}-out skipped: {max(sizes - k, 0)} sizes left, too few to fit "
                         f"{score.form} ({form(score.form).n_params} parameters) and judge it")
    return HeldOutReport(tuple(checks), tuple(notes))
