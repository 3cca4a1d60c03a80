"""The Chinchilla replication (Besiroglu et al. 2024) with the fitting core: point fit, the 2022 bug,
bootstrap standard errors, held-out models. The data is read through tests/refdata.py (conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import refdata
from formdata import EPOCH
from scipy.optimize import minimize

from scaletui.analysis.checks import fit_warnings
from scaletui.analysis.form_models import Data, model
from scaletui.analysis.forms import FittedLaw
from scaletui.analysis.heldout import heldout_report
from scaletui.analysis.select import SelectOptions, select_form
from scaletui.analysis.solve import bootstrap, fit_rows, huber, objective

# Published Chinchilla fits: Hoffmann et al. 2022 (Approach 3, stopped early) and the replication.
HOFFMANN_2022: dict[str, float] = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BESIROGLU_2024: dict[str, float] = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
# Besiroglu et al. 2024, Table 1: standard errors from 4,000 bootstrap resamples of the 240 points.
BESIROGLU_SE = {"alpha": 0.0154, "beta": 0.0206, "E": 0.0257, "A": 124.58, "B": 1293.23}

TwoVar = refdata.TwoVarData


def test_chinchilla_fit_reproduces_besiroglu_2024(chinchilla: TwoVar, chinchilla_fit: FittedLaw) -> None:
    assert chinchilla_fit.n_points == 240 and chinchilla_fit.converged
    assert abs(chinchilla_fit.params["alpha"] - BESIROGLU_2024["alpha"]) < 0.002
    assert abs(chinchilla_fit.params["beta"] - BESIROGLU_2024["beta"]) < 0.002
    assert abs(chinchilla_fit.params["E"] - BESIROGLU_2024["E"]) < 0.005
    # A and B are weakly identified (their standard errors are 26% and 62%), so a looser check.
    assert chinchilla_fit.params["A"] == pytest.approx(BESIROGLU_2024["A"], rel=0.1)
    assert chinchilla_fit.params["B"] == pytest.approx(BESIROGLU_2024["B"], rel=0.1)


def test_no_optimiser_improves_the_chinchilla_optimum(chinchilla: TwoVar, chinchilla_fit: FittedLaw) -> None:
    """The optimum is not an accident of where the search started: L-BFGS-B from it, on the same
    objective in log-parameters, finds nothing lower (the role the old "most multistarts agree" played)."""
    xs, y = (chinchilla.n, chinchilla.d), chinchilla.loss
    names = list(chinchilla_fit.params)
    logs = {"E", "A", "B"}

    def value(theta: np.ndarray) -> float:
        p = {n: float(np.exp(t)) if n in logs else float(t) for n, t in zip(names, theta, strict=True)}
        return objective(FittedLaw("CHINCHILLA", p, delta=EPOCH.loss.delta), xs, y)

    start = np.array([np.log(v) if n in logs else v for n, v in chinchilla_fit.params.items()])
    res = minimize(value, start, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
    assert chinchilla_fit.objective <= res.fun * (1 + 1e-9)
    assert value(start) == pytest.approx(chinchilla_fit.objective, rel=1e-9)


def _theta_of(params: dict[str, float], data: Data) -> np.ndarray:
    """CHINCHILLA's optimiser coordinates (form_models.Chinchilla): coefficients at the data's centre, log E."""
    n_centre, d_centre = data.centre
    return np.array([np.log(params["A"]) - params["alpha"] * n_centre, params["alpha"],
                     np.log(params["B"]) - params["beta"] * d_centre, params["beta"], np.log(params["E"])])


def test_fit_started_at_hoffmann_2022_moves_to_the_optimum(chinchilla: TwoVar, chinchilla_fit: FittedLaw) -> None:
    """The replication's finding: the published 2022 values are not an optimum of their own objective;
    polished from them alone, the solver reaches the global optimum."""
    xs, y = (chinchilla.n, chinchilla.d), chinchilla.loss
    at_hoffmann = objective(FittedLaw("CHINCHILLA", HOFFMANN_2022, delta=1e-3), xs, y)
    m = model("CHINCHILLA")
    data = Data.build([chinchilla.n, chinchilla.d], y)
    fits = fit_rows(m, data, np.ones((1, y.size)), EPOCH, starts=_theta_of(HOFFMANN_2022, data)[None, None, :])
    params = m.natural(fits.theta[0], data)
    assert fits.value[0] < 0.5 * at_hoffmann
    assert abs(params["beta"] - HOFFMANN_2022["beta"]) > 0.05 and abs(params["E"] - HOFFMANN_2022["E"]) > 0.05
    assert fits.value[0] == pytest.approx(chinchilla_fit.objective, rel=1e-6)


@pytest.mark.slow
def test_chinchilla_bootstrap_standard_errors_match_the_replication(chinchilla: TwoVar,
                                                                   chinchilla_fit: FittedLaw) -> None:
    # 400 resamples of single points, as the replication drew them
    boot = bootstrap("CHINCHILLA", (chinchilla.n, chinchilla.d), chinchilla.loss, n_resamples=400, rng=0,
                     options=EPOCH)
    assert boot.n_done == 400 and boot.n_failed == 0 and not boot.stopped
    se = {name: float(np.std(boot.samples[:, j], ddof=1)) for j, name in enumerate(boot.names)}
    for name in ("alpha", "beta", "E", "A"):
        assert se[name] == pytest.approx(BESIROGLU_SE[name], rel=0.3), name
    # B's bootstrap distribution is heavy-tailed (SE 62% of B): its SE is itself noisy at 400.
    assert se["B"] == pytest.approx(BESIROGLU_SE["B"], rel=0.5)
    lo, hi = boot.interval("alpha")
    assert lo < chinchilla_fit.params["alpha"] < hi


def test_heldout_check_on_two_variable_data(chinchilla: TwoVar) -> None:
    xs = (chinchilla.n, chinchilla.d)
    score = select_form(xs, chinchilla.loss, SelectOptions(forms=("CHINCHILLA",), fit=EPOCH)).best
    assert score is not None
    report = heldout_report(score, xs, chinchilla.loss)
    assert report.leave_one is not None and report.leave_two is not None
    assert report.leave_one.x_out[0] == chinchilla.n.max()
    assert 0 <= report.leave_one.rel_error[0] < 0.05  # the law extrapolates to the 16B model within 5%


def test_chinchilla_fit_has_no_warnings(chinchilla: TwoVar, chinchilla_fit: FittedLaw) -> None:
    assert fit_warnings(chinchilla_fit, (chinchilla.n, chinchilla.d), chinchilla.loss) == ()


def test_huber_is_quadratic_inside_delta_and_linear_beyond() -> None:
    value, weight = huber(np.array([0.0005, -0.002, 0.01]), 1e-3)
    assert value == pytest.approx([0.5 * 0.0005**2, 1e-3 * (0.002 - 5e-4), 1e-3 * (0.01 - 5e-4)])
    assert weight == pytest.approx([1.0, 0.5, 0.1])
