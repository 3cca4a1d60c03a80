"""The group bootstrap of a fit: coverage, whole groups, reproducibility, cancellation, and its band."""

from __future__ import annotations

import numpy as np
import pytest
from lawdata import synthetic

from scaletui.analysis.select import band_from_bootstrap
from scaletui.analysis.solve import bootstrap, fit_law


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_true_exponent() -> None:
    """40 noisy sweeps from a known law, resampled by size (all seeds of a size together, as the product
    does): the 90% interval must contain alpha = 0.5 in >= 80% of them."""
    rng = np.random.default_rng(2024)
    covered = 0
    for _ in range(40):
        x, y, _ = synthetic(np.geomspace(1e3, 1e5, 8), E=1.5, A=50.0, alpha=0.5, noise=0.02, seeds=3, rng=rng)
        boot = bootstrap("M2", x, y, groups=x, n_resamples=200, rng=rng)
        lo, hi = boot.interval("alpha", 0.9)
        covered += lo <= 0.5 <= hi
    assert covered >= 32, f"covered {covered}/40"


def two_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two runs over the same sizes; run 1 is 10% worse everywhere (a bad seed, say)."""
    x = np.tile(np.geomspace(16, 2048, 8), 2)
    run = np.repeat([0, 1], 8)
    y = (0.4 + 5.0 * x**-0.6) * np.where(run == 1, 1.1, 1.0)
    return x, y, run


def test_resampling_groups_keeps_each_group_whole() -> None:
    """With 2 runs every group resample is runs {0,0}, {0,1} or {1,1}, i.e. exactly the run-0 fit,
    the full fit or the run-1 fit: three values and nothing else. A point resample mixes points
    of both runs at will and gives a spread of values."""
    x, y, run = two_runs()
    expected = [fit_law("M2", xx, yy).params["E"]
                for xx, yy in ((x[run == 0], y[run == 0]), (x, y), (x[run == 1], y[run == 1]))]
    grouped = bootstrap("M2", x, y, groups=run, n_resamples=100, rng=1)
    assert grouped.n_groups == 2
    e = grouped.samples[:, grouped.names.index("E")]
    nearest = np.argmin(np.abs(e[:, None] - np.array(expected)[None, :]), axis=1)
    assert np.allclose(e, np.array(expected)[nearest], rtol=1e-4)
    assert np.bincount(nearest, minlength=3).min() >= 12  # about 25, 50, 25 of 100
    points = bootstrap("M2", x, y, n_resamples=100, rng=1)
    assert points.n_groups == 16
    assert len(np.unique(np.round(points.samples[:, 0], 6))) > 20


def test_bootstrap_is_seedable_reports_every_parameter_and_bands_the_law() -> None:
    x, y, _ = synthetic(np.geomspace(16, 2048, 6), E=0.4, A=5.0, alpha=0.6, noise=0.01, seeds=2)
    a = bootstrap("M2", x, y, groups=x, n_resamples=30, rng=7)
    b = bootstrap("M2", x, y, groups=x, n_resamples=30, rng=np.random.default_rng(7))
    assert np.array_equal(a.samples, b.samples)
    assert a.names == ("E", "A", "alpha") and a.samples.shape == (30, 3)
    grid = np.geomspace(16, 2048, 20)
    band = band_from_bootstrap(a.law, a, grid, x, y, rate=0.0)
    assert band.x[0].shape == band.lo.shape == band.hi.shape == band.value.shape == grid.shape
    assert np.all(band.lo <= band.value) and np.all(band.value <= band.hi)


def test_bootstrap_can_be_cancelled_and_returns_partial_results() -> None:
    x, y, _ = synthetic(np.geomspace(16, 2048, 6), E=0.4, A=5.0, alpha=0.6, noise=0.01, seeds=2)
    seen: list[tuple[int, int]] = []
    boot = bootstrap("M2", x, y, n_resamples=1000, rng=0, chunk=4, threads=1,
                     should_stop=lambda: len(seen) >= 3, progress=lambda i, n: seen.append((i, n)))
    assert boot.stopped and boot.n_done == 12 and boot.n_requested == 1000
    assert seen[0] == (4, 1000) and seen[-1] == (12, 1000)
    assert all(np.isfinite(boot.interval(name)).all() for name in boot.names)
    none = bootstrap("M2", x, y, n_resamples=1000, should_stop=lambda: True)
    assert none.stopped and none.n_done == 0 and np.isnan(none.interval("alpha")).all()
