"""Alerts are synced (insert, update, deactivate) and fits are stored with their inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scaletui.records import Alert, FitResult, LossRule
from scaletui.store import Reader, Store
from scaletui.store.alerts import alert_row_to_record, alert_subject
from scaletui.store.fits import FitInputs

from tests.store.conftest import make_spec


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
    assert [(a["kind"], a["step"]) for a in active] == [("plateau", 300)]
    assert {a["kind"]: a["active"] for a in everything} == {"plateau": 1, "overfitting": 0}
    assert cursor == max(a["rev"] for a in everything) and len(changed) == 2


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


def test_fit_stored_with_inputs_and_queryable_columns(tmp_path: Path) -> None:
    store, exp = _store(tmp_path)
    result = FitResult("E + A*x^-alpha", "params", {"E": 0.5, "A": 10.0, "alpha": 0.3},
                       {"alpha": (0.25, 0.35)}, n_points=4, loss=1e-4, heldout_rel_error=0.02)
    inputs = FitInputs("exp", [1e3, 1e4, 1e5, 1e6], [2.0, 1.5, 1.0, 0.8], exp, "final", "depth=2", [1, 2, 3, 4])
    with store:
        fit_id = store.add_fit(result, inputs)
        with Reader(store.path) as reader:
            (row,) = reader.fits("exp", x="params")
            assert reader.fits("exp", x="width") == []
    assert row["id"] == fit_id and row["alpha"] == 0.3 and row["B"] is None and row["n_sizes"] == 4
    assert json.loads(row["intervals_json"]) == {"alpha": [0.25, 0.35]}
    assert json.loads(row["inputs_json"])["run_ids"] == [1, 2, 3, 4]
    assert row["heldout_rel_error"] == 0.02 and row["heldout_rel_error_2"] is None
