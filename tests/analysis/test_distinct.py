"""Seeds of one size share one model evaluation: the solver evaluates each form at the distinct sizes
only and folds the points' Huber weights per size, which is exact (not an approximation by the
per-size mean), for least squares and for the Huber loss alike."""

from __future__ import annotations

import numpy as np
import pytest
from formdata import TRUE

from scaletui.analysis import form_models
from scaletui.analysis.form_models import Data, model
from scaletui.analysis.forms import law_values
from scaletui.analysis.solve import FitOptions, LossSpec, fit_law, fit_rows, prepare

SEEDS = 16


def _seeded(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A curve of the form `name` with 16 seeds per size, 2% seed scatter (beyond Huber's 0.01)."""
    sizes = np.geomspace(1e3, 1e7, 12)
    rng = np.random.default_rng(7)
    xs = np.repeat(sizes, SEEDS)
    y = law_values(name, TRUE[name], xs) * np.exp(rng.normal(0.0, 0.02, xs.size))
    return xs, y


def _without_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point its own size: the solver's all-points path."""
    monkeypatch.setattr(form_models.Data, "distinct", property(lambda self: None))


@pytest.mark.parametrize("name", ["M1", "M2", "M3", "M4", "BNSL1"])
@pytest.mark.parametrize("delta", [0.01, np.inf])
def test_fitting_distinct_sizes_is_exactly_the_all_points_fit(name: str, delta: float,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _seeded(name)
    opts = FitOptions(loss=LossSpec("log", delta))
    shared = fit_law(name, x, y, options=opts)
    _without_sharing(monkeypatch)
    every = fit_law(name, x, y, options=opts)
    assert shared.objective == pytest.approx(every.objective, rel=1e-8, abs=1e-12)
    for key, value in every.params.items():
        assert shared.params[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


def test_least_squares_on_seeds_is_the_fit_of_their_geometric_means_weighted_by_count() -> None:
    x, y = _seeded("M2")
    opts = FitOptions(loss=LossSpec("log", np.inf))
    sizes, index = np.unique(x, return_inverse=True)
    means = np.exp(np.bincount(index, np.log(y)) / np.bincount(index))
    every = fit_law("M2", x, y, options=opts)
    aggregate = fit_law("M2", sizes, means, weights=np.bincount(index).astype(float), options=opts)
    for key, value in every.params.items():
        assert aggregate.params[key] == pytest.approx(value, rel=1e-8), key


def test_the_model_is_evaluated_at_distinct_sizes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _seeded("M4")
    m = model("M4")
    widths: set[int] = set()
    original = type(m).residuals

    def spy(self: form_models.Model, theta: np.ndarray, data: Data, space: str, jac: bool = True):
        widths.add(int(data.u.shape[1]))
        return original(self, theta, data, space, jac)

    monkeypatch.setattr(type(m), "residuals", spy)
    m_, data = prepare("M4", x, y)
    fit_rows(m_, data, np.ones((1, y.size)), FitOptions())
    assert widths == {12}


def test_log_excess_residuals_depend_on_each_point_so_use_every_point() -> None:
    x, y = _seeded("M2")
    opts = FitOptions(loss=LossSpec("log_excess", 0.01))
    law = fit_law("M2", x, y, options=opts)
    assert law.loss_space == "log_excess" and law.converged


def _pooled_shapes_curve() -> tuple[np.ndarray, np.ndarray]:
    """Like a sweep pooled over shapes: 16 sizes x 16 seeds scattered 8% (far beyond Huber's 0.01),
    so most points sit in the loss's linear zone and a fit's gains shrink only linearly."""
    rng = np.random.default_rng(11)
    sizes = np.geomspace(1e4, 2e5, 16)
    x = np.repeat(sizes, SEEDS)
    shape = np.repeat(rng.normal(0.0, 0.08, sizes.size), SEEDS)
    return x, law_values("M2", {"E": 0.3, "A": 40.0, "alpha": 0.45}, x) * np.exp(shape + rng.normal(0, 0.01, x.size))


def test_a_fit_whose_gains_stall_stops_without_losing_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall rule (solve.polish): when 8 iterations together gain less than 1e-13 of the
    objective the fit is done; the objective then matches running until no step helps at all."""
    from scaletui.analysis import solve

    x, y = _pooled_shapes_curve()
    m, data = prepare("BNSL1", x, y)
    w = np.ones((1, y.size))
    iterations: list[int] = []
    advance = solve._advance

    def counting(*args, **kwargs):
        iterations.append(1)
        return advance(*args, **kwargs)

    monkeypatch.setattr(solve, "_advance", counting)
    fast = fit_rows(m, data, w, FitOptions())
    used = len(iterations)
    monkeypatch.setattr(solve, "STALL_TOL", 0.0)
    monkeypatch.setattr(solve, "STALL_ITERS", 10**9)
    iterations.clear()
    exhaustive = fit_rows(m, data, w, FitOptions())
    assert used < 0.8 * len(iterations)
    assert fast.value[0] == pytest.approx(exhaustive.value[0], rel=1e-12)
