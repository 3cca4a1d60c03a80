"""Alerts are synced (insert, update, deactivate) and fits are stored with their inputs."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.records import Alert, FittedLaw
from scaletui.core.vocabulary import LossRule
from scaletui.store import Reader, Store
from scaletui.store.alerts import alert_row_to_record, alert_subject
from tests.store.conftest import make_spec
from tests.store.old_schema import store_of_schema


def _store(tmp_path: Path) -> tuple[Store, int]:
    """A store with experiment "exp" and runs 1..4 (alerts and fits reference real rows)."""
    store = Store(tmp_path / "s.db")
    exp = store.upsert_experiment("exp", None, None, LossRule.FINAL)
    store.register_runs(exp, [make_spec(width=w) for w in (8, 16, 32, 64)], fresh=False)
    return store, exp


def _alert(kind: str = "plateau", run_id: int | None = 1, step: int | None = 100, **evidence: float) -> Alert:
    return Alert(kind, "warning", step, f"{kind} seen", "do something", dict(evidence), run_id)


def test_group_subject_names_the_sizes_compared() -> None:
    alert = _alert("non_monotonic", None, None, width=64, depth_small=2, depth_large=4, loss_small=1.0)
    assert alert_subject(alert) == "width=64,depth_large=4"
    assert alert_subject(_alert(run_id=7)) == "run:7"


def test_sync_inserts_updates_and_deactivates(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    with store:
        assert store.sync_alerts(exp, [_alert("plateau"), _alert("overfitting", ratio=2.0)]) == 2
        assert store.sync_alerts(exp, [_alert("plateau"), _alert("overfitting", ratio=2.0)]) == 0
        assert store.sync_alerts(exp, [_alert("plateau", step=300)]) == 2  # plateau moved, overfitting gone
        with Reader(store.path) as reader:
            active = reader.alerts("exp")
            everything = reader.alerts("exp", active_only=False)
            cursor, changed = reader.alerts_since(0)
    assert [(a.kind, a.step) for a in active] == [("plateau", 300)]
    assert {a.kind: a.active for a in everything} == {"plateau": 1, "overfitting": 0}
    assert cursor == max(a.rev for a in everything) and len(changed) == 2


def test_subject_with_no_alerts_left_is_cleared(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    with store:
        store.sync_alerts(exp, [_alert("divergence", run_id=3)])
        assert len(store.db.execute("SELECT * FROM alerts").fetchall()) == 1
        store.sync_alerts(exp, [], subjects=["run:3"])
        with Reader(store.path) as reader:
            assert reader.alerts() == []


def test_evidence_round_trips_including_infinity(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    with store:
        store.sync_alerts(exp, [_alert("divergence", ratio=math.inf, loss=2.5)])
        with Reader(store.path) as reader:
            record = alert_row_to_record(reader.alerts()[0])
    assert record.evidence == {"ratio": math.inf, "loss": 2.5} and record.run_id == 1


@dataclass(frozen=True)
class StoredFit:
    """A fit as the store sees it (`scaletui.store.fits.StorableFit`): plain data, no numpy."""

    law: FittedLaw
    source: str = "exp"
    x_name: str = "params"
    form_text: str = "E + A*x^-alpha"
    n_sizes: int = 4
    experiment_id: int | None = None
    loss_rule: str | None = "final"
    group: str | None = "depth=2"
    warnings: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    points: dict[str, Sequence[float]] = field(default_factory=dict)
    heldout: list[dict[str, Any]] = field(default_factory=list)

    def stored_points(self) -> dict[str, Sequence[float]]:
        return self.points

    def stored_intervals(self) -> dict[str, tuple[float, float]]:
        return {"alpha": (0.25, 0.35)}

    def stored_scores(self) -> dict[str, dict[str, Any]]:
        return {"M2": {"heldout_error": 0.01, "chosen": True}, "M4": {"skipped": "too few sizes", "chosen": False}}

    def stored_heldout(self) -> list[dict[str, Any]]:
        return self.heldout

    def stored_predictions(self) -> list[dict[str, Any]]:
        return [{"x": 1e7, "value": 0.7, "lo": 0.6, "hi": 0.8}]


LAW = FittedLaw("M2", {"E": 0.5, "A": 10.0, "alpha": 0.3}, ("params",), (1e3, 1e6), 4, "log", 0.01, 1e-4)


def test_fit_stored_with_inputs_and_queryable_columns(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    fit = StoredFit(LAW, experiment_id=exp, points={"x": [1e3, 1e4, 1e5, 1e6], "loss": [2.0, 1.5, 1.0, 0.8],
                                                      "run_ids": [1, 2, 3, 4]},
                    heldout=[{"left_out": 1, "x": [1e6], "rel_error": [0.02]}], warnings=("w",))
    with store:
        fit_id = store.add_fit(fit)
        with Reader(store.path) as reader:
            (row,) = reader.fits("exp", x="params")
            assert reader.fits("exp", x="width") == []
    assert row.id == fit_id and row.params["alpha"] == 0.3 and "B" not in row.params and row.n_sizes == 4
    assert row.law == LAW and row.form == "E + A*x^-alpha" and row.n_points == 4
    assert row.intervals == {"alpha": (0.25, 0.35)}
    assert row.inputs["run_ids"] == [1, 2, 3, 4]
    assert row.heldout_rel_error == 0.02 and row.heldout_rel_error_2 is None
    assert row.heldout == ({"left_out": 1, "x": [1e6], "rel_error": [0.02]},) and row.warnings == ("w",)
    assert row.scores["M4"]["skipped"] == "too few sizes" and row.predictions[0]["x"] == 1e7
    with sqlite3.connect(store.path) as conn:  # the headline columns plain SQL reads
        headline = conn.execute("SELECT alpha, B, form_name FROM fits WHERE id = ?", [fit_id]).fetchone()
        assert headline == (0.3, None, "M2")
        # JSON columns hold plain JSON (no NaN or Infinity tokens), so SQLite's json functions read them
        assert conn.execute("SELECT json_extract(law_json, '$.params.alpha') FROM fits").fetchone() == (0.3,)


def test_a_law_with_non_finite_numbers_is_stored_as_valid_json(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    law = FittedLaw("M1", {"A": 2.0, "alpha": 0.5}, ("x",), (1.0, 8.0), 3, "log", math.inf, math.nan)
    with store:
        store.add_fit(StoredFit(law, experiment_id=exp, points={"x": [1.0, 2.0, 8.0], "loss": [2.0, 1.4, 0.7]},
                                n_sizes=3))
        with Reader(store.path) as reader:
            (row,) = reader.fits()
    assert row.law.delta == math.inf and math.isnan(row.law.objective) and row.objective is None
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT json_valid(law_json) FROM fits").fetchone() == (1,)


def test_a_fit_stored_before_laws_had_a_record_still_reads_as_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A database of schema v3 (fits without law_json) is migrated by the next writer; its fits keep
    reading: the law rebuilt from the form text and parameters, the held-out points from options_json."""
    path = tmp_path / "v3.db"
    with store_of_schema(monkeypatch, path, 3) as store:  # what the release before fit forms created
        exp = store.upsert_experiment("exp", None, None, LossRule.FINAL)
    with sqlite3.connect(path) as conn:
        assert "law_json" not in {r[1] for r in conn.execute("PRAGMA table_info(fits)")}
        conn.execute(
            "INSERT INTO fits (created_at, experiment_id, source, x, form, n_points, n_sizes, E, A, alpha, objective,"
            " params_json, intervals_json, warnings_json, inputs_json, options_json) VALUES"
            " ('2025-01-01T00:00:00Z', ?, 'exp', 'params', 'E + A*x^-alpha', 4, 4, 0.5, 10.0, 0.3, 1e-4,"
            " '{\"E\": 0.5, \"A\": 10.0, \"alpha\": 0.3}', '{}', '[]', '{\"x\": [1000.0, 1000000.0]}',"
            " '{\"delta\": 0.001, \"heldout\": [{\"left_out\": 1, \"x\": [1000000.0]}]}')", [exp])
    with Store(path) as store:
        store.add_fit(StoredFit(LAW, experiment_id=exp, points={"x": [1e3, 1e6], "loss": [2.0, 0.8]}))
    with Reader(path) as reader:
        old_row, new_row = reader.fits()
    assert old_row.law == FittedLaw("M2", {"E": 0.5, "A": 10.0, "alpha": 0.3}, ("params",), (1e3, 1e6), 4, "log",
                                    1e-3, 1e-4)
    assert old_row.heldout == ({"left_out": 1, "x": [1e6]},) and old_row.scores == {} and old_row.predictions == ()
    assert new_row.law == LAW
