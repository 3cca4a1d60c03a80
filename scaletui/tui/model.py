"""Pure view logic of the app: ranking, deltas, downsampling, smoothing, grid shading, ETA.

Nothing here imports textual or touches the database, so every rule the screen follows (which
run is "the next shallower one", which bucket keeps a spike, what colour a cell gets) is a plain
function with unit tests, and the widgets only format and place what these functions return.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from scaletui.core.rows import FinalLoss, RunSummary
from scaletui.core.vocabulary import EMA_BETA, OK, AlertKind, DebiasedEma, RunStatus

#: Short badges for alert kinds in the runs table (the alerts pane spells them out).
ALERT_BADGES: dict[str, str] = {
    AlertKind.DIVERGENCE: "DIV", AlertKind.PLATEAU: "PLAT", AlertKind.VANISHING_GRADIENTS: "VANISH",
    AlertKind.EXPLODING_GRADIENTS: "EXPLODE", AlertKind.OVERFITTING: "OVERFIT",
    AlertKind.NON_MONOTONIC: "NONMONO", AlertKind.SEED_SENSITIVITY: "SEED",
}  # fmt: skip


def badge(kind: str) -> str:
    """The runs table's badge of an alert kind (of a kind it does not know: its first letters)."""
    return ALERT_BADGES.get(kind, kind[:6].upper())


def comparison_group(run: RunSummary, across: str) -> tuple[Any, ...]:
    """Runs that differ only in `across` (depth or width): the same everything else and seed."""
    other = run.width if across == "depth" else run.depth
    return (run.experiment, run.arch, run.dataset, run.train_size, run.optimizer, run.lr, run.seed, other)


# --------------------------------------------------------------------------- ranking and filtering

SORT_KEYS: tuple[str, ...] = ("rank", "loss", "params", "status", "step", "id")


def _missing_last(value: float | None) -> tuple[int, float]:
    return (1, 0.0) if value is None or math.isnan(value) else (0, float(value))


def rank_key(run: RunSummary, group_by: str) -> tuple[Any, ...]:
    """Grouped by width and ranked by depth (or the other way round), then seed, then id."""
    first, second = (run.width, run.depth) if group_by == "width" else (run.depth, run.width)
    return (run.experiment or "", run.arch, first, second, run.seed, run.id)


def order_runs(runs: Iterable[RunSummary], losses: Mapping[int, float | None], sort: str, group_by: str,
               reverse: bool = False) -> list[int]:
    """Run ids in display order. `losses` is the shown test loss of each run (live or final)."""
    keys = {
        "rank": lambda r: rank_key(r, group_by),
        "loss": lambda r: (_missing_last(losses.get(r.id)), rank_key(r, group_by)),
        "params": lambda r: (_missing_last(r.params), rank_key(r, group_by)),
        "status": lambda r: (r.status, rank_key(r, group_by)),
        "step": lambda r: (r.step or 0, rank_key(r, group_by)),
        "id": lambda r: r.id,
    }
    return [r.id for r in sorted(runs, key=keys[sort], reverse=reverse)]


def matches(run: RunSummary, badges: str, query: str) -> bool:
    """Every whitespace-separated term of `query` occurs in the run's label, status, experiment or
    alert badges (case-insensitive); `w64`, `d8`, `running`, `div` all work."""
    haystack = f"{run.label} {run.status.value} {run.experiment or ''} {run.arch} {badges}".lower()
    return all(term in haystack for term in query.lower().split())


def run_to_show(runs: Iterable[RunSummary]) -> int | None:
    """The run worth looking at when the app opens: the most recently started running run, else the
    run that was active last (finished or started), else None (nothing has started: the first row)."""
    runs = list(runs)
    running = [r for r in runs if r.status is RunStatus.RUNNING]
    if running:
        return max(running, key=lambda r: (r.started_at or "", r.id)).id
    active = [r for r in runs if r.started_at or r.finished_at]
    if active:
        return max(active, key=lambda r: (r.finished_at or r.started_at or "", r.id)).id
    return None


def run_to_follow(shown: Sequence[RunSummary], selected: RunSummary | None) -> int | None:
    """While the selection follows training: the run to select now, or None to keep the selection
    (`selected`, None when it is not shown). One that still trains is kept, and so is any selection
    while none of the runs shown trains."""
    training = any(r.status is RunStatus.RUNNING for r in shown)
    if selected is not None and (selected.status is RunStatus.RUNNING or not training):
        return None
    return run_to_show(shown)


# --------------------------------------------------------------------------- the central question


