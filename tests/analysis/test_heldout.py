"""The largest sizes left out, judged point by point, from the selection's own rolling-origin fits."""

from __future__ import annotations

import numpy as np
import pytest
from lawdata import synthetic

from scaletui.analysis.heldout import heldout_report
from scaletui.analysis.select import FormScore, SelectOptions, select_form


def scored(xs: object, y: np.ndarray, form: str) -> FormScore:
    score = select_form(xs, y, SelectOptions(forms=(form,))).best  # type: ignore[arg-type]
    assert score is not None
    return score


def test_heldout_check_is_exact_on_a_true_law() -> None:
    # seeds 1e-9 apart: identical rows would be counted once (select treats them as one measurement)
    x, y, _ = synthetic(16.0 * 2 ** np.arange(7), E=0.3, A=4.0, alpha=0.5, seeds=3, noise=1e-9)
    check = heldout_report(scored(x, y, "M2"), x, y)
    assert check.leave_one is not None and check.leave_two is not None
    assert check.leave_one.x_out == (1024.0,)
    assert check.leave_two.x_out == (512.0, 1024.0)
    assert check.leave_one.rel_error[0] < 1e-6 and check.leave_two.max_rel_error < 1e-6
    assert check.leave_one.law.n_points == 18  # all 3 seeds of the largest size left out


def test_heldout_check_catches_a_largest_model_off_the_law() -> None:
    """The largest model is 20% worse than the law (e.g. its learning rate was tuned for a smaller one)."""
    x, y, _ = synthetic(16.0 * 2 ** np.arange(7), E=0.3, A=4.0, alpha=0.5, seeds=2)
    y = np.where(x == 1024, y * 1.2, y)
    check = heldout_report(scored(x, y, "M2"), x, y)
    assert check.leave_one is not None
    actual = y[x == 1024].mean()
    expected_pred = 0.3 + 4.0 * 1024**-0.5
    assert check.leave_one.actual[0] == pytest.approx(actual)
    assert check.leave_one.predicted[0] == pytest.approx(expected_pred, rel=1e-4)
    assert check.leave_one.rel_error[0] == pytest.approx(abs(expected_pred - actual) / actual, rel=1e-3)


def test_heldout_check_skips_when_too_few_sizes_remain() -> None:
    """The law is fitted on at least 4 sizes (a 3-parameter law through 3 points is an interpolation):
    with 5 sizes only the largest can be left out."""
    x, y, _ = synthetic(np.geomspace(10.0, 1e4, 5), E=0.3, A=4.0, alpha=0.5)
    check = heldout_report(scored(x, y, "M2"), x, y)
    assert check.leave_one is not None and check.leave_two is None
    assert any("leave-2-out" in n for n in check.notes)


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
    report = heldout_report(scored((n, d), y, "CHINCHILLA"), (n, d), y)
    held = report.leave_one
    assert held is not None and held.x_out == (1e9, 1e9, 1e9)
    assert held.points == tuple((1e9, float(dv)) for dv in np.unique(d[n == 1e9]))
    assert held.actual == pytest.approx([float(y[(n == 1e9) & (d == dv)].mean()) for dv in np.unique(d[n == 1e9])])
    assert held.n_obs == (1, 1, 2)
    assert held.rel_error[0] < 1e-4 and held.rel_error[1] < 1e-4
    assert held.rel_error[2] == pytest.approx(0.1 / 1.1, rel=1e-3)
    assert held.max_rel_error == held.rel_error[2]
