"""The `predictions` table: next-size predictions, recorded before the runs exist and scored after.

A prediction is written once (`insert_prediction`) with everything needed to judge it later: the law
(`law_json`, the same record as `fits.law_json`; for a running run's final loss, the ratio law's
coefficients in `inputs_json`), its inputs, and the training plans it was fitted under.
Scoring (`score_prediction`) fills the truth columns in place exactly once: an entry goes from
`open` to `scored` or `unscorable` and never back, so the ledger is an honest track record (a bad
prediction cannot be quietly re-predicted over). What to score against is decided above the store
(services.predictions); this module only writes rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from scaletui.core.records import FittedLaw
from scaletui.core.vocabulary import PredictionKind, PredictionSource, PredictionStatus
from scaletui.store.codec import now_iso, to_real


@dataclass(frozen=True)
class NewPrediction:
    """What a prediction is recorded with (see core.rows.PredictionRow for the meaning of each field)."""

    experiment_id: int
    source: PredictionSource
    width: int | None
    depth: int | None
    x_name: str
    x: float
    curve: str | None
    loss_rule: str
    predicted: float
    lo: float | None
    hi: float | None
    level: float | None
    law: FittedLaw | None  # None for a curve prediction (its law is in inputs)
    plan: dict[str, Any]
    inputs: dict[str, Any]
    kind: PredictionKind = PredictionKind.SIZE
    run_id: int | None = None  # kind curve: the run, the step predicted from, its planned last step
    at_step: int | None = None
    steps: int | None = None
    form: str | None = None  # the law's form unless a law is given


@dataclass(frozen=True)
class PredictionScore:
    """The outcome of scoring one open prediction."""

    status: PredictionStatus
    truth: float | None = None
    n_truth: int | None = None
    error: float | None = None
    inside: bool | None = None
    note: str | None = None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


def insert_prediction(db: Database, p: NewPrediction) -> int | None:
    """Append one open prediction (call inside a write transaction); returns its id, or None when a
    curve prediction of that run and step exists already (a resumed run evaluating a step again)."""
    if not math.isfinite(p.predicted):
        raise ValueError(f"a prediction must be a finite loss, got {p.predicted}")
    form = p.law.form if p.law is not None else p.form
    if form is None:
        raise ValueError("a prediction needs its law or the name of its form")
    row = {
        "experiment_id": p.experiment_id, "created_at": now_iso(), "kind": PredictionKind(p.kind).value,
        "source": PredictionSource(p.source).value, "run_id": p.run_id, "at_step": p.at_step, "steps": p.steps,
        "width": p.width, "depth": p.depth, "x_name": p.x_name, "x": float(p.x), "curve": p.curve,
        "form": form, "loss_rule": p.loss_rule, "predicted": float(p.predicted), "lo": to_real(p.lo),
        "hi": to_real(p.hi), "level": p.level, "status": PredictionStatus.OPEN.value,
        "law_json": None if p.law is None else _json(p.law.to_json()), "plan_json": _json(p.plan),
        "inputs_json": _json(p.inputs),
    }  # fmt: skip
    columns = ", ".join(f'"{c}"' for c in row)
    marks = ", ".join("?" for _ in row)
    cursor = db.execute(f"INSERT OR IGNORE INTO predictions ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0) if cursor.rowcount else None


def score_prediction(db: Database, prediction_id: int, score: PredictionScore) -> bool:
    """Record the outcome of an open prediction (inside a write transaction). Returns False when it was
    no longer open (another process scored it first): a prediction is scored once."""
    if score.status is PredictionStatus.OPEN:
        raise ValueError("scoring must close a prediction: scored or unscorable")
    cursor = db.execute(
        "UPDATE predictions SET status = ?, truth = ?, n_truth = ?, error = ?, inside = ?, note = ?, scored_at = ?"
        " WHERE id = ? AND status = ?",
        [score.status.value, to_real(score.truth), score.n_truth, to_real(score.error),
         None if score.inside is None else int(score.inside), score.note, now_iso(), prediction_id,
         PredictionStatus.OPEN.value],
    )
    return bool(cursor.rowcount)
