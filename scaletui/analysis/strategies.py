"""Scaling strategies side by side: grow width, grow depth, or both, and which reaches a loss for the least compute.

The research notes ask "width exclusively, depth exclusively, or both?" and "does doubling width per stage make
width vs depth a fair comparison?". A width x depth sweep answers both. Each *strategy* is a path through the
grid: width at one fixed depth, depth at one fixed width, both together along the grid's diagonal (or any path
the user names). Along each path the same law is fitted twice, against parameters and against training FLOPs,
and inverted: how many FLOPs does the path need to reach a target loss? Comparing at equal FLOPs, not equal
parameters or equal depth, is what makes the comparison fair when the cost of a parameter differs between
shapes (a ResNet's stages double their width, so its parameters and FLOPs grow differently with depth).

Intervals come from `solve.bootstrap`, the one group bootstrap: every strategy is resampled by the same unit
(seeds, or sizes when there is one seed) with the same generator seed, so when every strategy has the same units
the k-th resample of each draws the same seeds: the resamples are paired, and "which strategy is cheapest" is
counted resample by resample.

Only numpy: this module runs in the app's process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.forms import FittedLaw, form, law_values
from scaletui.analysis.solve import Bootstrap, FitOptions, bootstrap
from scaletui.core.vocabulary import FitX

__all__ = [
    "AXES",
    "BOTH",
    "DEPTH",
    "PATH",
    "WIDTH",
    "AxisFit",
    "Comparison",
    "FitPlan",
    "Grid",
    "Strategy",
    "StrategyFit",
    "check_grid",
    "compare_strategies",
    "default_target",
    "grid_strategies",
    "reach_x",
]

FloatArray = np.ndarray
Cell = tuple[int, int]  # (width, depth)
StopCheck = Callable[[], bool]

WIDTH, DEPTH, BOTH, PATH = FitX.WIDTH.value, FitX.DEPTH.value, "both", "path"  # what a strategy grows
PARAMS, FLOPS = FitX.PARAMS.value, FitX.FLOPS.value
AXES: tuple[str, ...] = (PARAMS, FLOPS)
#: How far beyond (or below) the data the inversion searches; further, the target counts as not reached.
SEARCH_RANGE = 1e6
DEFAULT_OPTIONS = FitOptions()
BISECTIONS = 90  # halvings of a log range of ~28 (1e-6..1e6): below 1e-12 relative precision


@dataclass(frozen=True)
class Grid:
    """One point per run: its shape, its size in parameters and training FLOPs, its loss, and its
    resampling unit (the seed; or the size, when the sweep has one seed)."""

    width: FloatArray
    depth: FloatArray
    params: FloatArray
    flops: FloatArray
    loss: FloatArray
    unit: FloatArray

    @classmethod
    def build(cls, width: ArrayLike, depth: ArrayLike, params: ArrayLike, flops: ArrayLike, loss: ArrayLike,
              unit: ArrayLike) -> Grid:
        cols = [np.asarray(c, dtype=float).ravel() for c in (width, depth, params, flops, loss)]
        units = np.asarray(unit).ravel()
        if len({c.size for c in cols} | {units.size}) != 1:
            raise ValueError("width, depth, params, flops, loss and unit need one value per run each")
        width_, depth_, params_, flops_, loss_ = cols
        return cls(width_, depth_, params_, flops_, loss_, units)

    def widths(self) -> tuple[int, ...]:
        return tuple(int(w) for w in np.unique(self.width))

    def depths(self) -> tuple[int, ...]:
        return tuple(int(d) for d in np.unique(self.depth))

    def cells(self) -> set[Cell]:
        return {(int(w), int(d)) for w, d in zip(self.width, self.depth, strict=True)}

    def select(self, cells: Sequence[Cell]) -> FloatArray:
        """Indices of the runs in `cells`."""
        wanted = set(cells)
        return np.flatnonzero([(int(w), int(d)) in wanted for w, d in zip(self.width, self.depth, strict=True)])

    def axis(self, name: str) -> FloatArray:
        return self.params if name == PARAMS else self.flops


@dataclass(frozen=True)
class Strategy:
    """A path through the grid: its name ("width at depth 2"), what it grows, and its cells, smallest first."""

    name: str
    kind: str
    cells: tuple[Cell, ...]


def check_grid(grid: Grid) -> None:
    """A strategy comparison needs two axes: ValueError with one line otherwise."""
    widths, depths = grid.widths(), grid.depths()
    if len(widths) < 2 or len(depths) < 2:
        raise ValueError(f"a width x depth grid needs at least 2 widths and 2 depths; this sweep has "
                         f"{len(widths)} width(s) {list(widths)} and {len(depths)} depth(s) {list(depths)}")


def grid_strategies(grid: Grid, path: Sequence[Cell] | None = None) -> tuple[Strategy, ...]:
    """Width at each depth, depth at each width, and both together: along `path` when given (its cells must
    be in the grid), else along the diagonal (the i-th width with the i-th depth)."""
    check_grid(grid)
    present = grid.cells()
    widths, depths = grid.widths(), grid.depths()
    out = [Strategy(f"width at depth {d}", WIDTH, tuple((w, d) for w in widths if (w, d) in present))
           for d in depths]
    out += [Strategy(f"depth at width {w}", DEPTH, tuple((w, d) for d in depths if (w, d) in present))
            for w in widths]
    if path is not None:
        missing = [c for c in path if c not in present]
        if missing:
            raise ValueError(f"sizes not in the sweep: {', '.join(f'{w}x{d}' for w, d in missing)}")
        out.append(Strategy("both, along the given path", PATH, tuple(path)))
    else:
        diagonal = tuple(c for c in zip(widths, depths, strict=False) if c in present)  # the shorter axis ends it
        out.append(Strategy("both, along the diagonal", BOTH, diagonal))
    return tuple(out)


def default_target(grid: Grid, strategies: Sequence[Strategy]) -> float:
    """The lowest loss that every strategy's own sizes reached (mean over seeds): each strategy reaches it
    without extrapolating upward, so the comparison is about measured ground."""
    return max(min(_cell_mean(grid, c) for c in s.cells) for s in strategies if s.cells)


def _cell_mean(grid: Grid, cell: Cell) -> float:
    return float(grid.loss[grid.select([cell])].mean())


# ----------------------------------------------------------------------------- inverting a law


def reach_x(form_name: str, params: dict[str, FloatArray], target: float, lo: float, hi: float) -> FloatArray:
    """The x at which each law (params: arrays of shape (S,)) falls to `target`, by bisection in log x over
    [lo, hi]; inf where the law is still above the target at hi (never reached within the range), lo where it is
    already below at lo. The forms are decreasing in x, which the bisection relies on."""
    names = form(form_name).param_names
    cols = {n: np.asarray(params[n], dtype=float).reshape(-1, 1) for n in names}
    size = next(iter(cols.values())).shape[0]
    a, b = np.full(size, math.log(lo)), np.full(size, math.log(hi))

    def above(u: FloatArray) -> FloatArray:
        with np.errstate(all="ignore"):
            return law_values(form_name, cols, np.exp(u)[:, None])[:, 0] > target

    never = above(b)
    for _ in range(BISECTIONS):
        mid = 0.5 * (a + b)
        up = above(mid)
        a, b = np.where(up, mid, a), np.where(up, b, mid)
    return np.where(never, math.inf, np.exp(b))


def _quantiles(values: FloatArray, level: float) -> tuple[float, float]:
    """Percentile interval that keeps infinities (a resample that never reaches the target) as infinities."""
    if values.size == 0:
        return math.nan, math.nan
    q = np.quantile(values, [0.5 * (1 - level), 0.5 * (1 + level)], method="inverted_cdf")
    return float(q[0]), float(q[1])


# ----------------------------------------------------------------------------- fitting one strategy


@dataclass(frozen=True)
class AxisFit:
    """The law along one strategy against one axis (params or flops), and the cost of the target loss on it.

    cost: the x where the law reaches the target (inf: never within SEARCH_RANGE of the data); cost_samples:
    the same for every bootstrap resample (empty without a bootstrap); reach: the share of resamples that reach
    it. x_range: the strategy's smallest and largest x, to say whether the cost is inside the data.
    """

    axis: str
    law: FittedLaw
    boot: Bootstrap | None
    cost: float
    cost_samples: FloatArray
    x_range: tuple[float, float]
    level: float

    @property
    def alpha_interval(self) -> tuple[float, float]:
        if self.boot is None or not self.boot.n_done or "alpha" not in self.boot.names:
            return math.nan, math.nan
        return self.boot.interval("alpha", self.level)

    @property
    def cost_interval(self) -> tuple[float, float]:
        return _quantiles(self.cost_samples, self.level)

    @property
    def reach(self) -> float:
        """Share of resamples whose law reaches the target (NaN without a bootstrap)."""
        return float(np.isfinite(self.cost_samples).mean()) if self.cost_samples.size else math.nan

    @property
    def where(self) -> str:
        """Where the cost lies relative to the data: "in range", "below the data", "3.2x beyond", "never"."""
        lo, hi = self.x_range
        if not math.isfinite(self.cost):
            return "never"
        if self.cost > hi * (1 + 1e-9):
            return f"{self.cost / hi:.3g}x beyond"
        return "below the data" if self.cost < lo * (1 - 1e-9) else "in range"


@dataclass(frozen=True)
class StrategyFit:
    """One strategy: its fits against params and flops (by axis), or the one line saying why it has none;
    and its measured cells (mean loss over seeds), for plots and tables."""

    strategy: Strategy
    fits: dict[str, AxisFit] = field(default_factory=dict)
    error: str | None = None
    cells: tuple[tuple[Cell, float, float, float], ...] = ()  # (cell, mean params, mean flops, mean loss)

    def cost(self, axis: str = FLOPS) -> float:
        fit = self.fits.get(axis)
        return fit.cost if fit is not None else math.nan


@dataclass(frozen=True)
class FitPlan:
    """What every strategy's fits share: the form and its options, the target, the bootstrap."""

    form: str = "M2"
    options: FitOptions = DEFAULT_OPTIONS
    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.9


