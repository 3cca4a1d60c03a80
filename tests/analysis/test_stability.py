"""Stability of the exponent over training: the law refitted at every evaluation step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaletui.analysis.stability import exponent_stability


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
    assert not s.stable and s.form == "M2"
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
    assert s.laws[0] is None and math.isnan(s.alpha[0]) and s.laws[1] is not None
    assert not s.stable and s.notes  # one fitted step: stability unknown, and said so


@pytest.mark.parametrize("form", ["M1", "M3", "M4", "BNSL1"])
def test_every_one_variable_form_can_be_followed_over_training(form: str) -> None:
    """Warm-started refits (M1, M3) and grid refits (M4, BNSL1: several basins) agree with a fit of
    each step on its own."""
    from scaletui.analysis.solve import fit_law

    x, y, step = sweep_over_steps([0.4, 0.42, 0.44], noise=0.003)
    x, y, step = np.tile(x, 2), np.tile(y, 2), np.tile(step, 2)  # two seeds each, for the bigger forms
    s = exponent_stability(x, y, step, form=form)
    for i, at in enumerate(np.unique(step)):
        alone = fit_law(form, x[step == at], y[step == at])
        assert s.laws[i] is not None and s.laws[i].objective <= alone.objective * (1 + 1e-6) + 1e-12, (form, at)


def test_two_variable_forms_are_refused() -> None:
    with pytest.raises(ValueError, match="one-variable forms, not CHINCHILLA"):
        exponent_stability([1.0], [1.0], [1.0], form="CHINCHILLA")
