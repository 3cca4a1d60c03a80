"""Does the law hold across training regimes? The law, and the ranking of sizes, at every training length.

The research notes: "if every epoch regime yields a different functional form, the predictive power is
essentially zero"; "depth 9 crossed depth 5 at step 15k, then flatlined"; "a 512x4 net looked best at 100k
steps, then diverged by 200k". `stability` asks whether alpha holds still over the last few evaluations; this
module asks the wider question over every regime: each evaluation step that all sizes share (or each value of
`steps` when training length is swept) is a regime, the law is fitted there with its bootstrap interval, the
sizes are ranked by their mean loss there, and every pair of sizes whose order flips between regimes is flagged
as a *crossing* (the bigger model losing at some steps and winning at others), with the steps on each side.

A pair's order counts at a regime only when the gap is beyond the seed noise (|difference| > Z_DECISIVE
standard errors of the difference of means); with one seed per size every nonzero gap counts.

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.forms import FittedLaw
from scaletui.analysis.solve import Bootstrap, FitOptions, bootstrap

__all__ = ["Z_DECISIVE", "Crossing", "RegimeFit", "Regimes", "SizeTable", "find_crossings", "fit_regimes", "size_table"]

FloatArray = np.ndarray
StopCheck = Callable[[], bool]
DEFAULT_OPTIONS = FitOptions()
Z_DECISIVE = 2.0  # standard errors of the gap between two sizes' mean losses (about 95% two-sided)


@dataclass(frozen=True)
class RegimeFit:
    """The law at one regime (None, with `error`, when it could not be fitted there), and its interval."""

    regime: float
    n_sizes: int
    law: FittedLaw | None
    boot: Bootstrap | None
    level: float
    error: str | None = None

    @property
    def alpha(self) -> float:
        return math.nan if self.law is None else float(self.law.params.get("alpha", math.nan))

    @property
    def alpha_interval(self) -> tuple[float, float]:
        if self.boot is None or not self.boot.n_done or "alpha" not in self.boot.names:
            return math.nan, math.nan
        return self.boot.interval("alpha", self.level)


@dataclass(frozen=True)
class Crossing:
    """Two sizes whose order flips: the bigger (by x) loses at `loses_at` and wins at `wins_at`; `flips` are
    the consecutive decisive regimes (a, b) between which the winner changes."""

    bigger: str
    smaller: str
    loses_at: tuple[float, ...]
    wins_at: tuple[float, ...]
    flips: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SizeTable:
    """Mean loss (regimes x sizes), its standard error and seed count, sizes in order of x (smallest first)."""

    regimes: FloatArray
    sizes: tuple[str, ...]
    x: FloatArray
    mean: FloatArray
    se: FloatArray
    count: FloatArray

    def ranks(self) -> FloatArray:
        """Rank of each size at each regime by mean loss (1 = lowest; NaN where a size has no run there)."""
        filled = np.where(np.isfinite(self.mean), self.mean, np.inf)
        order = np.argsort(np.argsort(filled, axis=1, kind="stable"), axis=1, kind="stable") + 1.0
        return np.where(np.isfinite(self.mean), order, np.nan)

    def agreement(self) -> FloatArray:
        """Per regime: the share of pairs of sizes (different x) in which the bigger has the lower mean loss."""
        out = []
        for row in self.mean:
            wins = [row[j] < row[i] for i in range(len(self.sizes)) for j in range(i + 1, len(self.sizes))
                    if self.x[j] > self.x[i] and math.isfinite(row[i]) and math.isfinite(row[j])]
            out.append(float(np.mean(wins)) if wins else math.nan)
        return np.array(out)


@dataclass(frozen=True)
class Regimes:
    """The law at every regime, the sizes' table, the crossings, and how far alpha moved (its range over the
    regimes relative to its median)."""

    axis: str  # "evaluation step" | "steps"
    fits: tuple[RegimeFit, ...]
    table: SizeTable
    crossings: tuple[Crossing, ...]
    form: str
    stopped: bool = False

    @property
    def alpha_rel_range(self) -> float:
        alpha = np.array([f.alpha for f in self.fits])
        alpha = alpha[np.isfinite(alpha)]
        if alpha.size < 2:
            return math.nan
        median = float(np.median(alpha))
        return float(np.ptp(alpha)) / abs(median) if median else math.inf


def size_table(size: Sequence[str], x: ArrayLike, loss: ArrayLike, regime: ArrayLike) -> SizeTable:
    """Mean, standard error and count of the loss of every size at every regime; sizes ordered by x."""
    labels = np.asarray(size, dtype=object)
    xa, ya, ra = (np.asarray(v, dtype=float).ravel() for v in (x, loss, regime))
    names = sorted(set(labels.tolist()), key=lambda s: (float(np.median(xa[labels == s])), str(s)))
    regimes = np.unique(ra)
    shape = (regimes.size, len(names))
    mean, se, count = np.full(shape, math.nan), np.full(shape, math.nan), np.zeros(shape)
    for j, name in enumerate(names):
        for i, r in enumerate(regimes):
            v = ya[(labels == name) & (ra == r)]
            if v.size:
                mean[i, j], count[i, j] = v.mean(), v.size
                se[i, j] = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
    xs = np.array([float(np.median(xa[labels == s])) for s in names])
    return SizeTable(regimes, tuple(names), xs, mean, se, count)


def _decisive(table: SizeTable, i: int, small: int, big: int) -> int:
    """+1 when the bigger size wins at regime i beyond the noise, -1 when it loses, 0 for a tie or no data."""
    a, b = table.mean[i, small], table.mean[i, big]
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0
    gap = a - b  # > 0: the bigger has the lower loss
    noise = math.hypot(table.se[i, small], table.se[i, big])
    beyond = abs(gap) > Z_DECISIVE * noise if math.isfinite(noise) else gap != 0
    return int(np.sign(gap)) if beyond else 0


def find_crossings(table: SizeTable) -> tuple[Crossing, ...]:
    """Every pair (smaller, bigger by x) that the bigger loses decisively at some regime and wins at another."""
    out = []
    n = len(table.sizes)
    for small in range(n):
        for big in range(small + 1, n):
            if table.x[big] <= table.x[small]:
                continue
            crossing = _crossing(table, small, big)
            if crossing is not None:
                out.append(crossing)
    return tuple(out)


def _crossing(table: SizeTable, small: int, big: int) -> Crossing | None:
    signs = [(float(r), _decisive(table, i, small, big)) for i, r in enumerate(table.regimes)]
    loses = tuple(r for r, s in signs if s < 0)
    wins = tuple(r for r, s in signs if s > 0)
    if not loses or not wins:
        return None
    decided = [(r, s) for r, s in signs if s != 0]
    flips = tuple((a[0], b[0]) for a, b in itertools.pairwise(decided) if a[1] != b[1])
    return Crossing(table.sizes[big], table.sizes[small], loses, wins, flips)


def _fit_one(regime: float, sizes: int, x: FloatArray, y: FloatArray, unit: FloatArray, form: str,
             options: FitOptions, n_resamples: int, seed: int, level: float,
             should_stop: StopCheck | None) -> RegimeFit:
    try:
        boot = bootstrap(form, x, y, groups=unit, n_resamples=n_resamples, rng=seed, options=options,
                         should_stop=should_stop)
    except ValueError as exc:  # too few sizes at this regime, a bad loss
        return RegimeFit(regime, sizes, None, None, level, str(exc))
    return RegimeFit(regime, sizes, boot.law, boot if n_resamples else None, level)


def fit_regimes(size: Sequence[str], x: ArrayLike, loss: ArrayLike, regime: ArrayLike, unit: ArrayLike, *,
                axis: str = "evaluation step", form: str = "M2", options: FitOptions = DEFAULT_OPTIONS,
                n_resamples: int = 200, seed: int = 0, level: float = 0.9,
                should_stop: StopCheck | None = None) -> Regimes:
    """Fit `form` at every regime (the points whose `regime` equals it), bootstrapped over `unit` (seeds), and
    find the crossings between sizes. One point per run and regime: `size` labels the run's size, `x` its x."""
    xa, ya, ra = (np.asarray(v, dtype=float).ravel() for v in (x, loss, regime))
    ua, labels = np.asarray(unit).ravel(), np.asarray(size, dtype=object)
    if not (xa.size == ya.size == ra.size == ua.size == len(size)):
        raise ValueError("size, x, loss, regime and unit need one value per point each")
    fits = []
    for r in np.unique(ra):
        if should_stop is not None and should_stop():
            break
        sel = ra == r
        fits.append(_fit_one(float(r), len(set(labels[sel].tolist())), xa[sel], ya[sel], ua[sel], form, options,
                             n_resamples, seed, level, should_stop))
    table = size_table(size, xa, ya, ra)
    stopped = should_stop is not None and should_stop()
    return Regimes(axis, tuple(fits), table, find_crossings(table), form, stopped)