def _fit_axis(grid: Grid, index: FloatArray, axis: str, target: float, plan: FitPlan,
              should_stop: StopCheck | None) -> AxisFit:
    """Fit `plan.form` against `axis` on the runs `index`, bootstrap it by unit, and invert it at the target."""
    x, y, unit = grid.axis(axis)[index], grid.loss[index], grid.unit[index]
    boot = bootstrap(plan.form, x, y, groups=unit, n_resamples=plan.n_resamples, rng=plan.seed,
                     options=plan.options, should_stop=should_stop)
    lo, hi = float(x.min()) / SEARCH_RANGE, float(x.max()) * SEARCH_RANGE
    point = reach_x(plan.form, {k: np.array([v]) for k, v in boot.law.params.items()}, target, lo, hi)
    samples = (reach_x(plan.form, dict(zip(boot.names, boot.samples.T, strict=True)), target, lo, hi)
               if boot.n_done and plan.n_resamples else np.zeros(0))
    return AxisFit(axis, boot.law, boot if plan.n_resamples else None, float(point[0]), samples,
                   (float(x.min()), float(x.max())), plan.level)


def _fit_strategy(grid: Grid, s: Strategy, target: float, plan: FitPlan,
                  should_stop: StopCheck | None) -> StrategyFit:
    index = grid.select(s.cells)
    cells = tuple((c, float(grid.params[i].mean()), float(grid.flops[i].mean()), float(grid.loss[i].mean()))
                  for c in s.cells if (i := grid.select([c])).size)
    try:
        fits = {axis: _fit_axis(grid, index, axis, target, plan, should_stop) for axis in AXES}
    except ValueError as exc:  # too few sizes on this path for the form, a bad loss: said on its row
        return StrategyFit(s, error=str(exc), cells=cells)
    return StrategyFit(s, fits, cells=cells)


