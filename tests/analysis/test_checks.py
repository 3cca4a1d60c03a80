"""The checks that say when a fit is not a law: monotone data and identifiable parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lawdata import synthetic

from scaletui.analysis.checks import check_monotone, conditioning, fit_warnings
from scaletui.analysis.solve import bootstrap, fit_law

# ----------------------------------------------------------------------------- monotonicity


def test_non_monotone_width_sweep_is_flagged_with_the_right_pair() -> None:
    widths = np.array([16, 32, 64, 128])
    x = np.tile(np.repeat(widths, 3), 2)
    depth = np.repeat([2, 4], 12)
    noise = np.tile([-0.01, 0.0, 0.01], 8)
    means = {2: [1.0, 0.8, 0.7, 0.6], 4: [1.0, 0.8, 0.9, 0.6]}  # depth 4: width 64 worse than 32
    y = np.concatenate([np.repeat(means[2], 3), np.repeat(means[4], 3)]) + noise
    report = check_monotone(x, y, depth)
    assert report.by_group == {2: True, 4: False} and not report.ok
    (v,) = report.violations
    assert (v.group, v.x_small, v.x_large) == (4, 32.0, 64.0)
    assert v.loss_small == pytest.approx(0.8) and v.loss_large == pytest.approx(0.9)
    assert v.exceeds_spread is True and v.spread == pytest.approx(0.01)


def test_violation_within_seed_noise_is_reported_as_not_exceeding_the_spread() -> None:
    x = np.repeat([16, 32, 64], 3)
    y = np.repeat([1.0, 0.80, 0.81], 3) + np.tile([-0.05, 0.0, 0.05], 3)
    (v,) = check_monotone(x, y).violations
    assert (v.x_small, v.x_large) == (32.0, 64.0) and v.exceeds_spread is False


def test_single_seed_violation_has_unknown_significance() -> None:
    (v,) = check_monotone([1, 2, 3], [3.0, 2.0, 2.5]).violations
    assert math.isnan(v.spread) and v.exceeds_spread is None
    assert check_monotone([1, 2, 3], [3.0, 2.0, 1.5]).ok


# ----------------------------------------------------------------------------- warnings


def intervals_of(form: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n: int) -> dict[str, tuple]:
    boot = bootstrap(form, x, y, groups=groups, n_resamples=n, rng=0)
    return {name: boot.interval(name) for name in boot.names}


def test_three_sizes_give_a_warning_and_the_offset_law_is_refused() -> None:
    x, y, _ = synthetic(np.array([16.0, 128.0, 1024.0]), E=0.3, A=4.0, alpha=0.5, seeds=2)
    assert any("only 3 distinct x values" in w for w in fit_warnings(fit_law("M1", x, y), x, y))
    with pytest.raises(ValueError, match="M2 has 3 parameters and needs at least 4 distinct sizes; got 3"):
        fit_law("M2", x, y)


def test_a_well_measured_law_has_no_warnings() -> None:
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=0.3, A=4.0, alpha=0.5, noise=0.01, seeds=3)
    law = fit_law("M2", x, y)
    assert fit_warnings(law, x, y, intervals=intervals_of("M2", x, y, x, 50)) == ()


def test_loss_growing_with_size_puts_alpha_at_its_bound() -> None:
    x = np.repeat(np.geomspace(16, 4096, 8), 2)
    y = 1.0 + 0.05 * np.log(x)  # bigger is worse: no decreasing law fits (selection refuses the curve)
    warnings = " | ".join(fit_warnings(fit_law("M2", x, y), x, y))
    assert "alpha = 0 is at its bound" in warnings
    assert "ill-conditioned" in warnings  # at alpha = 0, A and E are one constant


def test_flat_data_are_flagged() -> None:
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=1.0, A=0.0, alpha=0.5, noise=0.01, seeds=2)
    assert any("ill-conditioned" in w for w in fit_warnings(fit_law("M2", x, y), x, y))


def test_narrow_range_is_ill_conditioned_and_bootstrap_says_so() -> None:
    """Sizes within a factor 2 cannot separate E from A x^-alpha."""
    x, y, _ = synthetic(np.geomspace(1000, 2000, 6), E=3.0, A=50.0, alpha=0.5, noise=0.01, seeds=3)
    law = fit_law("M2", x, y)
    assert conditioning(law, x) > 1e4
    warnings = " | ".join(fit_warnings(law, x, y, intervals=intervals_of("M2", x, y, None, 60)))
    assert "ill-conditioned" in warnings and "not identified" in warnings


def test_no_floor_in_the_data_flags_E() -> None:
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=0.0, A=4.0, alpha=0.5)
    law = fit_law("M2", x, y)
    assert 1e-3 * y.min() > law.params["E"]
    assert any(w.startswith("E = ") and "not identified" in w for w in fit_warnings(law, x, y))


def test_conditioning_does_not_depend_on_units() -> None:
    """Sizes 1e3 times larger, the same curve: the same condition number (coefficients at the data's centre)."""
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=0.3, A=4.0, alpha=0.5, noise=0.01, seeds=2)
    big = fit_law("M2", x * 1e3, y)
    assert conditioning(big, x * 1e3) == pytest.approx(conditioning(fit_law("M2", x, y), x), rel=1e-3)
