"""Scaling strategies on synthetic grids whose answers are known in closed form.

The grid: loss(w, d) = 0.3 + 5 w^-0.5 + 2/d, params = w^2 d, FLOPs = w^(2+m) d. Along width at a fixed depth the
loss is E + A w^-0.5 with E = 0.3 + 2/d; along depth at a fixed width it is E + 2/d: both exact M2 laws in
params and in FLOPs (each a power of w or of d), so the FLOPs (and parameters) each strategy needs to reach a
target loss are known exactly. m = 0: FLOPs are proportional to parameters; m = 2: a parameter in a wide layer
costs more compute (the ResNet question: compare at equal FLOPs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaletui.analysis.forms import law_values
from scaletui.analysis.strategies import (
    FitPlan,
    Grid,
    compare_strategies,
    default_target,
    grid_strategies,
    reach_x,
)

WIDTHS = (16, 32, 64, 128, 256)
DEPTHS = (1, 2, 4, 8, 32)
SEED_FACTORS = (0.998, 0.999, 1.001, 1.002)  # symmetric: the seed mean is the law


def loss_of(w: float, d: float) -> float:
    return 0.3 + 5 * w**-0.5 + 2 / d


def grid(m: float, widths: tuple[int, ...] = WIDTHS, depths: tuple[int, ...] = DEPTHS) -> Grid:
    rows = [(w, d, w * w * d, w ** (2 + m) * d, loss_of(w, d) * f, s)
            for w in widths for d in depths for s, f in enumerate(SEED_FACTORS)]
    return Grid.build(*(np.array(c) for c in zip(*rows, strict=True)))


def analytic_costs(target: float, m: float) -> dict[str, tuple[float, float]]:
    """(FLOPs, params) each width and depth strategy needs to reach `target` (inf: never)."""
    out = {}
    for d in DEPTHS:
        gap = target - 0.3 - 2 / d
        w = (5 / gap) ** 2 if gap > 0 else math.inf
        out[f"width at depth {d}"] = (w ** (2 + m) * d, w * w * d)
    for w in WIDTHS:
        gap = target - 0.3 - 5 * w**-0.5
        d = 2 / gap if gap > 0 else math.inf
        out[f"depth at width {w}"] = (w ** (2 + m) * d, w * w * d)
    return out


#: Along width at depth 1 again (a path whose cost is known), so no unknown diagonal competes.
KNOWN_PATH = tuple((w, 1) for w in WIDTHS)
PLAN = FitPlan(n_resamples=200, seed=0)


def test_the_depth_strategy_is_cheapest_at_equal_flops_as_the_closed_form_says() -> None:
    target = 0.7
    truth = analytic_costs(target, 0)
    best = min(truth, key=lambda k: truth[k][0])
    assert best.startswith("depth")  # the premise: growing depth is the cheaper way to 0.7 here
    c = compare_strategies(grid(0), target=target, path=KNOWN_PATH, plan=PLAN)
    assert c.cheapest == best and c.p_cheapest[best] > 0.9
    for f in c.fits:
        cost = truth.get(f.strategy.name, truth["width at depth 1"])[0]  # the path is width at depth 1
        got = f.fits["flops"]
        if math.isinf(cost):
            assert got.cost == math.inf and got.where == "never"
        else:
            assert got.cost == pytest.approx(cost, rel=0.02), f.strategy.name
            lo, hi = got.cost_interval
            assert lo <= cost * 1.02 and hi >= cost * 0.98, f.strategy.name


def test_exponents_along_each_strategy_are_the_closed_form_ones() -> None:
    """In FLOPs (m = 2): width at a fixed depth falls as FLOPs^-(0.5/4), depth at a fixed width as FLOPs^-1."""
    c = compare_strategies(grid(2), target=0.8, plan=PLAN)
    fits = {f.strategy.name: f.fits for f in c.fits}
    assert fits["width at depth 4"]["flops"].law.params["alpha"] == pytest.approx(0.125, abs=0.005)
    assert fits["width at depth 4"]["params"].law.params["alpha"] == pytest.approx(0.25, abs=0.01)
    assert fits["depth at width 64"]["flops"].law.params["alpha"] == pytest.approx(1.0, abs=0.03)
    lo, hi = fits["depth at width 64"]["flops"].alpha_interval
    assert lo <= 1.0 + 0.03 and hi >= 1.0 - 0.03


def test_the_winner_is_chosen_at_equal_flops_not_equal_parameters() -> None:
    """m = 2: wide layers cost more compute per parameter. By parameters one strategy looks cheapest, by FLOPs
    another; the comparison must name the FLOPs winner and say that parameters would have misled."""
    target = 0.8
    truth = analytic_costs(target, 2)
    by_flops = min(truth, key=lambda k: truth[k][0])
    by_params = min(truth, key=lambda k: truth[k][1])
    assert by_flops != by_params  # the premise of the test
    c = compare_strategies(grid(2), target=target, path=KNOWN_PATH, plan=PLAN)
    assert (c.cheapest, c.cheapest_by_params) == (by_flops, by_params)
    assert any("at equal FLOPs" in note and by_params in note for note in c.notes)


def test_resamples_are_paired_over_the_same_seeds() -> None:
    c = compare_strategies(grid(0), target=0.7, plan=PLAN)
    assert c.paired and c.n_resamples == 200
    assert 0.99 <= sum(c.p_cheapest.values()) <= 1.0


def test_default_target_is_the_lowest_loss_every_strategy_reached() -> None:
    g = grid(0)
    strategies = grid_strategies(g)
    expected = max(min(loss_of(w, d) for w, d in s.cells) for s in strategies)
    assert default_target(g, strategies) == pytest.approx(expected, rel=1e-9)
    assert not compare_strategies(g, plan=FitPlan(n_resamples=0)).target_given


def test_strategies_are_width_at_each_depth_depth_at_each_width_and_the_diagonal() -> None:
    names = [s.name for s in grid_strategies(grid(0))]
    assert names == ([f"width at depth {d}" for d in DEPTHS] + [f"depth at width {w}" for w in WIDTHS]
                     + ["both, along the diagonal"])
    diagonal = grid_strategies(grid(0))[-1]
    assert diagonal.cells == tuple(zip(WIDTHS, DEPTHS, strict=True))


def test_reach_x_inverts_the_law_and_says_never_below_its_floor() -> None:
    params = {"E": np.array([0.3, 0.3]), "A": np.array([5.0, 5.0]), "alpha": np.array([0.5, 0.5])}
    got = reach_x("M2", params, 0.55, 1.0, 1e9)
    assert got == pytest.approx([400.0, 400.0], rel=1e-9)  # (5 / 0.25)^2
    assert np.all(np.isinf(reach_x("M2", params, 0.29, 1.0, 1e9)))
    assert float(law_values("M2", {"E": 0.3, "A": 5.0, "alpha": 0.5}, np.array([400.0]))[0]) == pytest.approx(0.55)


def test_a_grid_without_two_axes_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"at least 2 widths and 2 depths; this sweep has 5 width\(s\)"):
        compare_strategies(grid(0, depths=(2,)))


def test_a_path_off_the_grid_names_the_missing_sizes() -> None:
    with pytest.raises(ValueError, match="sizes not in the sweep: 999x1, 16x3"):
        compare_strategies(grid(0), path=((16, 1), (999, 1), (16, 3)))


def test_a_strategy_too_short_for_the_form_says_why_and_the_others_still_compare() -> None:
    c = compare_strategies(grid(0), target=0.7, path=((16, 1), (32, 2)), plan=FitPlan(n_resamples=0))
    short = c.fits[-1]
    assert short.error is not None and "distinct sizes" in short.error and not short.fits
    assert c.cheapest is not None
