"""`train.stop_when_hopeless`: whether a running run is hopeless, as pure logic over numbers.

The rule. At one of its evaluations a running run is *hopeless* when the lower end `lo` of the 90% band of
its predicted final test loss (analysis.curve_forecast) lies above the final test loss of a finished
smaller size of its group: with 90% confidence (the band's lower end, one-sided 95%) it ends worse than
a model with fewer parameters already did, so training it on buys nothing the sweep has not got. Lower is
better for the loss. The run is stopped once `STOP_AFTER` consecutive evaluations are hopeless; an
evaluation that is not hopeless, or whose forecast has no band (none could be made, or its ends are not
finite and ordered), starts the count again. One noisy evaluation therefore never stops a run.

The group. The finished runs the forecaster learns the run's curve from for its depth: the same training
plan (the config without size, seed, device and logging cadence, so the same steps, schedule, data and
hyperparameters) and the same depth, each run to its last step (services.curve_forecasts keeps exactly
those). "Smaller" means fewer parameters.

A size's loss is the mean of its seeds' final test losses, not its best seed: the comparison is between
sizes, and a single lucky seed would make a bigger model look hopeless when the smaller size is not
reliably that good. The baseline is the best (lowest) such mean among the smaller sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["STOP_AFTER", "Baseline", "FinishedSize", "HopelessStreak", "best_smaller", "is_hopeless", "stop_reason"]

STOP_AFTER = 2  # consecutive hopeless evaluations before a run is stopped


@dataclass(frozen=True)
class FinishedSize:
    """One finished run of the group: its parameters, its final test loss and its size's label (`8x2`)."""

    params: float
    final: float
    label: str


@dataclass(frozen=True)
class Baseline:
    """The smaller size a run is compared with: its label, parameters, seed-mean final loss and seeds."""

    label: str
    params: float
    loss: float
    seeds: int


def best_smaller(finished: Sequence[FinishedSize], params: float) -> Baseline | None:
    """Among the finished sizes with fewer parameters than `params`, the one whose seed-mean final loss is
    lowest; None when there is none (non-finite losses are left out)."""
    by_size: dict[tuple[float, str], list[float]] = {}
    for run in finished:
        if run.params < params and math.isfinite(run.final):
            by_size.setdefault((run.params, run.label), []).append(run.final)
    sizes = [Baseline(label, size, sum(losses) / len(losses), len(losses)) for (size, label), losses in by_size.items()]
    return min(sizes, key=lambda b: (b.loss, b.params), default=None)


def has_band(lo: float | None, hi: float | None) -> bool:
    """A forecast with a usable band: both ends finite and lo < hi."""
    return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) and lo < hi


def is_hopeless(lo: float | None, hi: float | None, baseline: Baseline | None) -> bool:
    """One evaluation's verdict: the band's lower end above the baseline's loss (never without a band)."""
    return baseline is not None and has_band(lo, hi) and lo is not None and lo > baseline.loss


@dataclass
class HopelessStreak:
    """Consecutive hopeless evaluations of one run; `observe` says when the run should stop."""

    steps: list[int] = field(default_factory=list)  # the evaluation steps of the current streak

    def observe(self, step: int, hopeless: bool) -> bool:
        """Count one evaluation (in step order); True once `STOP_AFTER` in a row were hopeless."""
        self.steps = [*self.steps, step] if hopeless else []
        return len(self.steps) >= STOP_AFTER


def stop_reason(lo: float, hi: float, level: float, baseline: Baseline, steps: Sequence[int]) -> str:
    """The reason recorded with the run (its `error` column and its `early_stopped` event): the first 60
    characters (what `scaletui ls` shows) say the bound and what it lost to."""
    seeds = f"{baseline.seeds} seed{'s' if baseline.seeds != 1 else ''}"
    at = ", ".join(str(s) for s in steps)
    return (f"hopeless: pred. final test loss >= {lo:.4g} ({level:.0%}), {baseline.label} got {baseline.loss:.4g} "
            f"(mean of {seeds}); hopeless at steps {at}, band at step {steps[-1]} [{lo:.4g}, {hi:.4g}]")