@dataclass(frozen=True)
class Delta:
    """Loss of a run minus the loss of the next smaller run along one axis (same everything else)."""

    value: float
    worse: bool  # the larger model has the higher loss


def size_deltas(runs: Iterable[RunSummary], across: str = "depth") -> dict[int, Delta]:
    """For each finished run, its loss (by the loss rule) against the next shallower (or narrower)
    finished run of its comparison group. Runs without a smaller finished neighbour get none."""
    groups: dict[tuple[Any, ...], list[RunSummary]] = {}
    for run in runs:
        if run.status in OK and run.loss is not None and math.isfinite(run.loss):
            groups.setdefault(comparison_group(run, across), []).append(run)
    deltas: dict[int, Delta] = {}
    for members in groups.values():
        members.sort(key=lambda r: (getattr(r, across), r.id))
        for smaller, larger in itertools.pairwise(members):
            if getattr(larger, across) > getattr(smaller, across):
                diff = _loss(larger) - _loss(smaller)
                deltas[larger.id] = Delta(diff, diff > 0)
    return deltas


def _loss(run: RunSummary) -> float:
    """The loss of a run that has one (`size_deltas` compares only those)."""
    return math.nan if run.loss is None else float(run.loss)


# --------------------------------------------------------------------------- curves


def debiased_ema(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """The vocabulary's debiased EMA (the loss rule `smoothed`) along a curve, one value per point.
    Non-finite values are skipped (the previous smoothed value repeats)."""
    ema = DebiasedEma(beta)
    out: list[float] = []
    for v in values:
        if math.isfinite(v):
            ema.update(v)
        out.append(ema.value)
    return out


def downsample_minmax(steps: Sequence[int], values: Sequence[float], buckets: int) -> tuple[list[int], list[float]]:
    """At most ~2 points per bucket: each bucket's minimum and maximum (the first of equal ones), in
    step order, so a spike (or a dip) anywhere in the bucket survives; every non-finite value is kept.
    Short series come back unchanged. Vectorised: the selected run's curve (tens of thousands of points)
    is downsampled on every poll that extends it."""
    n = len(values)
    if buckets <= 0 or n <= 2 * buckets:
        return list(steps), list(values)
    v = np.asarray(values, dtype=float)
    starts = np.arange(buckets) * n // buckets
    bucket = np.repeat(np.arange(buckets), np.diff(np.append(starts, n)))
    finite = np.isfinite(v)
    lows = np.minimum.reduceat(np.where(finite, v, np.inf), starts)
    highs = np.maximum.reduceat(np.where(finite, v, -np.inf), starts)
    keep = np.concatenate([_first_per_bucket(finite & (v == lows[bucket]), bucket),
                           _first_per_bucket(finite & (v == highs[bucket]), bucket), np.flatnonzero(~finite)])
    kept = np.unique(keep)
    s = np.asarray(steps)
    return [int(x) for x in s[kept]], [float(y) for y in v[kept]]


def _first_per_bucket(hits: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    """Index of the first hit in each bucket that has one."""
    at = np.flatnonzero(hits)
    _, first = np.unique(bucket[at], return_index=True)
    return at[first]


def bucket_max(values: Sequence[float], buckets: int) -> list[float]:
    """A sparkline's series: the largest finite value per bucket (a gradient spike must show)."""
    n = len(values)
    if n <= buckets or buckets <= 0:
        return [v for v in values if math.isfinite(v)]
    out = []
    for b in range(buckets):
        chunk = [v for v in values[b * n // buckets:(b + 1) * n // buckets] if math.isfinite(v)]
        if chunk:
            out.append(max(chunk))
    return out


EARLY_FRACTION = 0.05  # the first steps of a loss curve, left out of the plot's default y-range
MIN_GAIN = 0.2  # clip only when that frees at least this fraction of the plot's height


def robust_y_range(points: Sequence[tuple[float, float]], early: float = EARLY_FRACTION) -> tuple[float, float] | None:
    """A y-range for loss curves that the first steps do not squash: from the lowest point to the
    highest point after the first `early` fraction of the x span (plus a small margin). None when
    that would hide little (a late spike, or no towering start): then the plot's own range is right.
    The points above the range are still drawn; they leave the plot at the top."""
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    if len(finite) < 3:
        return None
    x0, x1 = min(x for x, _ in finite), max(x for x, _ in finite)
    rest = [y for x, y in finite if x >= x0 + early * (x1 - x0)]
    if len(rest) < 2:
        return None
    bottom, top, full_top = min(y for _, y in finite), max(rest), max(y for _, y in finite)
    margin = 0.03 * (top - bottom)
    if full_top - (top + margin) < MIN_GAIN * (full_top - bottom):
        return None
    return bottom - margin, top + margin


def log10_safe(values: Sequence[float]) -> list[float]:
    """log10 for a log-scale plot drawn on linear axes; non-positive values become NaN (not drawn)."""
    return [math.log10(v) if v > 0 and math.isfinite(v) else math.nan for v in values]


# --------------------------------------------------------------------------- grid view


@dataclass(frozen=True)
class GridCell:
    """One (depth, width) point: mean loss over seeds with its spread and where it goes wrong."""

    depth: int
    width: int
    mean: float | None
    spread: float | None  # max - min over seeds
    n_seeds: int
    n_diverged: int
    shade: float | None  # 0 = best cell of the grid, 1 = worst
    worse_than_shallower: bool
    worse_than_narrower: bool


def grid_cells(points: Iterable[FinalLoss]) -> dict[tuple[int, int], GridCell]:
    """`final_losses` rows of one experiment -> cells keyed (depth, width). Several rows per size
    (other swept settings) are reduced to the best of them: each size at its best setting."""
    best: dict[tuple[int, int], FinalLoss] = {}
    for p in points:
        key = (p.depth, p.width)
        if key not in best or _missing_last(p.mean_loss) < _missing_last(best[key].mean_loss):
            best[key] = p
    means = {k: p.mean_loss for k, p in best.items() if p.mean_loss is not None}
    lo, hi = (min(means.values()), max(means.values())) if means else (0.0, 0.0)
    return {k: _cell(k, p, means, lo, hi) for k, p in best.items()}


def _cell(key: tuple[int, int], p: FinalLoss, means: dict[tuple[int, int], float], lo: float, hi: float) -> GridCell:
    depth, width = key
    mean = means.get(key)
    spread = None if p.max_loss is None or p.min_loss is None else p.spread
    shallower = _nearest_below(means, depth, lambda d, w: w == width and d < depth, axis=0)
    narrower = _nearest_below(means, width, lambda d, w: d == depth and w < width, axis=1)
    return GridCell(
        depth, width, mean, spread, int(p.n_seeds or 0), int(p.n_diverged or 0),
        shade=None if mean is None else shade(mean, lo, hi),
        worse_than_shallower=mean is not None and shallower is not None and mean > shallower,
        worse_than_narrower=mean is not None and narrower is not None and mean > narrower,
    )  # fmt: skip


def _nearest_below(means: dict[tuple[int, int], float], at: int, pick: Callable[[int, int], bool],
                   axis: int) -> float | None:
    """Mean loss of the nearest smaller neighbour along one axis (0 = depth, 1 = width)."""
    below = [(k[axis], v) for k, v in means.items() if pick(*k)]
    return max(below)[1] if below else None


def shade(value: float, best: float, worst: float) -> float:
    """Position of `value` between the best (0) and worst (1) loss of the grid."""
    if not math.isfinite(value) or worst <= best:
        return 0.0
    return min(1.0, max(0.0, (value - best) / (worst - best)))


def shade_color(t: float) -> str:
    """Green (best) through yellow to red (worst), as an `rgb(...)` colour for a cell background."""
    t = min(1.0, max(0.0, t))
    red = int(40 + 160 * min(1.0, 2 * t))
    green = int(40 + 140 * min(1.0, 2 * (1 - t)))
    return f"rgb({red},{green},40)"


# --------------------------------------------------------------------------- status bar


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of a stored ISO-8601 UTC timestamp (`...Z`), or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def status_counts(runs: Iterable[RunSummary]) -> dict[RunStatus, int]:
    counts: dict[RunStatus, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts


def eta_seconds(runs: Sequence[RunSummary]) -> float | None:
    """Time left for the queued and running runs: mean wall time of the finished ones, times the
    work left (a running run counts for the fraction of its steps still to go), spread over the
    runs running now. None until one run has finished or while nothing is running."""
    durations = [end - start for r in runs if r.finished
                 for start, end in [(parse_iso(r.started_at), parse_iso(r.finished_at))]
                 if start is not None and end is not None and end >= start]
    running = [r for r in runs if r.status is RunStatus.RUNNING]
    if not durations or not running:
        return None
    mean = sum(durations) / len(durations)
    left: float = sum(1 for r in runs if r.status is RunStatus.QUEUED)
    left += sum(1 - min(1.0, (r.step or 0) / r.steps) if r.steps else 1.0 for r in running)
    return mean * left / len(running)


def human_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_loss(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.3g}"


def fmt_count(n: int | None) -> str:
    """1234567 -> 1.23M: parameter counts in a narrow column."""
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
