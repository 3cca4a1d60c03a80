"""Bootstrap uncertainty: the replication's standard errors, coverage, groups, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from lawdata import synthetic

from scaletui.analysis.powerlaw import FitData, FitOptions, Form, LawFit, bootstrap_law, fit_law

# Besiroglu et al. 2024, Table 1: standard errors from 4,000 bootstrap resamples of the 240 points.
BESIROGLU_SE = {"alpha": 0.0154, "beta": 0.0206, "E": 0.0257, "A": 124.58, "B": 1293.23}


@pytest.mark.slow
def test_chinchilla_bootstrap_standard_errors_match_the_replication(chinchilla: FitData,
                                                                   chinchilla_fit: LawFit) -> None:
    # 400 resamples: over seeds 0-3 the alpha/beta/E standard errors moved by under 10%.
    boot = bootstrap_law(Form.TWO_VAR, chinchilla.xs, chinchilla.loss, n_resamples=400, rng=0,
                         fit=chinchilla_fit)
    assert boot.n_done == 400 and boot.n_failed == 0 and not boot.stopped
    for name in ("alpha", "beta", "E", "A"):
        assert boot.std_errors[name] == pytest.approx(BESIROGLU_SE[name], rel=0.3), name
    # B's bootstrap distribution is heavy-tailed (SE 62% of B): its SE is itself noisy at 400.
    assert boot.std_errors["B"] == pytest.approx(BESIROGLU_SE["B"], rel=0.5)
    lo, hi = boot.intervals["alpha"]
    assert lo < chinchilla_fit.params["alpha"] < hi


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_true_exponent() -> None:
    """40 noisy datasets from a known law: the 90% interval must contain alpha = 0.5 in >= 80%."""
    rng = np.random.default_rng(2024)
    covered = 0
    for _ in range(40):
        x, y, seed = synthetic(np.geomspace(1e3, 1e5, 8), E=1.5, A=50.0, alpha=0.5, noise=0.02, seeds=3, rng=rng)
        # 60 resamples, warm start only: over seeds 2024, 1, 2 this covered 36-38 of 40.
        boot = bootstrap_law(Form.OFFSET, x, y, n_resamples=60, level=0.9, rng=rng, n_warm_starts=0,
                             options=FitOptions(n_starts=8))
        lo, hi = boot.intervals["alpha"]
        covered += lo <= 0.5 <= hi
    assert covered >= 32, f"covered {covered}/40"


def two_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two runs over the same sizes; run 1 is 10% worse everywhere (a bad seed, say)."""
    x = np.tile(np.geomspace(16, 2048, 8), 2)
    run = np.repeat([0, 1], 8)
    y = (0.4 + 5.0 * x**-0.6) * np.where(run == 1, 1.1, 1.0)
    return x, y, run


def test_resampling_groups_keeps_each_run_whole() -> None:
    """With 2 runs every group resample is runs {0,0}, {0,1} or {1,1}, i.e. exactly the run-0 fit,
    the full fit or the run-1 fit: three values and nothing else. A point resample mixes points
    of both runs at will and gives a spread of values."""
    x, y, run = two_runs()
    expected = [fit_law(Form.OFFSET, xx, yy).E
                for xx, yy in ((x[run == 0], y[run == 0]), (x, y), (x[run == 1], y[run == 1]))]
    grouped = bootstrap_law(Form.OFFSET, x, y, groups=run, n_resamples=100, rng=1)
    assert grouped.n_groups == 2
    e = grouped.samples[:, grouped.names.index("E")]
    nearest = np.argmin(np.abs(e[:, None] - np.array(expected)[None, :]), axis=1)
    assert np.allclose(e, np.array(expected)[nearest], rtol=1e-4)
    assert np.bincount(nearest, minlength=3).min() >= 12  # about 25, 50, 25 of 100
    points = bootstrap_law(Form.OFFSET, x, y, n_resamples=100, rng=1)
    assert points.n_groups == 16
    assert len(np.unique(np.round(points.samples[:, 0], 6))) > 20


def test_bootstrap_is_seedable_and_reports_every_parameter() -> None:
    x, y, seed = synthetic(np.geomspace(16, 2048, 6), E=0.4, A=5.0, alpha=0.6, noise=0.01, seeds=2)
    a = bootstrap_law(Form.OFFSET, x, y, groups=seed, n_resamples=30, rng=7)
    b = bootstrap_law(Form.OFFSET, x, y, groups=seed, n_resamples=30, rng=np.random.default_rng(7))
    assert np.array_equal(a.samples, b.samples)
    assert set(a.intervals) == set(a.std_errors) == {"E", "A", "alpha"}
    assert a.samples.shape == (30, 3)
    assert a.band_x[0].shape == a.band_lo.shape == a.band_hi.shape == a.band_fit.shape
    assert np.all(a.band_lo <= a.band_hi)


def test_bootstrap_can_be_cancelled_and_returns_partial_results() -> None:
    x, y, _ = synthetic(np.geomspace(16, 2048, 6), E=0.4, A=5.0, alpha=0.6, noise=0.01, seeds=2)
    seen: list[tuple[int, int]] = []
    boot = bootstrap_law(Form.OFFSET, x, y, n_resamples=1000, rng=0,
                         should_stop=lambda: len(seen) >= 12, progress=lambda i, n: seen.append((i, n)))
    assert boot.stopped and boot.n_done == 12 and boot.n_requested == 1000
    assert seen[0] == (1, 1000) and seen[-1] == (12, 1000)
    assert all(np.isfinite(v) for v in boot.std_errors.values())
    none = bootstrap_law(Form.OFFSET, x, y, n_resamples=1000, should_stop=lambda: True)
    assert none.stopped and none.n_done == 0 and np.isnan(none.std_errors["alpha"])
