"""The glue between the store and the fits, on a real database of runs that follow a known law.

tests/fitdb.py writes the runs through Store/StoreSink: final test loss = 0.3 + 40 * params^-0.5
(+ a drift that vanishes with training, times a per-seed factor of at most 0.4%), so every
fit below has a known answer. Most tests force the offset law (M2, the law the data follow, and the
only law scaletui fitted before forms were chosen), so their numbers are the law's; the tests of
`form="auto"` check the choice itself.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import scaletui.services.fitting as fitting_module
from scaletui.core.vocabulary import LossRule
from scaletui.services.fitting import (
    FitInputError,
    FitReport,
    FitSpec,
    FitStopped,
    RunPoint,
    describe_heldout,
    fit_csv,
    fit_curve,
    fit_experiment,
    gather,
    loss_at_steps,
    run_x,
    save_reports,
)
from scaletui.store import Reader
from tests.fitdb import ALPHA, DRIFT, EVAL_STEPS, A, E, fill, params_of, plan
from tests.rows import run_summary

QUICK = FitSpec(n_bootstrap=40, form="offset")


@pytest.fixture(scope="module")
def law_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 widths x 2 depths x 2 seeds; one seed of the largest depth-2 model diverged."""
    return fill(tmp_path_factory.mktemp("fits") / "runs.db", plan(depths=(1, 2), diverged=[(128, 2, 1)]))


def test_points_are_finished_runs_and_diverged_ones_are_counted(law_db: Path) -> None:
    with Reader(law_db) as reader:
        curves = gather(reader, None, QUICK)
    assert curves.experiment == "law" and curves.loss_rule is LossRule.FINAL
    assert curves.n_finished == 19 and curves.n_diverged == 1
    (points,) = curves.curves.values()
    assert len(points) == 19
    for p in points:  # x = params of the run, loss = its final test loss
        assert p.loss == pytest.approx(E + 40.0 * p.x**-ALPHA + DRIFT / EVAL_STEPS[-1], rel=5e-3)


def test_fit_recovers_the_law_with_intervals_heldout_error_and_stable_alpha(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, "law", QUICK).reports
    assert report.law.form == "M2" and report.forced and report.law.exponent == pytest.approx(ALPHA, abs=0.01)
    assert pytest.approx(E + DRIFT / EVAL_STEPS[-1], abs=0.005) == report.law.params["E"]
    lo, hi = report.intervals["alpha"]
    assert lo < report.law.exponent < hi
    assert report.boot is not None and report.boot.n_groups == 10  # a resample draws sizes, seeds together
    assert report.heldout.leave_one.rel_error[0] < 0.01 and report.heldout.leave_two.max_rel_error < 0.01
    assert report.monotonicity.ok and report.warnings == ()
    # refitted at each evaluation after step 0; only the floor drifts, so alpha stays put
    assert report.stability.steps.tolist() == list(EVAL_STEPS[1:])
    assert report.stability.stable and np.nanmax(np.abs(report.stability.alpha - ALPHA)) < 0.02
    assert report.n_diverged == 1 and report.loss_label == "final test loss"
    assert [p.n for p in report.points] == [2] * 9 + [1]  # the diverged seed is missing at the top


def test_points_are_seed_means_with_spread(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, "law", replace_spec(n_bootstrap=0)).reports
    first = report.points[0]
    assert first.x == params_of(8, 1)
    assert first.mean == pytest.approx((first.lo + first.hi) / 2) and first.hi / first.lo == pytest.approx(1.004)
    assert report.boot is None and report.intervals == {} and report.band is None


def replace_spec(**changes: object) -> FitSpec:
    from dataclasses import replace

    return replace(QUICK, **changes)


