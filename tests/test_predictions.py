"""The predictions ledger on real SQLite files: recorded before a size is trained, scored once after.

The sweeps are tests/fitdb.py's: runs on a known law (E + A * params^-alpha), registered and finished
through the store's own writers, so the fits read what a sweep writes. The size to predict (width 128)
is trained later, into the same experiment, exactly as a follow-up sweep would add it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from scaletui.core.vocabulary import LossRule, PredictionStatus, RunStatus
from scaletui.services.predictions import (
    PredictError,
    ledger,
    plan_diff,
    record_prediction,
    score_predictions,
    target_size,
)
from scaletui.store import Reader, Store
from tests import fitdb

SMALL = (8, 16, 32, 64, 96)
NEXT = 128


def _law(width: int) -> float:
    """The known law's final loss at `width` (depth 1), averaged over fitdb's two seeds."""
    n = fitdb.params_of(width, 1)
    return sum(fitdb.loss_at(n, fitdb.EVAL_STEPS[-1], s) for s in (0, 1)) / 2


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return fitdb.fill(tmp_path / "sweep.db", fitdb.plan(widths=SMALL))


def _predict(db: Path, width: int = NEXT, **kw: object) -> object:
    return record_prediction(db, "law", width, 1, params=fitdb.params_of(width, 1), n_bootstrap=200, **kw)


def test_a_prediction_is_recorded_open_with_the_law_and_its_band(db: Path) -> None:
    p = _predict(db)
    assert p.status is PredictionStatus.OPEN and p.truth is None
    assert (p.width, p.depth, p.x) == (NEXT, 1, fitdb.params_of(NEXT, 1))
    assert p.predicted == pytest.approx(_law(NEXT), rel=0.02)  # the law it was fitted on
    assert p.lo is not None and p.hi is not None and p.lo <= p.predicted <= p.hi
    assert p.curve == "depth=1" and p.form == p.law.form
    assert len(p.inputs["run_ids"]) == 2 * len(SMALL) and len(p.plan["hashes"]) == 1
    with Reader(db) as reader:
        assert [q.id for q in reader.predictions("law", status=PredictionStatus.OPEN)] == [p.id]


def test_training_the_size_scores_it_once(db: Path) -> None:
    p = _predict(db)
    assert score_predictions(db) == []  # nothing of that size yet: stays open
    fitdb.fill(db, fitdb.plan(widths=(NEXT,)))
    [scored] = score_predictions(db)
    assert scored.id == p.id and scored.status is PredictionStatus.SCORED
    assert scored.truth == pytest.approx(_law(NEXT), rel=1e-9) and scored.n_truth == 2
    assert scored.error == pytest.approx((p.predicted - scored.truth) / scored.truth)
    assert scored.inside is (p.lo <= scored.truth <= p.hi)
    assert score_predictions(db) == []  # closed once: a second pass changes nothing
    with Reader(db) as reader:
        [again] = reader.predictions("law")
    assert (again.truth, again.scored_at) == (scored.truth, scored.scored_at)


def test_a_size_still_training_keeps_its_prediction_open(db: Path) -> None:
    _predict(db)
    fitdb.fill(db, fitdb.plan(widths=(NEXT,), seeds=(0,)))
    with Store(db) as store:  # the second seed is registered but not finished
        exp_id = store.experiment_id("law")
        assert exp_id is not None
        store.register_runs(exp_id, [fitdb.spec(fitdb.Planned(NEXT, 1, 1), "law")], fresh=False)
    assert score_predictions(db) == []
    with Reader(db) as reader:
        assert reader.predictions("law")[0].status is PredictionStatus.OPEN


def test_runs_under_another_plan_leave_it_unscorable_and_say_what_changed(db: Path, monkeypatch:
                                                                         pytest.MonkeyPatch) -> None:
    _predict(db)
    longer = fitdb.spec

    def with_more_steps(p: fitdb.Planned, experiment: str) -> object:
        s = longer(p, experiment)
        return replace(s, train=replace(s.train, steps=1000))

    monkeypatch.setattr(fitdb, "spec", with_more_steps)
    fitdb.fill(db, fitdb.plan(widths=(NEXT,)))
    [closed] = score_predictions(db)
    assert closed.status is PredictionStatus.UNSCORABLE and closed.truth is None
    assert "train.steps 500 -> 1000" in (closed.note or "")


def test_a_changed_loss_rule_leaves_it_unscorable(db: Path) -> None:
    _predict(db)
    fitdb.fill(db, fitdb.plan(widths=(NEXT,)), loss_rule=LossRule.BEST)  # the experiment now ranks by best
    [closed] = score_predictions(db)
    assert closed.status is PredictionStatus.UNSCORABLE and "final -> best" in (closed.note or "")


def test_diverged_runs_are_left_out_of_the_truth_and_counted(db: Path) -> None:
    _predict(db)
    fitdb.fill(db, fitdb.plan(widths=(NEXT,), diverged=[(NEXT, 1, 1)]))
    [scored] = score_predictions(db)
    assert scored.status is PredictionStatus.SCORED and scored.n_truth == 1
    assert scored.truth == pytest.approx(fitdb.loss_at(fitdb.params_of(NEXT, 1), fitdb.EVAL_STEPS[-1], 0))
    assert scored.note == "1 of 2 run(s) diverged or had no loss, left out"


def test_a_trained_size_and_a_far_size_are_refused(db: Path) -> None:
    with pytest.raises(PredictError, match="already trained"):
        _predict(db, width=64)
    with pytest.raises(PredictError, match="beyond the sizes the law was fitted on"):
        _predict(db, width=4096)  # 1,600x the parameters of width 96
    with Reader(db) as reader:
        assert reader.predictions() == []  # nothing half-written


def test_the_track_record_summarises_scored_predictions(db: Path) -> None:
    _predict(db)
    fitdb.fill(db, fitdb.plan(widths=(NEXT,)))
    record = ledger(db, "law")
    [p] = record.scored
    assert record.median_abs_error == pytest.approx(abs(p.error or 0.0))
    assert record.band_held == (int(bool(p.inside)), 1)


def test_an_untrained_size_is_counted_without_torch(tmp_path: Path) -> None:
    from scaletui.analysis.configurator import mlp_params

    db = fitdb.fill(tmp_path / "s.db", fitdb.plan(widths=(8, 16)))
    with Reader(db) as reader:
        runs = reader.runs("law")
        assert target_size(reader, runs, 16, 1, None).params == fitdb.params_of(16, 1)  # read from its runs
        assert target_size(reader, runs, 300, 2, None).params == mlp_params(40, 300, 2, 10)  # mnist1d: 40 in
        with pytest.raises(PredictError, match="positive"):
            target_size(reader, runs, 0, 2, None)


def test_plan_diff_names_nested_keys() -> None:
    assert plan_diff({"train": {"steps": 1, "lr": 2}}, {"train": {"steps": 3, "lr": 2}}) == ["train.steps 1 -> 3"]


def test_the_ledger_is_plain_sql(db: Path) -> None:
    p = _predict(db)
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT width, depth, status, round(predicted, 6) FROM predictions").fetchone()
    assert row == (NEXT, 1, "open", round(p.predicted, 6))


def test_a_prediction_needs_finished_runs(tmp_path: Path) -> None:
    db = fitdb.fill(tmp_path / "d.db", fitdb.plan(widths=SMALL, diverged=[(w, 1, s) for w in SMALL for s in (0, 1)]))
    with pytest.raises(PredictError, match="no finished runs"):
        _predict(db)
    assert RunStatus.DIVERGED in {r.status for r in Reader(db).runs("law")}
