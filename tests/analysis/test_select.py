"""Form selection by held-out error, the skip reasons for bad curves, and the prediction band."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from formdata import SIZES, TRUE, noisy

from scaletui.analysis.forms import law_values, predict
from scaletui.analysis.select import (
    SelectOptions,
    band_from_bootstrap,
    curve_problem,
    extrapolation_rate,
    heldout_scores,
    predict_with_band,
    select_form,
    size_levels,
)
from scaletui.analysis.solve import FitOptions, bootstrap


@pytest.mark.parametrize("name", ["M1", "M2", "M3", "BNSL1"])
def test_selection_picks_the_true_form(name: str) -> None:
    x, y = noisy(name, sizes=SIZES)
    chosen = select_form(x, y)
    assert chosen.best is not None and chosen.best.form == name
    assert len(chosen.scores) == 5 and all(s.ok for s in chosen.scores)


def test_a_sigmoid_curve_is_m4_or_said_to_be_unclear() -> None:
    """M4 and BNSL1 both bend at both ends; on this curve they are within noise of each other."""
    x, y = noisy("M4", sizes=SIZES)
    chosen = select_form(x, y)
    assert chosen.best is not None and chosen.best.form in ("M4", "BNSL1")
    if chosen.best.form != "M4":
        assert any(w.startswith("choice not clear: M4") for w in chosen.warnings)
    simplest = select_form(x, y, SelectOptions(prefer_simpler=True))
    assert simplest.best is not None and simplest.best.form == "M4"


def test_every_forms_heldout_error_is_reported_on_the_same_origins() -> None:
    x, y = noisy("M2", sizes=SIZES)
    scores = heldout_scores(x, y)
    by_name = {s.form: s for s in scores}
    assert len(by_name["M1"].per_origin) == 12 and len(by_name["BNSL1"].per_origin) == 9  # 16 - 7 sizes
    common = by_name["M1"].per_origin[:9]
    assert by_name["M1"].heldout_error == pytest.approx(float(np.sqrt(np.mean(np.square(common)))))


def test_a_bounded_metric_only_considers_forms_that_respect_the_bound() -> None:
    x, y = noisy("M4", sizes=SIZES)
    chosen = select_form(x, y, SelectOptions(fit=FitOptions(upper_bound=1.0)))
    assert chosen.best is not None and chosen.best.form == "M4"
    skipped = {s.form: s.skipped for s in chosen.scores if s.skipped}
    assert set(skipped) == {"M1", "M2", "M3", "BNSL1"}
    assert "cannot respect the metric's upper bound 1" in skipped["M2"]


def test_few_sizes_warn_that_the_choice_is_not_clear() -> None:
    x = np.geomspace(1e3, 1e5, 6)
    chosen = select_form(x, law_values("M2", TRUE["M2"], x))
    assert chosen.best is not None
    assert any("held-out origin(s) could be scored" in w for w in chosen.warnings)
    assert str(chosen.score("BNSL1").skipped).startswith("BNSL1 has 6 parameters and needs")


RISING = np.geomspace(1e3, 1e5, 8) ** 0.1


@pytest.mark.parametrize(("x", "y", "reason"), [
    (SIZES, np.full(16, 2.5), "flat curve"),
    (SIZES[:8], RISING, "the loss rises with size"),
    (SIZES[:6], [3.0, 2.0, -1.0, 1.5, 1.4, 1.3], "loss value(s) are not finite and > 0"),
    (SIZES[:6], [3.0, 2.0, np.inf, 1.5, 1.4, 1.3], "loss value(s) are not finite and > 0"),
    ([1e3] * 6, [3.0, 2.9, 3.1, 3.0, 2.95, 3.05], "only 1 distinct size"),
    (SIZES[:6], [3.0, 2.0], "differ in length"),
    ([0.0, 1e3, 1e4, 1e5], [3.0, 2.0, 1.5, 1.4], "every size must be finite and > 0"),
])
def test_bad_curves_are_skipped_with_one_reason_never_an_exception(x: object, y: object, reason: str) -> None:
    chosen = select_form(x, y)  # type: ignore[arg-type]
    assert chosen.best is None and chosen.law is None
    assert all(s.skipped is not None and reason in s.skipped for s in chosen.scores)
    assert chosen.warnings[-1] == "no form could be fitted and scored"
    assert curve_problem(x, y) is not None  # type: ignore[arg-type]


def test_duplicate_rows_are_counted_once_and_said() -> None:
    x, y = noisy("M2", sizes=SIZES, seeds=1)
    chosen = select_form(np.concatenate([x, x[:3]]), np.concatenate([y, y[:3]]))
    assert chosen.best is not None and chosen.best.law is not None and chosen.best.law.n_points == 16
    assert "3 duplicate row(s) (same size and loss) counted once" in chosen.warnings


def test_two_variable_data_is_scored_by_leaving_out_the_largest_models() -> None:
    rng = np.random.default_rng(3)
    n = np.repeat(np.geomspace(1e7, 1e10, 8), 6)
    d = n * np.tile(np.geomspace(5, 200, 6), 8)
    y = law_values("CHINCHILLA", {"E": 1.8, "A": 480, "alpha": 0.35, "B": 2000, "beta": 0.37}, n, d)
    y = y * np.exp(0.002 * rng.normal(size=y.size))
    chosen = select_form((n, d), y, SelectOptions(forms=("CHINCHILLA",)))
    # 8 sizes of N: an origin keeps at least 4 of them (and 6 distinct (N, D) points for 5 parameters)
    assert chosen.best is not None and len(chosen.best.per_origin) == 4
    assert chosen.best.heldout_error < 0.01
    assert [law.x_range[1] for law in chosen.best.origin_laws] == pytest.approx(np.unique(n)[-2:-6:-1])


def test_the_band_brackets_the_prediction_and_widens_beyond_the_data() -> None:
    x, y = noisy("M2", sizes=SIZES)
    law = select_form(x, y).law
    assert law is not None
    band = predict_with_band(law, [1e5, 1e9], x, y, groups=x, n_resamples=200)
    assert np.all(band.lo < band.value) and np.all(band.value < band.hi)
    width = np.log(band.hi / band.lo)
    assert width[1] > width[0] and band.extrapolation_rate > 0
    truth = law_values("M2", TRUE["M2"], [1e5, 1e9])
    assert np.all((band.lo <= truth) & (truth <= band.hi))
    assert band.value == pytest.approx(predict(law, [1e5, 1e9]))


def test_the_band_can_be_cancelled() -> None:
    x, y = noisy("M2", sizes=SIZES)
    law = select_form(x, y).law
    assert law is not None
    stop = threading.Event()
    stop.set()
    band = predict_with_band(law, [1e8], x, y, n_resamples=1000, should_stop=stop.is_set)
    assert band.n_resamples == 0 and band.notes and np.isfinite(band.lo).all()


def test_two_variable_data_gets_the_two_variable_form_and_unknown_names_are_reported() -> None:
    rng = np.random.default_rng(4)
    n = np.repeat(np.geomspace(1e7, 1e10, 8), 6)
    d = n * np.tile(np.geomspace(5, 200, 6), 8)
    y = law_values("CHINCHILLA", {"E": 1.8, "A": 480, "alpha": 0.35, "B": 2000, "beta": 0.37}, n, d)
    chosen = select_form((n, d), y * np.exp(0.002 * rng.normal(size=y.size)))
    assert chosen.best is not None and chosen.best.form == "CHINCHILLA" and len(chosen.scores) == 1
    x, y1 = noisy("M2")
    odd = select_form(x, y1, SelectOptions(forms=("m2", "M9")))
    assert odd.best is not None and odd.best.form == "M2"
    assert odd.score("M9").skipped == "unknown form; known forms: M1, M2, M3, M4, BNSL1, BNSL2, CHINCHILLA"


def test_too_few_sizes_to_score_take_a_fitted_form_and_say_so() -> None:
    """5 sizes: M2 needs 4 to fit, so no origin can leave one out for every form but M1; 4 sizes:
    M2 can be fitted but not scored, and is taken (the offset law first) with a warning."""
    x = np.geomspace(1e3, 1e5, 4)
    chosen = select_form(x, law_values("M2", TRUE["M2"], x))
    assert chosen.best is not None and chosen.best.form == "M2" and chosen.law is not None
    assert chosen.law.params["alpha"] == pytest.approx(TRUE["M2"]["alpha"], rel=1e-3)
    assert any(w.startswith("too few sizes to compare forms by held-out error: M2 taken") for w in chosen.warnings)
    assert "M2 not scored: no size can be held out: 4 sizes, M2 needs 4 to fit" in chosen.warnings
    only_m3 = select_form(x, law_values("M2", TRUE["M2"], x), SelectOptions(forms=("M3",)))
    assert only_m3.best is not None and only_m3.best.form == "M3"


def test_origin_laws_give_the_same_extrapolation_rate_as_refitting() -> None:
    x, y = noisy("M2", sizes=SIZES)
    score = select_form(x, y, SelectOptions(forms=("M2",))).best
    assert score is not None and score.law is not None and len(score.origin_laws) == 12
    assert [law.x_range[1] for law in score.origin_laws] == pytest.approx(SIZES[-2:-14:-1])
    refitted = extrapolation_rate(score.law, x, y)
    assert extrapolation_rate(score.law, x, y, origin_laws=score.origin_laws) == pytest.approx(refitted, rel=1e-4)


def test_one_bootstrap_serves_intervals_and_the_band() -> None:
    """band_from_bootstrap on a bootstrap run by hand is predict_with_band (same draws, same band)."""
    x, y = noisy("M2", sizes=SIZES)
    law = select_form(x, y, SelectOptions(forms=("M2",))).law
    assert law is not None
    whole = predict_with_band(law, [1e5, 1e9], x, y, groups=x, n_resamples=100, rng=3)
    gen = np.random.default_rng(3)
    boot = bootstrap("M2", x, y, groups=x, n_resamples=100, rng=gen)
    parts = band_from_bootstrap(law, boot, [1e5, 1e9], x, y, rate=extrapolation_rate(law, x, y), rng=gen)
    np.testing.assert_allclose(parts.lo, whole.lo, rtol=1e-9)
    np.testing.assert_allclose(parts.hi, whole.hi, rtol=1e-9)


def test_sizes_read_off_a_figure_are_one_size_each() -> None:
    """Digitised data (Chinchilla's) give one model's N as 1.2568994e10, 1.2568980e10, ...: leaving out
    "the largest size" must leave out all of them, or a held-out point 1e-6 beyond the fit makes the error
    per distance explode; that made Chinchilla's 90% band [0, inf]."""
    rng = np.random.default_rng(5)
    models = np.geomspace(1e8, 1e10, 8)
    n = np.repeat(models, 15) * (1 + 1e-6 * rng.uniform(size=120))  # 120 distinct N, 8 sizes
    d = n * np.tile(np.geomspace(5, 200, 15), 8)
    truth = {"E": 1.8, "A": 480, "alpha": 0.35, "B": 2000, "beta": 0.37}
    y = law_values("CHINCHILLA", truth, n, d) * np.exp(0.01 * rng.normal(size=n.size))
    assert np.unique(size_levels(n)).size == 8
    score = select_form((n, d), y).best
    assert score is not None and score.law is not None and len(score.per_origin) == 4  # 8 sizes, 4 kept
    assert all(law.n_points == 120 - 15 * k for k, law in enumerate(score.origin_laws, start=1))
    band = predict_with_band(score.law, ([4e10], [8e11]), (n, d), y, n_resamples=100)
    assert np.all(np.isfinite(band.lo) & np.isfinite(band.hi)) and float(band.hi[0] / band.lo[0]) < 1.5
    assert band.lo[0] < law_values("CHINCHILLA", truth, [4e10], [8e11])[0] < band.hi[0]