def test_grouping_fits_one_curve_per_depth(law_db: Path) -> None:
    result = fit_experiment(law_db, None, replace_spec(x="width", group_by="depth"))
    assert [r.group for r in result.reports] == ["depth=1", "depth=2"]
    assert [r.n_diverged for r in result.reports] == [0, 1]  # the diverged run is counted in its own curve
    for r in result.reports:  # params = 100 w^2 d: in width the exponent doubles
        assert r.law.exponent == pytest.approx(2 * ALPHA, abs=0.02)


def test_flops_are_forward_flops_times_examples_seen(law_db: Path) -> None:
    row = run_summary(flops_per_example=10, step=500, params=5)
    assert run_x("flops", row, {"batch_size": 32}) == 10 * 500 * 32
    assert run_x("flops", row, {"batch_size": 32}, step=100) == 10 * 100 * 32
    (report,) = fit_experiment(law_db, None, replace_spec(x="flops")).reports
    assert report.law.exponent == pytest.approx(ALPHA, abs=0.01)  # flops = 2 params x 500 x 32: same exponent


def test_x_steps_fits_the_test_loss_series(tmp_path: Path) -> None:
    db = fill(tmp_path / "steps.db", plan(widths=(8, 16), seeds=(0,)))
    reports = fit_experiment(db, None, replace_spec(x="steps", group_by="width")).reports
    assert [r.group for r in reports] == ["width=8", "width=16"]
    for r, width in zip(reports, (8, 16), strict=True):  # one run per curve: loss(t) = its floor + DRIFT / t
        assert r.n_sizes == len(EVAL_STEPS) - 1 and r.stability is None
        assert r.law.exponent == pytest.approx(1.0, abs=1e-3) and pytest.approx(DRIFT, rel=1e-3) == r.law.params["A"]
        assert pytest.approx(E + 40.0 * params_of(width, 1) ** -ALPHA, rel=1e-3) == r.law.params["E"]


def test_loss_rules_follow_the_training_loop() -> None:
    series = [(0, 9.0), (100, 1.0), (200, 0.5), (300, 0.8), (400, math.nan)]
    assert loss_at_steps(series, LossRule.FINAL) == [(100, 1.0), (200, 0.5), (300, 0.8)]
    assert loss_at_steps(series, LossRule.BEST) == [(100, 1.0), (200, 0.5), (300, 0.5)]
    smoothed = loss_at_steps(series, LossRule.SMOOTHED)
    ema = (0.9 * (0.9 * 0.1 * 1.0 + 0.1 * 0.5) + 0.1 * 0.8) / (1 - 0.9**3)
    assert smoothed[0] == (100, pytest.approx(1.0)) and smoothed[-1][1] == pytest.approx(ema)


def test_another_loss_rule_is_used_and_stated(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, replace_spec(loss_rule=LossRule.BEST, stability=False)).reports
    assert report.loss_rule == "best" and report.loss_label == "best test loss"


def test_pure_power_law_form(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, replace_spec(form="power", stability=False)).reports
    assert "E" not in report.law.params and report.law.form == "M1" and report.forced


