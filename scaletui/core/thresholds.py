"""The numbers the alert detectors decide with, defined once with their documented defaults.

Why in the vocabulary layer: a sweep file's `[diagnostics]` table is validated by `config` (which must
stay free of numpy) and read by the detectors in `analysis.diagnose`; both import this one class.
Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Every number a detector decides with. Defaults were checked against tiny real runs on MNIST-1D
    (healthy MLPs and residual MLPs, Adam/SGD, He/Xavier/default init) so that those raise nothing."""

    # smoothing
    smooth_window: int = 20  # train-loss steps averaged into one level (train loss is one batch per step)
    # divergence
    divergence_factor: float = 10.0  # train loss above factor x its best level so far ...
    divergence_window: int = 5  # ... at every one of this many consecutive steps
    divergence_floor: float = 0.1  # the "best so far" never counts below this fraction of the initial loss
    test_rise_factor: float = 1.5  # test loss this many times its best: instability or overfitting?
    train_rise_factor: float = 1.2  # instability: smoothed train loss this many times its best ...
    norm_growth_factor: float = 2.0  # ... or total gradient norm grown this much (weights growing too)
    rise_evals: int = 2  # a test-loss rise must hold for this many consecutive evaluations
    train_drop_min: float = 0.05  # "train loss still falling": at least 5% below where test loss was best
    lr_backoff: float = 3.0  # divide lr by this when no size rule applies
    # plateau / flatline
    plateau_window: float = 0.5  # judged over the last half of the steps so far (scale-free)
    plateau_min_steps: int = 200  # ... once that window spans at least this many train steps
    plateau_min_evals: int = 4  # test loss must agree when the window holds at least this many evaluations
    plateau_min_rel_improvement: float = 0.01  # second half of the window <1% better than the first: stuck
    plateau_z: float = 2.0  # ... by a margin of this many standard errors of the train loss's batch noise
    plateau_gap_factor: float = 1.3  # stuck counts when the loss is above this x the group's best ...
    flatline_frac: float = 0.8  # ... or the train loss is still above this fraction of its initial level
    # gradients
    grad_ratio_vanishing: float = 0.01  # first-layer / last-layer gradient norm below this: vanishing
    grad_ratio_exploding: float = 100.0  # ... above this: exploding
    grad_window: int = 5  # consecutive logging steps a ratio must hold; also the "early level" span
    collapse_factor: float = 50.0  # a layer's gradient norm fell this much from its early level ...
    collapse_others_factor: float = 5.0  # ... while the median other layer fell less than this
    # overfitting / memorisation
    overfit_gap_growth: float = 0.25  # test-train gap grew by this fraction of the best test loss ...
    overfit_test_rise: float = 0.1  # ... the test loss is 10% above its best ... (and train still falling)
    # group level
    monotonic_tolerance: float = 0.01  # larger model worse by more than 1% of the loss (and the seed spread)
    # seed noise (2 standard errors of the gap between two sizes' mean losses) above this x the gap
    seed_spread_factor: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"threshold {f.name} must be a positive number, got {value!r}")
        for name in ("divergence_floor", "plateau_window", "plateau_min_rel_improvement", "flatline_frac",
                     "train_drop_min"):
            if getattr(self, name) >= 1:
                raise ValueError(f"threshold {name} must be below 1, got {getattr(self, name)!r}")
        for name in ("divergence_factor", "test_rise_factor", "train_rise_factor", "norm_growth_factor",
                     "lr_backoff", "plateau_gap_factor", "collapse_factor", "collapse_others_factor"):
            if getattr(self, name) <= 1:
                raise ValueError(f"threshold {name} must be above 1, got {getattr(self, name)!r}")


def thresholds_from(overrides: Mapping[str, Any], base: Thresholds | None = None) -> Thresholds:
    """`base` (defaults if None) with `overrides` applied by field name; unknown names raise ValueError."""
    base = base or Thresholds()
    known = {f.name: f for f in fields(Thresholds)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown threshold(s): {', '.join(unknown)}; known: {', '.join(known)}")
    values = {name: getattr(base, name) for name in known}
    for name, value in overrides.items():
        values[name] = int(value) if isinstance(getattr(base, name), int) and float(value).is_integer() else value
    return Thresholds(**values)
