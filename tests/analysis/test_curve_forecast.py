"""analysis.curve_forecast: a run's final loss from its loss so far and the finished runs' curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaletui.analysis.curve_forecast import BY_DEPTH, POOLED, Finished, forecast_final

A, B = -0.2, -0.05  # the drop still to come: log(final / at t) = A + B log params


def _refs(sizes: list[float], depth: int = 1, seeds: int = 4, noise: float = 0.0, c: float = 0.0,
          seed: int = 0) -> list[Finished]:
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        for _ in range(seeds):
            at = 1.0 + rng.uniform(0, 0.1)
            r = A + B * math.log(n) + c * math.log(depth) + noise * rng.standard_normal()
            out.append(Finished(n, depth, at, at * math.exp(r)))
    return out


def test_the_drop_still_to_come_is_learned_from_the_runs_of_its_depth() -> None:
    f = forecast_final(0.9, 3e4, 1, _refs([1e3, 1e4, 1e5]))
    assert f is not None and f.basis == BY_DEPTH and (f.n_runs, f.n_sizes) == (12, 3)
    assert f.predicted == pytest.approx(0.9 * math.exp(A + B * math.log(3e4)), rel=1e-9)
    assert f.coef == pytest.approx((A, B), abs=1e-9)


def test_the_band_covers_noisy_truths_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(1)
    inside = []
    for trial in range(300):
        refs = _refs([1e3, 3e3, 1e4, 3e4], noise=0.03, seed=trial)
        n = float(rng.uniform(1e3, 3e4))
        f = forecast_final(1.0, n, 1, refs)
        assert f is not None
        truth = math.exp(A + B * math.log(n) + 0.03 * rng.standard_normal())
        inside.append(f.lo <= truth <= f.hi)
    assert 0.85 <= np.mean(inside) <= 0.99


def test_the_band_widens_away_from_the_finished_sizes() -> None:
    refs = _refs([1e3, 3e3, 1e4], noise=0.02)
    near, far = forecast_final(1.0, 3e3, 1, refs), forecast_final(1.0, 1e6, 1, refs)
    assert near is not None and far is not None
    assert far.hi / far.lo > near.hi / near.lo


def test_a_depth_without_two_finished_sizes_learns_from_every_depth() -> None:
    refs = _refs([1e3, 1e4], depth=2, c=0.1) + _refs([1e3, 1e4], depth=4, c=0.1) + _refs([5e3], depth=6, c=0.1)
    f = forecast_final(1.0, 2e4, 6, refs)
    assert f is not None and f.basis == POOLED
    assert f.predicted == pytest.approx(math.exp(A + B * math.log(2e4) + 0.1 * math.log(6)), rel=1e-9)


@pytest.mark.parametrize("refs", [
    [],
    _refs([1e3], seeds=8),  # one size: no slope to learn
    _refs([1e3, 1e4], seeds=1),  # two runs: too few for a fit with a scatter
])
def test_nothing_to_learn_from_gives_no_prediction(refs: list[Finished]) -> None:
    assert forecast_final(1.0, 1e4, 1, refs) is None


@pytest.mark.parametrize("loss_now", [0.0, -1.0, math.nan, math.inf])
def test_an_unusable_loss_gives_no_prediction(loss_now: float) -> None:
    assert forecast_final(loss_now, 1e4, 1, _refs([1e3, 1e4])) is None


def test_unusable_reference_runs_are_left_out() -> None:
    bad = [Finished(1e3, 1, math.nan, 1.0), Finished(1e4, 1, 1.0, 0.0)]
    good = _refs([1e3, 1e4])
    assert forecast_final(1.0, 3e3, 1, good + bad) == forecast_final(1.0, 3e3, 1, good)
