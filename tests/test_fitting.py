"""The glue between the store and the fits, on a real database of runs that follow a known law.

tests/fitdb.py writes the runs through Store/StoreSink: final test loss = 0.3 + 40 * params^-0.5
(+ a drift that vanishes with training, times a per-seed factor of at most 0.4%), so every
fit below has a known answer.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from scaletui.analysis.powerlaw import Form
from scaletui.fitting import (
    FitInputError,
    FitReport,
    FitSpec,
    describe_heldout,
    fit_csv,
    fit_experiment,
    gather,
    loss_at_steps,
    run_x,
    save_reports,
)
from scaletui.records import LossRule
from scaletui.store import Reader
from tests.fitdb import ALPHA, DRIFT, EVAL_STEPS, E, fill, params_of, plan

QUICK = FitSpec(n_bootstrap=40)


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
    assert report.fit.alpha == pytest.approx(ALPHA, abs=0.01)
    assert report.fit.E == pytest.approx(E + DRIFT / EVAL_STEPS[-1], abs=0.005)
    lo, hi = report.boot.intervals["alpha"]
    assert lo < report.fit.alpha < hi
    assert report.check.leave_one.rel_error[0] < 0.01 and report.check.leave_two.max_rel_error < 0.01
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
    assert report.boot is None and report.result.intervals == {}


def replace_spec(**changes: object) -> FitSpec:
    from dataclasses import replace

    return replace(QUICK, **changes)


def test_grouping_fits_one_curve_per_depth(law_db: Path) -> None:
    result = fit_experiment(law_db, None, replace_spec(x="width", group_by="depth"))
    assert [r.group for r in result.reports] == ["depth=1", "depth=2"]
    assert [r.n_diverged for r in result.reports] == [0, 1]  # the diverged run is counted in its own curve
    for r in result.reports:  # params = 100 w^2 d: in width the exponent doubles
        assert r.fit.alpha == pytest.approx(2 * ALPHA, abs=0.02)


def test_flops_are_forward_flops_times_examples_seen(law_db: Path) -> None:
    row = {"flops_per_example": 10, "step": 500, "params": 5}
    assert run_x("flops", row, {"batch_size": 32}) == 10 * 500 * 32
    assert run_x("flops", row, {"batch_size": 32}, step=100) == 10 * 100 * 32
    (report,) = fit_experiment(law_db, None, replace_spec(x="flops")).reports
    assert report.fit.alpha == pytest.approx(ALPHA, abs=0.01)  # flops = 2 params x 500 x 32: same exponent


def test_x_steps_fits_the_test_loss_series(tmp_path: Path) -> None:
    db = fill(tmp_path / "steps.db", plan(widths=(8, 16), seeds=(0,)))
    reports = fit_experiment(db, None, replace_spec(x="steps", group_by="width")).reports
    assert [r.group for r in reports] == ["width=8", "width=16"]
    for r, width in zip(reports, (8, 16)):  # one run per curve: loss(t) = its floor + DRIFT / t
        assert r.n_sizes == len(EVAL_STEPS) - 1 and r.stability is None
        assert r.fit.alpha == pytest.approx(1.0, abs=1e-3) and r.fit.A == pytest.approx(DRIFT, rel=1e-3)
        assert r.fit.E == pytest.approx(E + 40.0 * params_of(width, 1) ** -ALPHA, rel=1e-3)


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
    (report,) = fit_experiment(law_db, None, replace_spec(form=Form.POWER, stability=False)).reports
    assert "E" not in report.fit.params and report.form is Form.POWER


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
    assert row["id"] == saved.fit_id and row["loss_rule"] == "final" and row["n_sizes"] == 10
    assert row["alpha"] == pytest.approx(saved.fit.alpha) and row["heldout_rel_error"] < 0.01
    inputs = json.loads(row["inputs_json"])
    assert len(inputs["x"]) == len(inputs["run_ids"]) == 19
    assert json.loads(row["options_json"])["n_bootstrap"] == 40
    assert json.loads(row["intervals_json"])["alpha"][0] < saved.fit.alpha


def test_report_json_is_plain_json(law_db: Path) -> None:
    (report,) = fit_experiment(law_db, None, QUICK).reports
    doc = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert doc["params"]["alpha"] == pytest.approx(report.fit.alpha)
    assert doc["heldout"][0]["left_out"] == 1 and doc["stability"]["stable"] is True


# ----------------------------------------------------------------------------- CSV files


def law_rows(sizes: tuple[float, ...] = (1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6), scale: float = 1.0,
             noise: tuple[float, ...] = (1.01, 0.99, 1.004, 0.996, 1.008, 0.993)) -> list[tuple[float, float]]:
    """(x, loss) on the law 0.3 + 40 x^-0.5 (times `scale`), with a fixed wobble so a bootstrap has spread."""
    return [(x, scale * (0.3 + 40 * x**-0.5) * w) for x, w in zip(sizes, noise)]


def test_csv_rows_split_by_a_column_give_one_law_each_and_skip_what_cannot_be_fitted(tmp_path: Path) -> None:
    csv = tmp_path / "curves.csv"
    lines = [f"small,{x},{y}" for x, y in law_rows()] + [f"large,{x},{y}" for x, y in law_rows(scale=0.5)]
    csv.write_text("model,n,loss\n" + "\n".join(lines + ["tiny,1000,3.0", "tiny,1000,3.1"]) + "\n")
    result = fit_csv(csv, x="n", y="loss", spec=replace_spec(group_by="model", n_bootstrap=0))
    assert [r.group for r in result.reports] == ["model=small", "model=large"]
    small, large = result.reports
    assert small.fit.alpha == pytest.approx(0.5, abs=0.05) and large.fit.alpha == pytest.approx(0.5, abs=0.05)
    assert large.fit.A == pytest.approx(small.fit.A / 2, rel=0.2)
    assert small.loss.size == large.loss.size == 6
    (skipped,) = result.skipped
    assert skipped.startswith(f"{csv} (model=tiny): only 1 distinct value(s) of x")
    assert small.inputs().grouping == "model=small" and small.options["group_by"] == "model"


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
        lo, hi = report.boot.intervals["alpha"]
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
    (report,) = fit_csv(csv, x="N", y="loss", d="D", spec=replace_spec(n_bootstrap=0)).reports
    leave_one = report.to_json()["heldout"][0]
    assert leave_one["x"] == [3e9, 3e9] and leave_one["D"] == pytest.approx([3e11, 1.2e12])
    assert leave_one["actual"] == pytest.approx([y for n, _, y in rows if n == 3e9])  # each point its own loss
    assert len(leave_one["rel_error"]) == 2 and leave_one["n"] == [1, 1]
    save_reports(tmp_path / "fits.db", [report])
    with sqlite3.connect(tmp_path / "fits.db") as conn:
        options, err = conn.execute("SELECT options_json, heldout_rel_error FROM fits").fetchone()
    stored = json.loads(options)["heldout"]
    assert stored[0]["D"] == pytest.approx([3e11, 1.2e12]) and stored[0]["actual"] == pytest.approx(leave_one["actual"])
    assert err == pytest.approx(max(leave_one["rel_error"]))
    lines = describe_heldout(report.check)
    assert lines[0].startswith("largest 1 left out: N=3e+09, D=3e+11: predicted ")
    assert lines[1].startswith("largest 1 left out: N=3e+09, D=1.2e+12: predicted ")
