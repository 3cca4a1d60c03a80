"""The `fits` table: every fitted law with its evidence and inputs, so the history of a law is queryable.

A fit row keeps the law itself (`law_json`: a `FittedLaw`, the one fit record, which the reader gives
back as one), the headline numbers as columns for plain SQL (the form's name, E, A, alpha, B, beta
where the form has them, the worst held-out error of the largest 1 and 2 sizes left out), and the
evidence as JSON: every candidate form's held-out score, each held-out point, the predictions asked
for, bootstrap intervals, warnings, the exact points that were fitted and the options used, so any
fit can be redone and compared later.

What is stored is read from the fit report through `StorableFit` (services.fitting.FitReport is
one), a protocol of plain data: the store imports nothing above it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlite_utils import Database

from scaletui.core.records import FittedLaw
from scaletui.store.codec import now_iso, to_real

_HEADLINE = ("E", "A", "alpha", "B", "beta")


class StorableFit(Protocol):
    """What the store reads from a fitted curve: the law, where its points came from, its evidence."""

    @property
    def law(self) -> FittedLaw: ...

    @property
    def source(self) -> str: ...  # experiment name or CSV path

    @property
    def x_name(self) -> str: ...  # params | width | ... | steps, a CSV column, or "N,D"

    @property
    def form_text(self) -> str: ...  # the `form` column: "E + A*x^-alpha" (M2, as ever), or the formula

    @property
    def n_sizes(self) -> int: ...  # distinct sizes of the first variable

    @property
    def experiment_id(self) -> int | None: ...

    @property
    def loss_rule(self) -> str | None: ...

    @property
    def group(self) -> str | None: ...  # e.g. "depth=4"

    @property
    def warnings(self) -> tuple[str, ...]: ...

    @property
    def options(self) -> dict[str, Any]: ...

    def stored_points(self) -> dict[str, Sequence[float]]:
        """{"x": [...], "loss": [...]} plus "D" for L(N, D) and "run_ids" for a sweep."""
        ...

    def stored_intervals(self) -> dict[str, tuple[float, float]]: ...

    def stored_scores(self) -> dict[str, dict[str, Any]]:
        """Every candidate form: {"M2": {"heldout_error": .., "heldout_rel_error": .., "n_origins": ..,
        "skipped": null | "why", "chosen": bool}, ...}."""
        ...

    def stored_heldout(self) -> list[dict[str, Any]]:
        """One entry per check: {"left_out": k, "x": [...], ("D": [...],) "predicted", "actual",
        "rel_error", "n", "max_rel_error", "params"}."""
        ...

    def stored_predictions(self) -> list[dict[str, Any]]: ...


def _finite_or_str(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite_or_str(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_str(v) for v in value]
    return value


def _json(value: Any) -> str:
    """JSON text; a non-finite number becomes a string ("nan", "inf"): SQLite's json functions refuse NaN."""
    return json.dumps(_finite_or_str(value), sort_keys=True, allow_nan=False)


def _worst(heldout: Sequence[Mapping[str, Any]], left_out: int) -> float | None:
    errors = [float(e) for h in heldout if h.get("left_out") == left_out for e in h.get("rel_error", [])]
    return max(errors) if errors else None


def fit_row(fit: StorableFit) -> dict[str, Any]:
    """The `fits` row for one fitted law."""
    law, points, heldout = fit.law, fit.stored_points(), fit.stored_heldout()
    row: dict[str, Any] = {
        "created_at": now_iso(), "experiment_id": fit.experiment_id, "source": fit.source, "x": fit.x_name,
        "form": fit.form_text, "form_name": law.form, "loss_rule": fit.loss_rule, "grouping": fit.group,
        "n_points": len(points.get("loss", [])), "n_sizes": fit.n_sizes,
        "objective": to_real(law.objective),
        "heldout_rel_error": to_real(_worst(heldout, 1)), "heldout_rel_error_2": to_real(_worst(heldout, 2)),
        "params_json": _json({k: float(v) for k, v in law.params.items()}),
        "intervals_json": _json({k: [float(lo), float(hi)] for k, (lo, hi) in fit.stored_intervals().items()}),
        "warnings_json": _json(list(fit.warnings)), "inputs_json": _json(points), "options_json": _json(fit.options),
        "law_json": _json(law.to_json()), "scores_json": _json(fit.stored_scores()),
        "heldout_json": _json(heldout), "predictions_json": _json(fit.stored_predictions()),
    }  # fmt: skip
    for name in _HEADLINE:
        row[name] = to_real(law.params.get(name))
    return row


def insert_fit(db: Database, fit: StorableFit) -> int:
    """Append one fit (call inside a write transaction); returns its id."""
    row = fit_row(fit)
    columns = ", ".join(f'"{c}"' for c in row)
    marks = ", ".join("?" for _ in row)
    cursor = db.execute(f"INSERT INTO fits ({columns}) VALUES ({marks})", list(row.values()))
    return int(cursor.lastrowid or 0)