# ----------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """Every strategy's fits, the target loss, and which strategy reaches it for the fewest FLOPs.

    cheapest / cheapest_by_params: the strategy with the lowest point cost on each axis (None: none reaches
    the target). p_cheapest: per strategy, the share of resamples in which it is the cheapest in FLOPs.
    paired: every strategy was resampled over the same units, so its k-th resample drew the same ones.
    """

    target: float
    target_given: bool
    form: str
    fits: tuple[StrategyFit, ...]
    cheapest: str | None
    cheapest_by_params: str | None
    p_cheapest: dict[str, float]
    paired: bool
    n_resamples: int
    level: float
    stopped: bool = False
    notes: tuple[str, ...] = ()


def compare_strategies(grid: Grid, *, target: float | None = None, path: Sequence[Cell] | None = None,
                       plan: FitPlan | None = None, should_stop: StopCheck | None = None) -> Comparison:
    """Fit every strategy of the grid against params and FLOPs and rank them by the FLOPs that reach `target`
    (default: `default_target`). ValueError with one line for a grid without two axes or a path off the grid."""
    plan = plan or FitPlan()
    strategies = grid_strategies(grid, path)
    if target is not None and not (math.isfinite(target) and target > 0):
        raise ValueError(f"target loss must be finite and > 0, got {target}")
    goal = default_target(grid, strategies) if target is None else float(target)
    fits = tuple(_fit_strategy(grid, s, goal, plan, should_stop) for s in strategies)
    stopped = should_stop is not None and should_stop()
    paired = len({tuple(np.unique(grid.unit[grid.select(s.cells)]).tolist()) for s in strategies}) == 1
    by_flops, by_params = _cheapest(fits, FLOPS), _cheapest(fits, PARAMS)
    return Comparison(goal, target is not None, plan.form, fits, by_flops, by_params, _p_cheapest(fits), paired,
                      plan.n_resamples, plan.level, stopped, _notes(fits, by_flops, by_params))


def _cheapest(fits: Sequence[StrategyFit], axis: str) -> str | None:
    costs = [(f.cost(axis), f.strategy.name) for f in fits if math.isfinite(f.cost(axis))]
    return min(costs)[1] if costs else None


def _p_cheapest(fits: Sequence[StrategyFit]) -> dict[str, float]:
    """Resample by resample, which strategy needs the fewest FLOPs; the share of resamples each wins."""
    rows = [(f.strategy.name, f.fits[FLOPS].cost_samples) for f in fits if FLOPS in f.fits]
    n = min((s.size for _, s in rows), default=0)
    if n == 0:
        return {}
    costs = np.stack([s[:n] for _, s in rows])
    winner = np.argmin(costs, axis=0)
    reached = np.isfinite(costs.min(axis=0))
    return {name: float(((winner == i) & reached).sum() / n) for i, (name, _) in enumerate(rows)}


def _notes(fits: Sequence[StrategyFit], by_flops: str | None, by_params: str | None) -> tuple[str, ...]:
    notes = []
    if by_flops is not None and by_params is not None and by_flops != by_params:
        notes.append(f"by parameters the cheapest would be {by_params}, by FLOPs it is {by_flops}: a parameter "
                     "costs different compute in different shapes, so the comparison is made at equal FLOPs")
    inside = [(f.cost(FLOPS), f.strategy.name) for f in fits if FLOPS in f.fits and f.fits[FLOPS].where == "in range"]
    if by_flops is not None and inside and min(inside)[1] != by_flops:
        notes.append(f"{by_flops} reaches the target only by extrapolating its law; the cheapest within its own "
                     f"measured sizes is {min(inside)[1]} ({min(inside)[0]:.4g} FLOPs)")
    never = [f.strategy.name for f in fits if FLOPS in f.fits and not math.isfinite(f.cost(FLOPS))]
    if never:
        notes.append(f"never reach the target (its law levels off above it): {', '.join(never)}")
    return tuple(notes)
