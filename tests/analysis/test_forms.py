"""The functional forms: formulas as their papers write them, M4's implicit solve, exact Jacobians."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from scaletui.analysis.form_models import LOG, LOG_EXCESS, MODELS, Data
from scaletui.analysis.forms import FORMS, FittedLaw, form, law_values, m4_excess, predict

X = np.geomspace(1e3, 1e7, 9)


def test_every_form_is_documented_with_params_and_source() -> None:
    for f in FORMS.values():
        assert f.formula and f.source and f.title
        assert len(set(f.param_names)) == f.n_params
        assert all(p.meaning for p in f.params)
        assert f.name in MODELS and MODELS[f.name].n_params == f.n_params


def test_m1_m2_chinchilla_are_their_formulas() -> None:
    np.testing.assert_allclose(law_values("M1", {"A": 5.0, "alpha": 0.3}, X), 5.0 * X**-0.3)
    np.testing.assert_allclose(law_values("M2", {"E": 1.5, "A": 5.0, "alpha": 0.3}, X), 1.5 + 5.0 * X**-0.3)
    p = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
    n, d = np.array([1e8, 1e9]), np.array([1e10, 2e11])
    np.testing.assert_allclose(law_values("CHINCHILLA", p, n, d), 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28)


def test_m3_is_the_papers_beta_times_inverse_x_plus_gamma_to_the_c() -> None:
    beta, gamma, c = 40.0, 1e-5, 0.4  # Alabdulmohsin et al.: beta (1/x + gamma)^c
    params = {"E": beta * gamma**c, "x_c": 1 / gamma, "alpha": c}
    np.testing.assert_allclose(law_values("M3", params, X), beta * (1 / X + gamma) ** c, rtol=1e-12)


def test_m4_satisfies_its_implicit_equation_and_its_limits() -> None:
    p = {"E": 0.2, "E0": 0.99, "A": 300.0, "alpha": 0.5, "gamma": 1.7}
    loss = law_values("M4", p, X)
    lhs = (loss - p["E"]) / (p["E0"] - loss) ** p["gamma"]
    np.testing.assert_allclose(lhs, p["A"] * X ** -p["alpha"], rtol=1e-9)
    assert np.all((loss > p["E"]) & (loss < p["E0"]))
    tiny, huge = law_values("M4", p, [1e-40, 1e40])
    assert tiny == pytest.approx(p["E0"], abs=1e-6) and huge == pytest.approx(p["E"], abs=1e-6)


def test_m4_with_gamma_zero_is_m2() -> None:
    m2 = {"E": 0.2, "A": 3.0, "alpha": 0.4}
    np.testing.assert_allclose(law_values("M4", {**m2, "E0": 10.0, "gamma": 0.0}, X), law_values("M2", m2, X))


def test_m4_root_is_exact_over_a_wide_range() -> None:
    rng = np.random.default_rng(0)
    t, g, b = rng.normal(0, 8, 50_000), np.exp(rng.normal(0, 2, 50_000)), np.exp(rng.normal(0, 2, 50_000))
    v, log_w = m4_excess(t, g, b)
    c = t - (1 - g) * np.log(b)
    phi = g * v + (g - 1) * np.logaddexp(0, -v) - c  # log s(v) - g log(1 - s(v)) - c
    assert np.max(np.abs(phi) / np.maximum(1, np.abs(c))) < 1e-11
    assert np.all(np.isfinite(log_w)) and np.all(log_w < np.log(b) + 1e-12)


def test_bnsl_without_a_break_is_m2_and_a_break_bends_the_slope() -> None:
    m2 = {"E": 0.1, "A": 4.0, "alpha": 0.2}
    flat = {**m2, "c1": 0.0, "d1": 1e5, "f1": 0.3}
    np.testing.assert_allclose(law_values("BNSL1", flat, X), law_values("M2", m2, X))
    sharp = {**m2, "E": 0.0, "c1": 1.0, "d1": 1e5, "f1": 0.01}
    slope = np.diff(np.log(law_values("BNSL1", sharp, [1e3, 1e4, 1e6, 1e7]))) / np.diff(np.log([1e3, 1e4, 1e6, 1e7]))
    assert slope[0] == pytest.approx(-0.2, abs=1e-3) and slope[2] == pytest.approx(-1.2, abs=1e-3)


def test_fitted_law_is_one_frozen_plain_record() -> None:
    law = FittedLaw("M2", {"E": 1.0, "A": 2.0, "alpha": 0.5}, ("width",), (8.0, 512.0), n_points=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        law.form = "M1"  # type: ignore[misc]
    assert predict(law, [4.0]) == pytest.approx(2.0)
    assert law.exponent == 0.5
    assert FittedLaw.__module__ == "scaletui.core.records"  # the one fit record lives below every layer


def test_fitted_law_round_trips_through_json_with_its_non_finite_numbers() -> None:
    law = FittedLaw("CHINCHILLA", {"E": 1.8, "A": 480.0, "alpha": 0.35, "B": 2e3, "beta": 0.37}, ("N", "D"),
                    (1e8, 1.6e10), 240, "log", math.inf, math.nan, False, 1.0, ("a warning",))
    doc = json.loads(json.dumps(law.to_json(), allow_nan=False))  # plain JSON: no NaN or Infinity tokens
    back = FittedLaw.from_json(doc)
    assert back.delta == math.inf and math.isnan(back.objective)
    assert dataclasses.replace(back, objective=0.0) == dataclasses.replace(law, objective=0.0)
    assert FittedLaw.from_json({"form": "M1", "params": {"A": 2.0, "alpha": 0.5}}).variables == ("x",)


def test_predict_evaluates_the_law_and_checks_its_variables() -> None:
    law = FittedLaw("M2", {"E": 1.0, "A": 8.0, "alpha": 0.5})
    assert predict(law, np.array([4.0, 16.0])) == pytest.approx([5.0, 3.0])
    with pytest.raises(ValueError, match="takes 1 variable"):
        predict(law, np.ones(2), np.ones(2))


def test_unknown_form_and_wrong_variables_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown form 'M9'; known forms: M1, M2"):
        form("M9")
    with pytest.raises(ValueError, match="CHINCHILLA takes 2 variable"):
        law_values("CHINCHILLA", {"E": 1, "A": 1, "alpha": 1, "B": 1, "beta": 1}, X)
    with pytest.raises(ValueError, match="needs parameters"):
        law_values("M2", {"A": 1.0}, X)


def _random_inside(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    finite = np.isfinite(lo) & np.isfinite(hi)
    span = np.where(finite, hi - lo, 0.0)
    return np.where(finite, np.where(finite, lo, 0.0) + span * rng.uniform(0.2, 0.8, lo.shape),
                    rng.normal(0, 1, lo.shape))


@pytest.mark.parametrize(("name", "space"), [(n, s) for n, m in MODELS.items() for s in m.spaces])
def test_model_jacobians_match_finite_differences(name: str, space: str) -> None:
    rng = np.random.default_rng(1)
    model = MODELS[name]
    if model.n_vars == 2:
        n, d = np.geomspace(1e7, 1e10, 20), rng.permutation(np.geomspace(1e9, 1e11, 20))
        data = Data.build([n, d], 1.8 + 400 * n**-0.34 + 2000 * d**-0.37)
    else:
        data = Data.build([X], 0.3 + 5 * X**-0.3 * np.exp(rng.normal(0, 0.01, X.size)), upper_bound=6.0)
    lo, hi = model.bounds(data, np.ones((3, data.y.size)), space)
    theta = _random_inside(lo, hi, rng)
    _, jac = model.residuals(theta, data, space)
    assert jac is not None
    step = 1e-6
    numeric = np.stack([(model.residuals(theta + step * e, data, space, jac=False)[0]
                         - model.residuals(theta - step * e, data, space, jac=False)[0]) / (2 * step)
                        for e in np.eye(theta.shape[1])], axis=-1)
    np.testing.assert_allclose(jac, numeric, atol=1e-6 * max(1.0, float(np.abs(jac).max())))


def test_spaces_are_the_two_documented_ones() -> None:
    assert {s for m in MODELS.values() for s in m.spaces} == {LOG, LOG_EXCESS}


def test_m4_jacobian_is_right_at_gamma_zero() -> None:
    """At gamma = 0 the root still moves with gamma (dw/dgamma = log(b - w) dw/dt); a Jacobian that
    zeroed it pinned gamma at its bound and stopped fits short of the optimum."""
    rng = np.random.default_rng(2)
    model = MODELS["M4"]
    data = Data.build([X], 0.3 + 0.5 * X**-0.2 * np.exp(rng.normal(0, 0.01, X.size)), upper_bound=1.0)
    theta = np.array([[0.0, 0.05, 0.0, np.log(0.1), np.log(0.5)]])  # q, alpha, gamma = 0, e, e0: w < b
    _, jac = model.residuals(theta, data, LOG)
    assert jac is not None
    e = np.eye(5)[2] * 1e-7
    r0, r1 = (model.residuals(t, data, LOG, jac=False)[0] for t in (theta, theta + e))
    forward = (r1 - r0) / 1e-7
    np.testing.assert_allclose(jac[0, :, 2], forward[0], atol=1e-5 * max(1.0, float(np.abs(forward).max())))
    assert np.abs(jac[0, :, 2]).max() > 0


def test_m4_root_does_not_iterate_the_m2_limit_which_has_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """gamma = 0 and e^t >= b (the M2 limit): m4_excess answers w = e^t without the root, so the
    root finder must not spend its whole iteration budget bisecting for a root that does not exist."""
    from scaletui.analysis import forms

    steps: list[int] = []
    original = forms._m4_step

    def counting(v: np.ndarray, g: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps.append(v.size)
        return original(v, g, c)

    monkeypatch.setattr(forms, "_m4_step", counting)
    t = np.array([0.5, 2.0, -3.0])  # the last one, e^t < b: a root exists
    _, log_w = m4_excess(t, np.zeros(3), 1.0)
    assert log_w[:2] == pytest.approx(t[:2])
    assert len(steps) < 10 and all(size == 1 for size in steps)
