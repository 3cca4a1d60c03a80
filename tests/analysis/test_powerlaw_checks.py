"""The checks that say when a fit is not a law: held-out prediction, monotonicity, warnings, stability."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lawdata import synthetic

from scaletui.analysis.powerlaw import (
    FitData,
    Form,
    LawFit,
    bootstrap_law,
    check_monotone,
    conditioning,
    exponent_stability,
    fit_power_law,
    fit_warnings,
    predictive_check,
    to_fit_result,
)

# ----------------------------------------------------------------------------- held-out prediction


def test_heldout_check_is_exact_on_a_true_law() -> None:
    x, y, _ = synthetic(16.0 * 2 ** np.arange(7), E=0.3, A=4.0, alpha=0.5, seeds=3)
    check = predictive_check(Form.OFFSET, x, y)
    assert check.leave_one is not None and check.leave_two is not None
    assert check.leave_one.x_out == (1024.0,)
    assert check.leave_two.x_out == (512.0, 1024.0)
    assert check.leave_one.rel_error[0] < 1e-6 and check.leave_two.max_rel_error < 1e-6
    assert check.leave_one.fit.n_points == 18  # all 3 seeds of the largest size left out


def test_heldout_check_catches_a_largest_model_off_the_law() -> None:
    """The largest model is 20% worse than the law (e.g. its learning rate was tuned for a smaller one)."""
    x, y, _ = synthetic(16.0 * 2 ** np.arange(7), E=0.3, A=4.0, alpha=0.5, seeds=2)
    y = np.where(x == 1024, y * 1.2, y)
    check = predictive_check(Form.OFFSET, x, y)
    assert check.leave_one is not None
    actual = y[x == 1024].mean()
    expected_pred = 0.3 + 4.0 * 1024**-0.5
    assert check.leave_one.actual[0] == pytest.approx(actual)
    assert check.leave_one.predicted[0] == pytest.approx(expected_pred, rel=1e-4)
    assert check.leave_one.rel_error[0] == pytest.approx(abs(expected_pred - actual) / actual, rel=1e-3)


def test_heldout_check_skips_when_too_few_sizes_remain() -> None:
    x, y, _ = synthetic(np.array([10.0, 100.0, 1000.0, 1e4]), E=0.3, A=4.0, alpha=0.5)
    check = predictive_check(Form.OFFSET, x, y)
    assert check.leave_one is not None and check.leave_two is None
    assert any("leave-2-out" in n for n in check.notes)


def test_heldout_check_on_two_variable_data(chinchilla: FitData) -> None:
    check = predictive_check(Form.TWO_VAR, chinchilla.xs, chinchilla.loss)
    assert check.leave_one is not None and check.leave_two is not None
    assert check.leave_one.x_out[0] == chinchilla.xs[0].max()
    assert 0 <= check.leave_one.rel_error[0] < 0.05  # the law extrapolates to the 16B model within 5%


def test_two_variable_heldout_judges_each_n_d_point_on_its_own() -> None:
    """Left-out N = 1e9 was trained at three D: each is a point of its own, never a mean over D.

    The law is exact except at (1e9, 4e10), which is 10% worse: only that point may show the error,
    and its "actual" is its own loss (a mean over D would be a loss no run had).
    """
    law = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
    n = np.repeat([1e7, 3e7, 1e8, 3e8, 1e9], 3)
    d = np.tile([1e9, 4e9, 4e10], 5) * np.repeat([1.0, 1.5, 2.0, 2.5, 3.0], 3)
    y = law["E"] + law["A"] * n ** -law["alpha"] + law["B"] * d ** -law["beta"]
    off = (n == 1e9) & (d == d.max())
    y = np.where(off, y * 1.1, y)
    y = np.append(y, y[-1])  # a second seed of the worst point: its actual is the mean of its two rows
    n, d = np.append(n, n[-1]), np.append(d, d[-1])
    held = predictive_check(Form.TWO_VAR, (n, d), y).leave_one
    assert held is not None and held.x_out == (1e9, 1e9, 1e9)
    assert held.points == tuple((1e9, float(dv)) for dv in np.unique(d[n == 1e9]))
    assert held.actual == pytest.approx([float(y[(n == 1e9) & (d == dv)].mean()) for dv in np.unique(d[n == 1e9])])
    assert held.n_obs == (1, 1, 2)
    assert held.rel_error[0] < 1e-4 and held.rel_error[1] < 1e-4
    assert held.rel_error[2] == pytest.approx(0.1 / 1.1, rel=1e-3)
    assert held.max_rel_error == held.rel_error[2]
    assert to_fit_result(held.fit, "N,D", check=predictive_check(Form.TWO_VAR, (n, d), y)).heldout_rel_error \
        == pytest.approx(held.max_rel_error)


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


def test_three_sizes_give_a_warning() -> None:
    x, y, _ = synthetic(np.array([16.0, 128.0, 1024.0]), E=0.3, A=4.0, alpha=0.5, seeds=2)
    warnings = fit_warnings(fit_power_law(x, y), x, y)
    assert any("only 3 distinct x" in w for w in warnings)


def test_a_well_measured_law_has_no_warnings() -> None:
    x, y, seed = synthetic(np.geomspace(16, 4096, 8), E=0.3, A=4.0, alpha=0.5, noise=0.01, seeds=3)
    fit = fit_power_law(x, y)
    boot = bootstrap_law(Form.OFFSET, x, y, groups=seed, n_resamples=50, rng=0, fit=fit)
    assert fit_warnings(fit, x, y, boot=boot) == ()


def test_loss_growing_with_size_puts_alpha_at_its_bound() -> None:
    x = np.repeat(np.geomspace(16, 4096, 8), 2)
    y = 1.0 + 0.05 * np.log(x)  # bigger is worse: no decreasing law fits
    warnings = " | ".join(fit_warnings(fit_power_law(x, y), x, y))
    assert "alpha = 0 is at its bound" in warnings
    assert "ill-conditioned" in warnings  # at alpha = 0, A and E are one constant


def test_flat_data_are_flagged() -> None:
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=1.0, A=0.0, alpha=0.5, noise=0.01, seeds=2)
    assert any("ill-conditioned" in w for w in fit_warnings(fit_power_law(x, y), x, y))


def test_narrow_range_is_ill_conditioned_and_bootstrap_says_so() -> None:
    """Sizes within a factor 2 cannot separate E from A x^-alpha."""
    x, y, seed = synthetic(np.geomspace(1000, 2000, 6), E=3.0, A=50.0, alpha=0.5, noise=0.01, seeds=3)
    fit = fit_power_law(x, y)
    assert conditioning(fit, x, y) > 1e4
    boot = bootstrap_law(Form.OFFSET, x, y, n_resamples=60, rng=0, fit=fit)
    warnings = " | ".join(fit_warnings(fit, x, y, boot=boot))
    assert "ill-conditioned" in warnings and "not identified" in warnings


def test_no_floor_in_the_data_flags_E() -> None:  # noqa: N802
    x, y, _ = synthetic(np.geomspace(16, 4096, 8), E=0.0, A=4.0, alpha=0.5)
    fit = fit_power_law(x, y)
    assert fit.E < 1e-3 * y.min()
    assert any(w.startswith("E = ") and "not identified" in w for w in fit_warnings(fit, x, y))


def test_chinchilla_fit_has_no_warnings(chinchilla: FitData, chinchilla_fit: LawFit) -> None:
    assert fit_warnings(chinchilla_fit, chinchilla.xs, chinchilla.loss) == ()


# ----------------------------------------------------------------------------- stability over time


def sweep_over_steps(alpha_at: list[float], noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    widths = np.geomspace(16, 2048, 8)
    rng = np.random.default_rng(3)
    x = np.tile(widths, len(alpha_at))
    step = np.repeat(100 * np.arange(1, len(alpha_at) + 1), widths.size)
    alpha = np.repeat(alpha_at, widths.size)
    y = (0.3 + 5.0 * x**-alpha) * np.exp(noise * rng.normal(size=x.size))
    return x, y, step


def test_exponent_that_changes_over_training_is_unstable() -> None:
    x, y, step = sweep_over_steps([0.2, 0.28, 0.36, 0.44, 0.52, 0.6])
    s = exponent_stability(x, y, step, last_k=4)
    assert s.alpha == pytest.approx([0.2, 0.28, 0.36, 0.44, 0.52, 0.6], rel=1e-3)
    assert not s.stable
    assert s.alpha_range == pytest.approx(0.6 - 0.36, rel=1e-3)


def test_exponent_that_holds_over_training_is_stable() -> None:
    x, y, step = sweep_over_steps([0.4] * 6, noise=0.005)
    s = exponent_stability(x, y, step, last_k=4)
    assert s.stable and s.rel_range < 0.1
    assert np.all(np.abs(s.alpha - 0.4) < 0.04)
    assert s.alpha_std < 0.02


def test_steps_with_too_few_sizes_are_skipped() -> None:
    x, y, step = sweep_over_steps([0.4, 0.4])
    keep = ~((step == 100) & (x > 20))  # step 100 has a single size
    s = exponent_stability(x[keep], y[keep], step[keep])
    assert s.fits[0] is None and math.isnan(s.alpha[0]) and s.fits[1] is not None
    assert not s.stable and s.notes  # one fitted step: stability unknown, and said so


# ----------------------------------------------------------------------------- records


def test_to_fit_result_carries_fit_intervals_and_checks() -> None:
    x, y, seed = synthetic(np.geomspace(16, 4096, 7), E=0.3, A=4.0, alpha=0.5, noise=0.01, seeds=2)
    fit = fit_power_law(x, y)
    boot = bootstrap_law(Form.OFFSET, x, y, groups=seed, n_resamples=20, rng=0, fit=fit)
    check = predictive_check(Form.OFFSET, x, y)
    rec = to_fit_result(fit, "width", boot=boot, check=check, warnings=("w",))
    assert rec.form == "E + A*x^-alpha" and rec.x == "width" and rec.n_points == 14
    assert rec.params == fit.params and set(rec.intervals) == {"E", "A", "alpha"}
    assert rec.heldout_rel_error == check.leave_one.rel_error[0]  # type: ignore[union-attr]
    assert rec.heldout_rel_error_2 == check.leave_two.max_rel_error  # type: ignore[union-attr]
    assert rec.warnings == ("w",)