@pytest.mark.parametrize(
    ("experiment", "spec", "message"),
    [
        ("nope", QUICK, "no experiment 'nope'; experiments are ['law']"),
        (None, FitSpec(x="height"), "x: unknown x 'height'"),
        (None, FitSpec(group_by="colour"), "group-by: unknown column 'colour'"),
        (None, FitSpec(x="examples", n_bootstrap=0), "only 1 distinct value(s) of x"),
    ],
)
def test_bad_input_is_one_line_naming_the_thing(law_db: Path, experiment: str | None, spec: FitSpec,
                                                message: str) -> None:
    with pytest.raises(FitInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")) as info:
        fit_experiment(law_db, experiment, spec)
    assert "\n" not in str(info.value)


def test_no_finished_runs_is_an_error(tmp_path: Path) -> None:
    db = fill(tmp_path / "div.db", plan(widths=(8, 16), seeds=(0,), diverged=[(8, 1, 0), (16, 1, 0)]))
    with pytest.raises(FitInputError, match=r"no finished runs .* \(0 finished, 2 diverged\)"):
        fit_experiment(db, None, QUICK)


def test_saved_fits_are_queryable_with_their_inputs(law_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    with sqlite3.connect(law_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    (saved,) = save_reports(db, fit_experiment(db, None, QUICK).reports)
    with Reader(db) as reader:
        (row,) = reader.fits("law", x="params")
    assert row.id == saved.fit_id and row.loss_rule == "final" and row.n_sizes == 10
    assert row.params["alpha"] == pytest.approx(saved.law.exponent) and (row.heldout_rel_error or 1) < 0.01
    assert row.law == saved.law  # the one fit record, back from the database as it went in
    inputs = row.inputs
    assert len(inputs["x"]) == len(inputs["run_ids"]) == 19
    assert row.options["n_bootstrap"] == 40 and row.options["form"] == "M2"
    assert row.intervals["alpha"][0] < saved.law.exponent
    assert row.scores["M2"]["chosen"] and row.scores["M2"]["n_origins"] == 6
    assert [h["left_out"] for h in row.heldout] == [1, 2]


def test_report_json_is_plain_json(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, QUICK).reports
    doc = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert doc["params"]["alpha"] == pytest.approx(report.law.exponent) and doc["law"]["form"] == "M2"
    assert doc["heldout"][0]["left_out"] == 1 and doc["stability"]["stable"] is True


# ----------------------------------------------------------------------------- CSV files


def law_rows(sizes: tuple[float, ...] = (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6), scale: float = 1.0,
             noise: tuple[float, ...] = (1.01, 0.99, 1.004, 0.996, 1.008, 0.993)) -> list[tuple[float, float]]:
    """(x, loss) on the law 0.3 + 40 x^-0.5 (times `scale`), with a fixed wobble so a bootstrap has spread."""
    return [(x, scale * (0.3 + 40 * x**-0.5) * w) for x, w in zip(sizes, noise, strict=True)]


def test_csv_rows_split_by_a_column_give_one_law_each_and_skip_what_cannot_be_fitted(tmp_path: Path) -> None:
    csv = tmp_path / "curves.csv"
    lines = [f"small,{x},{y}" for x, y in law_rows()] + [f"large,{x},{y}" for x, y in law_rows(scale=0.5)]
    csv.write_text("model,n,loss\n" + "\n".join(lines + ["tiny,1000,3.0", "tiny,1000,3.1"]) + "\n")
    result = fit_csv(csv, x="n", y="loss", spec=replace_spec(group_by="model", n_bootstrap=0))
    assert [r.group for r in result.reports] == ["model=small", "model=large"]
    small, large = result.reports
    assert small.law.exponent == pytest.approx(0.5, abs=0.05) and large.law.exponent == pytest.approx(0.5, abs=0.05)
    assert pytest.approx(small.law.params["A"] / 2, rel=0.2) == large.law.params["A"]
    assert small.loss.size == large.loss.size == 6
    (skipped,) = result.skipped
    assert skipped.startswith(f"{csv} (model=tiny): only 1 distinct value(s) of x")
    assert small.group == "model=small" and small.options["group_by"] == "model"


def test_csv_grouped_by_several_columns(tmp_path: Path) -> None:
    csv = tmp_path / "curves.csv"
    lines = [f"{task},{m},{x},{y * (1 + 0.1 * i)}" for i, (task, m) in enumerate([("a", "s"), ("a", "l"), ("b", "s")])
             for x, y in law_rows()]
    csv.write_text("task,model,n,loss\n" + "\n".join(lines) + "\n")
    result = fit_csv(csv, x="n", y="loss", spec=replace_spec(group_by="task,model", n_bootstrap=0))
    assert [r.group for r in result.reports] == ["task=a, model=s", "task=a, model=l", "task=b, model=s"]


def test_csv_group_column_is_the_bootstrap_unit_and_duplicates_are_warned(tmp_path: Path) -> None:
    """Every row written 4 times: resampled by row the copies pose as evidence and the interval shrinks;
    resampled by the run column it is the interval of the file without copies."""
    rows = [f"r{i},{x},{y}" for i, (x, y) in enumerate(law_rows())]
    once, four = tmp_path / "once.csv", tmp_path / "four.csv"
    once.write_text("run,n,loss\n" + "\n".join(rows) + "\n")
    four.write_text("run,n,loss\n" + "\n".join(rows * 4) + "\n")
    spec = replace_spec(n_bootstrap=60, stability=False)

    def width(report: FitReport) -> float:
        lo, hi = report.intervals["alpha"]
        return hi - lo

    (base,) = fit_csv(once, x="n", y="loss", spec=spec).reports
    (by_row,) = fit_csv(four, x="n", y="loss", spec=spec).reports
    (by_run,) = fit_csv(four, x="n", y="loss", unit="run", spec=spec).reports
    assert width(by_run) == pytest.approx(width(base), rel=0.05)
    assert width(by_row) < 0.8 * width(base)
    assert by_run.boot.n_groups == 6 and by_run.resample_unit == "6 values of 'run'"
    assert not any("duplicate" in w for w in base.warnings)
    for report in (by_row, by_run):
        assert any(w.startswith("18 rows are exact duplicates of earlier rows") for w in report.warnings)


def test_csv_with_one_resampling_unit_gets_no_interval_and_says_why(tmp_path: Path) -> None:
    csv = tmp_path / "one.csv"
    csv.write_text("run,n,loss\n" + "\n".join(f"r0,{x},{y}" for x, y in law_rows()) + "\n")
    (report,) = fit_csv(csv, x="n", y="loss", unit="run", spec=replace_spec(n_bootstrap=20)).reports
    assert report.boot is None
    assert any("no bootstrap: only 1 value of 'run'" in w for w in report.warnings)


def test_csv_rows_without_a_loss_are_left_out_with_a_warning(tmp_path: Path) -> None:
    csv = tmp_path / "gaps.csv"
    csv.write_text("n,loss\n" + "\n".join(f"{x},{y}" for x, y in law_rows()) + "\n2e6,nan\n4e6,\n")
    (report,) = fit_csv(csv, x="n", y="loss", spec=replace_spec(n_bootstrap=0)).reports
    assert report.loss.size == 6
    assert "2 rows without a loss in column 'loss' (empty, NaN or inf) left out: rows 8, 9" in report.warnings


def test_two_variable_heldout_is_per_point_in_json_and_in_the_stored_fit(tmp_path: Path) -> None:
    law = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
    rows = [(n, d, law["E"] + law["A"] * n ** -law["alpha"] + law["B"] * d ** -law["beta"])
            for n in (1e7, 3e7, 1e8, 3e8, 1e9, 3e9) for d in (1e9 * n / 1e7, 4e9 * n / 1e7)]
    csv = tmp_path / "nd.csv"
    csv.write_text("N,D,loss\n" + "\n".join(f"{n},{d},{y}" for n, d, y in rows) + "\n")
    (report,) = fit_csv(csv, x="N", y="loss", d="D", spec=replace_spec(n_bootstrap=0, form="auto")).reports
    assert report.law.form == "CHINCHILLA" and report.law.variables == ("N", "D")
    leave_one = report.to_json()["heldout"][0]
    assert leave_one["x"] == [3e9, 3e9] and leave_one["D"] == pytest.approx([3e11, 1.2e12])
    assert leave_one["actual"] == pytest.approx([y for n, _, y in rows if n == 3e9])  # each point its own loss
    assert len(leave_one["rel_error"]) == 2 and leave_one["n"] == [1, 1]
    save_reports(tmp_path / "fits.db", [report])
    with sqlite3.connect(tmp_path / "fits.db") as conn:
        heldout, err, form = conn.execute("SELECT heldout_json, heldout_rel_error, form_name FROM fits").fetchone()
    stored = json.loads(heldout)
    assert stored[0]["D"] == pytest.approx([3e11, 1.2e12]) and stored[0]["actual"] == pytest.approx(leave_one["actual"])
    assert err == pytest.approx(max(leave_one["rel_error"])) and form == "CHINCHILLA"
    lines = describe_heldout(report.heldout)
    assert lines[0].startswith("largest 1 left out: N=3e+09, D=3e+11: predicted ")
    assert lines[1].startswith("largest 1 left out: N=3e+09, D=1.2e+12: predicted ")


# ----------------------------------------------------------------------------- choosing the form, predicting


def test_auto_reports_every_form_and_keeps_the_best_predictor(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, replace_spec(form="auto", stability=False)).reports
    assert report.chosen_by == "held-out error" and not report.forced
    assert [s.form for s in report.scores] == ["M1", "M2", "M3", "M4", "BNSL1"]
    assert all(s.ok for s in report.scores)  # 10 sizes: every form was fitted and scored
    assert report.score is not None and report.score.heldout_error == min(s.heldout_error for s in report.scores)
    assert report.score.heldout_rel_error < 0.01
    by_form = {s.form: s for s in report.scores}
    assert by_form["M1"].heldout_error > 3 * by_form["M2"].heldout_error  # the data have a floor
    doc = report.to_json()
    assert [f["form"] for f in doc["forms"]] == ["M1", "M2", "M3", "M4", "BNSL1"]
    assert [f["chosen"] for f in doc["forms"]].count(True) == 1 and doc["chosen_by"] == "held-out error"


def test_predictions_have_a_band_and_far_ones_are_flagged(law_db: Path) -> None:
    spec = replace_spec(n_bootstrap=100, stability=False, predict=((1e7,), (1e9,)))
    (report,) = fit_experiment(law_db, None, spec).reports
    near, far = report.predictions
    truth = E + A * 1e7**-ALPHA + DRIFT / EVAL_STEPS[-1]  # the final loss a model of 1e7 params would have
    assert near.lo < truth < near.hi and near.lo < near.value < near.hi and near.level == 0.9
    assert near.beyond == pytest.approx(1e7 / params_of(128, 2)) and not near.far
    assert far.far and far.hi / far.lo > near.hi / near.lo  # the band widens with the distance
    assert any(w.startswith("PREDICTION FAR BEYOND THE DATA: x=1e+09 is 305x") for w in report.warnings)
    doc = report.to_json()["predictions"]
    assert doc[0]["x"] == 1e7 and doc[0]["lo"] < doc[0]["value"] < doc[0]["hi"] and doc[1]["far_beyond_data"]


def test_a_prediction_without_a_bootstrap_has_no_band(law_db: Path) -> None:
    spec = replace_spec(n_bootstrap=0, stability=False, predict=((1e7,),))
    (p,) = fit_experiment(law_db, None, spec).reports[0].predictions
    assert math.isnan(p.lo) and math.isnan(p.hi) and p.value == pytest.approx(E + A * 1e7**-ALPHA + 0.01, rel=0.01)


def test_a_stated_upper_bound_keeps_only_forms_that_respect_it(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, replace_spec(form="auto", upper_bound=3.0, stability=False)).reports
    assert report.law.form == "M4" and report.law.upper_bound == 3.0
    assert report.law.params["E0"] <= 3.0 * (1 + 1e-3)
    skipped = {s.form: s.skipped for s in report.scores if s.skipped}
    assert set(skipped) == {"M1", "M2", "M3", "BNSL1"} and "upper bound 3" in str(skipped["M2"])
    with pytest.raises(FitInputError, match=r"law: a loss of .* exceeds the stated upper bound 0\.5"):
        fit_experiment(law_db, None, replace_spec(form="auto", upper_bound=0.5, stability=False))


def test_loss_space_and_delta_are_options_with_the_measured_default(law_db: Path) -> None:
    (default,) = fit_experiment(law_db, None, replace_spec(n_bootstrap=0, stability=False)).reports
    assert (default.law.loss_space, default.law.delta) == ("log", 0.01)
    spec = replace_spec(n_bootstrap=0, stability=False, loss_space="log_excess", delta=math.inf)
    (other,) = fit_experiment(law_db, None, spec).reports
    assert (other.law.loss_space, other.law.delta) == ("log_excess", math.inf)
    assert other.options["loss_space"] == "log_excess" and other.law.exponent == pytest.approx(ALPHA, abs=0.02)
    with pytest.raises(FitInputError, match="loss space must be"):
        fit_experiment(law_db, None, replace_spec(loss_space="linear"))


def points_of(x: list[float], loss: list[float]) -> list[RunPoint]:
    return [RunPoint(i, xv, yv, None) for i, (xv, yv) in enumerate(zip(x, loss, strict=True))]


SIX = [1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6]


@pytest.mark.parametrize(("x", "loss", "form", "message"), [
    (SIX, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "auto", "c: the loss rises with size (log-log slope"),
    (SIX, [2.0] * 6, "auto", "c: the loss does not change with size (flat curve)"),
    (SIX, [2.0, 1.5, -1.0, 1.2, 1.1, 1.0], "auto", "c: 1 loss value(s) are not finite and > 0"),
    (SIX, [2.0, 1.5, math.inf, 1.2, 1.1, 1.0], "M2", "c: 1 loss value(s) are not finite and > 0"),
    ([1e3, 1e3, 1e3, 1e3], [2.0, 2.1, 1.9, 2.0], "auto", "c: only 1 distinct value(s) of x"),
    (SIX[:3], [2.0, 1.5, 1.2], "M2", "c: M2 has 3 parameters and needs at least 4 distinct sizes; got 3"),
    (SIX[:2], [2.0, 1.5], "auto", "c: no form could be fitted (M1 has 2 parameters and needs at least 3"),
])
def test_a_curve_that_cannot_be_fitted_says_why_in_one_line(x: list[float], loss: list[float], form: str,
                                                            message: str) -> None:
    spec = replace_spec(form=form, stability=False)
    with pytest.raises(FitInputError) as info:
        fit_curve(points_of(x, loss), spec, source="c", loss_rule=LossRule.FINAL)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_forms_that_cannot_be_fitted_are_listed_and_the_rest_compared() -> None:
    """5 sizes: M4 (5 parameters) and BNSL1 (6) cannot be fitted; M1, M2, M3 are, each with one origin."""
    x = SIX[:5]
    report = fit_curve(points_of(x, [0.3 + 40 * v**-0.5 for v in x]), replace_spec(form="auto", stability=False),
                       source="c", loss_rule=LossRule.FINAL)
    assert report.law.form == "M2" and report.chosen_by == "held-out error"
    skipped = {s.form: s.skipped for s in report.scores if s.law is None}
    assert skipped == {"M4": "M4 has 5 parameters and needs at least 6 distinct sizes; got 5",
                       "BNSL1": "BNSL1 has 6 parameters and needs at least 7 distinct sizes; got 5"}
    assert any("only 1 held-out origin(s) could be scored" in w for w in report.warnings)
    assert report.heldout.leave_one is not None and report.heldout.leave_two is None
    assert report.heldout.notes == ("leave-2-out skipped: 3 sizes left, too few to fit M2 (3 parameters) and "
                                    "judge it",)


def test_four_sizes_take_the_offset_law_without_a_comparison_and_say_so() -> None:
    x = SIX[:4]
    report = fit_curve(points_of(x, [0.3 + 40 * v**-0.5 for v in x]), replace_spec(form="auto", stability=False),
                       source="c", loss_rule=LossRule.FINAL)
    assert report.law.form == "M2" and report.chosen_by.startswith("default")
    assert any(w.startswith("too few sizes to compare forms by held-out error: M2 taken") for w in report.warnings)


def test_a_curve_pooling_shapes_says_so_once_instead_of_one_warning_per_pair() -> None:
    """A depth-1 net loses to a deeper one of about the same size: on a law over params pooled across
    depths that is one fact about the data (one line, pointing at --group-by depth), not N alarms."""
    from scaletui.analysis.checks import check_monotone
    from scaletui.services.fitting import RunPoint, _mixed_shape_warning, _mixes_shapes, _monotonicity_warnings

    cells = {(8, 2, 100.0): [0.50, 0.51], (16, 1, 120.0): [0.70, 0.71], (16, 2, 200.0): [0.40, 0.41],
             (32, 1, 240.0): [0.60, 0.61], (32, 2, 400.0): [0.30, 0.31]}
    points = [RunPoint(i, x, loss, None, (), (w, d)) for i, ((w, d, x), losses) in enumerate(cells.items())
              for loss in losses]
    mono = check_monotone([p.x for p in points], [p.loss for p in points])
    assert len(_monotonicity_warnings(mono)) == 2  # what a single-family curve would say, pair by pair
    assert _mixes_shapes(points) and not _mixes_shapes([p for p in points if p.shape[1] == 2])
    [line] = _mixed_shape_warning(mono, "params")
    assert line.startswith("loss is not a function of params alone: 2 times")
    assert "(worst: x=200 0.405 vs x=240 0.605)" in line and "--group-by depth" in line  # the largest ratio


def _stop_at_check(k: int) -> tuple[Callable[[], bool], threading.Event, threading.Event, list[int]]:
    """A stop check that, at its k-th call, says the fit is under way (`asked`) and then waits for
    the test to press stop (`pressed`), as the app's cancel does from another thread."""
    asked, pressed, calls = threading.Event(), threading.Event(), []

    def should_stop() -> bool:
        calls.append(1)
        if len(calls) == k:
            asked.set()
            pressed.wait(60)
        return pressed.is_set()

    return should_stop, asked, pressed, calls


@pytest.mark.parametrize("k", [1, 4])
def test_a_stop_during_the_point_fit_returns_at_the_next_check(law_db: Path, k: int) -> None:
    """The point fit (every form, its held-out refits) consults the stop check as it goes, so a cancel
    ends it at once (FitStopped) instead of after the whole selection."""
    should_stop, asked, pressed, calls = _stop_at_check(k)
    raised: list[BaseException] = []

    def fit() -> None:
        try:
            fit_experiment(law_db, None, FitSpec(n_bootstrap=0), should_stop=should_stop)
        except FitStopped as exc:
            raised.append(exc)

    worker = threading.Thread(target=fit)
    worker.start()
    assert asked.wait(60), "the point fit never consulted the stop check"
    pressed.set()
    worker.join(60)
    assert not worker.is_alive() and raised
    assert len(calls) == k  # no solving went on after the check that saw the stop


def test_a_stop_during_a_grouped_fit_keeps_the_curves_already_fitted(law_db: Path) -> None:
    """Stopped after a curve (its bootstrap cut short), the fit returns the curves done and says so."""
    spec = FitSpec(n_bootstrap=0, group_by="depth", x="width", form="offset", stability=False)
    curves = fit_experiment(law_db, None, spec)
    fitted_first: list[int] = []

    def stop_after_first_curve() -> bool:
        return bool(fitted_first)

    original = fitting_module._fit_curve_arrays

    def counting(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)  # type: ignore[arg-type]
        fitted_first.append(1)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fitting_module, "_fit_curve_arrays", counting)
        stopped = fit_experiment(law_db, None, spec, should_stop=stop_after_first_curve)
    assert len(curves.reports) == 2 and not curves.stopped
    assert stopped.stopped and len(stopped.reports) == 1
    assert stopped.reports[0].group == curves.reports[0].group
