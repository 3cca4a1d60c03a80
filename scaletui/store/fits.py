"""The `fits` table: every fitted law with its inputs, so the history of a law is queryable.

A fit row keeps the headline numbers as columns (E, A, alpha, B, beta, held-out
errors) for plain SQL, and everything else as JSON: all parameters, bootstrap
intervals, warnings, the exact points that were fitted and the options used,
so any fit can be redone and compared later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from scaletui.records import FitResult
from scaletui.store.codec import now_iso, to_real

_HEADLINE = ("E", "A", "alpha", "B", "beta")


@dataclass(frozen=True)
class FitInputs:
    """Where a fit's points came from and how it was made."""

    source: str  # experiment name or CSV path
    x: Sequence[float]
    loss: Sequence[float]
    experiment_id: int | None = None
    loss_rule: str | None = None
    grouping: str | None = None  # e.g. "depth=4"
    run_ids: Sequence[int] = ()
    extra_x: Mapping[str, Sequence[float]] = field(default_factory=dict)  # e.g. {"D": [...]} for L(N, D)
    options: Mapping[str, Any] = field(default_factory=dict)


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_finite_or_str)


def fit_row(result: FitResult, inputs: FitInputs) -> dict[str, Any]:
    """The `fits` row for one fitted law."""
    points: dict[str, Any] = {"x": list(map(float, inputs.x)), "loss": list(map(float, inputs.loss))}
    points.update({k: list(map(float, v)) for k, v in inputs.extra_x.items()})
    if inputs.run_ids:
        points["run_ids"] = list(map(int, inputs.run_ids))
    row: dict[str, Any] = {
        "created_at": now_iso(), "experiment_id": inputs.experiment_id, "source": inputs.source,
        "x": result.x, "form": result.form, "loss_rule": inputs.loss_rule, "grouping": inputs.grouping,
        "n_points": result.n_points, "n_sizes": len(set(map(float, inputs.x))),
        "objective": to_real(result.loss),
        "heldout_rel_error": to_real(result.heldout_rel_error),
        "heldout_rel_error_2": to_real(result.heldout_rel_error_2),
        "params_json": _json({k: float(v) for k, v in result.params.items()}),
        "intervals_json": _json({k: [float(lo), float(hi)] for k, (lo, hi) in result.intervals.items()}),
        "warnings_json": _json(list(result.warnings)),
        "inputs_json": _json(points), "options_json": _json(dict(inputs.options)),
    }  # fmt: skip
    for name in _HEADLINE:
        row[name] = to_real(result.params.get(name))
    return row


def insert_fit(db: Database, result: FitResult, inputs: FitInputs) -> int:
    """Append one fit (call inside a write transaction); returns its id."""
    row = fit_row(result, inputs)
    columns = ", ".join(f'"{c}"' for c in row)
    marks = ", ".join("?" for _ in row)
    cursor = db.execute(f"INSERT INTO fits ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0)
