"""The law at every training length, on synthetic curves with planted answers.

Five sizes (x = 1e3 .. 1.6e4) follow loss = 0.5 + 10 x^-alpha at five evaluation steps. Planted: the
fourth size is 0.2 worse at steps 100 and 200 only (a slow starter), so it loses to the two sizes just below
it early and beats them from step 300 on: two crossings, with known steps. Three seeds each, with a spread
small against the planted gaps.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaletui.analysis.regimes import fit_regimes, size_table

SIZES = ("s1", "s2", "s3", "s4", "s5")
XS = (1e3, 2e3, 4e3, 8e3, 1.6e4)
STEPS = (100, 200, 300, 400, 500)
SEED_FACTORS = (0.998, 1.0, 1.002)


Points = tuple[list[str], list[float], list[float], list[int], list[int]]  # size, x, loss, step, seed


def points(alpha_at: dict[int, float], bump: dict[tuple[str, int], float] | None = None,
           factors: tuple[float, ...] = SEED_FACTORS) -> Points:
    size, x, loss, step, seed = [], [], [], [], []
    for name, xv in zip(SIZES, XS, strict=True):
        for t in STEPS:
            for s, f in enumerate(factors):
                size.append(name)
                x.append(xv)
                loss.append((0.5 + 10 * xv ** -alpha_at[t] + (bump or {}).get((name, t), 0.0)) * f)
                step.append(t)
                seed.append(s)
    return size, x, loss, step, seed


CONSTANT = dict.fromkeys(STEPS, 0.5)
SLOW_START = {("s4", 100): 0.2, ("s4", 200): 0.2}


def test_a_planted_crossing_is_found_with_its_steps() -> None:
    r = fit_regimes(*points(CONSTANT, SLOW_START), n_resamples=0)
    found = {(c.bigger, c.smaller): c for c in r.crossings}
    assert set(found) == {("s4", "s2"), ("s4", "s3")}
    c = found[("s4", "s3")]
    assert c.loses_at == (100.0, 200.0) and c.wins_at == (300.0, 400.0, 500.0)
    assert c.flips == ((200.0, 300.0),)


def test_ranks_and_the_share_of_pairs_the_bigger_wins_move_with_the_planted_slow_start() -> None:
    r = fit_regimes(*points(CONSTANT, SLOW_START), n_resamples=0)
    ranks = r.table.ranks()
    s4 = r.table.sizes.index("s4")
    assert ranks[0, s4] == 4 and ranks[-1, s4] == 2  # 4th best at step 100 (beats only s1), 2nd from step 300
    agreement = r.table.agreement()
    assert agreement[0] == pytest.approx(8 / 10) and agreement[-1] == pytest.approx(1.0)


def test_order_flips_within_the_seed_noise_are_not_crossings() -> None:
    """s4 is a hair worse than s3 at one step and a hair better at another, far inside its seed spread."""
    wide = (0.9, 1.0, 1.1)
    tiny = {("s4", 100): 0.15, ("s4", 200): 0.0}
    r = fit_regimes(*points(CONSTANT, tiny, wide), n_resamples=0)
    assert all({c.bigger, c.smaller} != {"s4", "s3"} for c in r.crossings)


def test_the_exponent_is_recovered_at_each_step_with_its_interval() -> None:
    moving = {100: 0.3, 200: 0.4, 300: 0.5, 400: 0.6, 500: 0.7}
    r = fit_regimes(*points(moving), n_resamples=100)
    assert [f.regime for f in r.fits] == [float(t) for t in STEPS]
    for f in r.fits:
        assert f.alpha == pytest.approx(moving[int(f.regime)], abs=0.01)
        lo, hi = f.alpha_interval
        assert lo <= moving[int(f.regime)] + 0.01 and hi >= moving[int(f.regime)] - 0.01
    assert r.alpha_rel_range == pytest.approx(0.4 / 0.5, rel=0.05)
    assert not r.crossings


def test_a_regime_with_too_few_sizes_says_why_and_the_others_are_fitted() -> None:
    size, x, loss, step, seed = points(CONSTANT)
    keep = [i for i in range(len(size)) if not (step[i] == 500 and size[i] in ("s1", "s2", "s3"))]
    r = fit_regimes(*([v[i] for i in keep] for v in (size, x, loss, step, seed)), n_resamples=0)
    last = r.fits[-1]
    assert last.law is None and last.error is not None and "distinct sizes" in last.error
    assert all(f.law is not None for f in r.fits[:-1])


def test_size_table_orders_sizes_by_x_and_averages_seeds() -> None:
    t = size_table(["b", "a", "b", "a"], [2.0, 1.0, 2.0, 1.0], [1.0, 3.0, 2.0, 5.0], [10, 10, 10, 10])
    assert t.sizes == ("a", "b")
    assert t.mean[0].tolist() == [4.0, 1.5]
    assert t.count[0].tolist() == [2.0, 2.0]
    assert np.isfinite(t.se).all()
