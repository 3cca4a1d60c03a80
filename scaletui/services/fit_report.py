"""A fitted curve's report: the law plus its evidence, as the CLI prints it, the store keeps it and the app draws it.

`FitReport` is what `scaletui.services.fitting` returns for each curve: the chosen (or forced) law
(`FittedLaw`, the one fit record) with every candidate form's held-out error, the bootstrap, the
prediction band, the predictions asked for, the per-point held-out checks, monotonicity, stability and
warnings. It satisfies `scaletui.store.fits.StorableFit`, so the store persists it as it is, and
`to_json` is the `--json` output. `describe_heldout` / `describe_stability` are its plain-text lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scaletui.analysis.checks import Monotonicity
from scaletui.analysis.forms import FittedLaw, form
from scaletui.analysis.heldout import HeldOut, HeldOutReport
from scaletui.analysis.select import Band, FormScore, size_levels
from scaletui.analysis.solve import Bootstrap
from scaletui.analysis.stability import Stability
from scaletui.core.rows import LEGACY_FORMS

__all__ = [
    "BY_DEFAULT",
    "BY_HELDOUT",
    "CHOSEN_BY",
    "FAR_BEYOND",
    "FORCED",
    "FORM_TEXTS",
    "ONLY_FORM",
    "FitReport",
    "Point",
    "Prediction",
    "describe_heldout",
    "describe_stability",
    "percent_text",
    "point_text",
    "summarise_points",
]

#: How a report's form was picked: by the user, by held-out error among several, as the only form that
#: could be fitted (L(N, D) has one), or taken without a comparison (too few sizes to leave any out).
FORCED, BY_HELDOUT, ONLY_FORM, BY_DEFAULT = ("forced", "held-out error", "the only form that could be fitted",
                                             "default (too few sizes to compare forms)")
CHOSEN_BY = (FORCED, BY_HELDOUT, ONLY_FORM, BY_DEFAULT)
#: The `form` text of the laws scaletui fitted before forms were chosen (see core.rows.LEGACY_FORMS).
FORM_TEXTS: dict[str, str] = {name: text for text, name in LEGACY_FORMS.items()}
#: A prediction this many times beyond the largest fitted size is flagged loudly (the form is assumed
#: to hold that far; the band grows with the distance, but only as fast as the held-out errors did).
FAR_BEYOND = 100.0


@dataclass(frozen=True)
class Point:
    """Mean loss and spread over the runs (seeds) at one x."""

    x: float
    mean: float
    sd: float  # sample sd over runs (ddof=1); NaN for a single run
    lo: float
    hi: float
    n: int


def summarise_points(x: np.ndarray, loss: np.ndarray) -> tuple[Point, ...]:
    """One `Point` per distinct x, ascending."""
    out = []
    for xv in np.unique(x):
        v = loss[x == xv]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out.append(Point(float(xv), float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size)))
    return tuple(out)


@dataclass(frozen=True)
class Prediction:
    """The law at one point (`at`: (x,), or (N, D)) with its band at `level` (NaN without a bootstrap).
    beyond: the point's first variable over the largest fitted size (above 1: an extrapolation)."""

    at: tuple[float, ...]
    value: float
    lo: float
    hi: float
    level: float
    beyond: float

    @property
    def far(self) -> bool:
        return self.beyond > FAR_BEYOND


@dataclass(frozen=True)
class FitReport:
    """A law plus its evidence: one fitted curve, as the CLI prints it, the store keeps it and the app draws it.

    law: the chosen (or forced) law, the one fit record. scores: every candidate form's held-out error
    (`analysis.select.FormScore`), side by side; chosen_by: how the form was picked (`CHOSEN_BY`). boot: the
    group bootstrap (intervals: `intervals`); band: the calibrated prediction band on a grid over the
    data's range and out to the predictions (x ascending), for plots; predictions: what `FitSpec.predict` asked for.
    heldout: the largest 1 and 2 sizes left out, point by point. warnings: every reason not to trust
    the law, one line each (the law's own identifiability warnings are also in `law.warnings`).
    """

    source: str  # experiment name or CSV path
    x_name: str
    loss_label: str | None  # e.g. "final test loss"; None for CSV fits
    group: str | None  # e.g. "depth=4"
    law: FittedLaw
    xs: tuple[np.ndarray, ...]  # x, or (N, D) for the two-variable law
    loss: np.ndarray
    run_ids: tuple[int, ...]
    points: tuple[Point, ...]
    scores: tuple[FormScore, ...]
    chosen_by: str
    boot: Bootstrap | None
    band: Band | None
    predictions: tuple[Prediction, ...]
    heldout: HeldOutReport
    monotonicity: Monotonicity | None
    stability: Stability | None
    warnings: tuple[str, ...]
    level: float = 0.9
    n_diverged: int = 0
    experiment_id: int | None = None
    loss_rule: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fit_id: int | None = None
    resample_unit: str = ""  # what the bootstrap drew: "10 sizes", "rows", "6 values of 'seed'"

    @property
    def forced(self) -> bool:
        return self.chosen_by == FORCED

    @property
    def formula(self) -> str:
        return form(self.law.form).formula

    @property
    def form_text(self) -> str:
        """`--json`'s "form" and the fits table's `form`: for M1, M2 and CHINCHILLA the text they always had
        ("E + A*x^-alpha"; scripts and queries rely on it), for the other forms their formula."""
        return FORM_TEXTS.get(self.law.form, self.formula)

    @property
    def n_points(self) -> int:
        """Rows of the curve (exact duplicate rows included; the law counts each distinct row once)."""
        return int(self.loss.size)

    @property
    def n_sizes(self) -> int:
        """Distinct sizes of the first variable (sizes closer than select.SAME_SIZE count once)."""
        return int(np.unique(size_levels(self.xs[0])).size)

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """Bootstrap percentile interval of every parameter at `level` (empty without a bootstrap)."""
        if self.boot is None or self.boot.n_done == 0:
            return {}
        return {name: self.boot.interval(name, self.level) for name in self.boot.names}

    @property
    def std_errors(self) -> dict[str, float]:
        if self.boot is None or self.boot.n_done < 2:
            return {}
        return {name: float(np.std(self.boot.samples[:, j], ddof=1)) for j, name in enumerate(self.boot.names)}

    @property
    def score(self) -> FormScore | None:
        """The chosen form's score."""
        return next((s for s in self.scores if s.form == self.law.form), None)

    # what the store keeps (scaletui.store.fits.StorableFit)

    def stored_points(self) -> dict[str, Sequence[float]]:
        points: dict[str, Sequence[float]] = {"x": self.xs[0].tolist(), "loss": self.loss.tolist()}
        if len(self.xs) == 2:
            points["D"] = self.xs[1].tolist()
        if self.run_ids:
            points["run_ids"] = [int(i) for i in self.run_ids]
        return points

    def stored_intervals(self) -> dict[str, tuple[float, float]]:
        return self.intervals

    def stored_scores(self) -> dict[str, dict[str, Any]]:
        return {s.form: _score_json(s, s.form == self.law.form) for s in self.scores}

    def stored_heldout(self) -> list[dict[str, Any]]:
        return [_heldout_json(h) for h in self.heldout.checks]

    def stored_predictions(self) -> list[dict[str, Any]]:
        return [_prediction_json(p) for p in self.predictions]

    def to_json(self) -> dict[str, Any]:
        """A plain, JSON-ready summary (NaN and infinities become null)."""
        clean: dict[str, Any] = json_clean(_report_json(self))
        return clean


def _score_json(s: FormScore, chosen: bool) -> dict[str, Any]:
    return {"heldout_error": s.heldout_error, "heldout_rel_error": s.heldout_rel_error,
            "n_origins": len(s.per_origin), "skipped": s.skipped, "chosen": chosen,
            "params": None if s.law is None else dict(s.law.params)}


def _heldout_json(h: HeldOut) -> dict[str, Any]:
    """One check (largest k left out); its lists hold one value per held-out point (x, or N with D;
    n = the rows averaged into `actual`)."""
    entry: dict[str, Any] = {"left_out": h.left_out, "x": list(h.x_out)}
    if h.points and len(h.points[0]) == 2:
        entry["D"] = [p[1] for p in h.points]
    entry.update({"predicted": list(h.predicted), "actual": list(h.actual), "rel_error": list(h.rel_error),
                  "n": list(h.n_obs), "max_rel_error": h.max_rel_error, "params": dict(h.law.params)})
    return entry


def _prediction_json(p: Prediction) -> dict[str, Any]:
    where = {"x": p.at[0]} if len(p.at) == 1 else {"N": p.at[0], "D": p.at[1]}
    return {**where, "value": p.value, "lo": p.lo, "hi": p.hi, "level": p.level, "beyond": p.beyond,
            "far_beyond_data": p.far}


def _stability_json(s: Stability | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"form": s.form, "steps": s.steps.tolist(), "alpha": s.alpha.tolist(), "last_k": s.last_k,
            "alpha_range": s.alpha_range, "rel_range": s.rel_range, "rel_tol": s.rel_tol, "stable": s.stable,
            "notes": list(s.notes)}


def _report_json(r: FitReport) -> dict[str, Any]:
    boot = r.boot
    return {
        "fit_id": r.fit_id, "source": r.source, "x": r.x_name, "group": r.group, "form": r.form_text,
        "form_name": r.law.form, "formula": r.formula, "chosen_by": r.chosen_by, "law": r.law.to_json(),
        "loss_rule": r.loss_rule, "loss_label": r.loss_label, "n_points": r.n_points, "n_sizes": r.n_sizes,
        "n_diverged": r.n_diverged, "resample_unit": r.resample_unit, "params": dict(r.law.params),
        "converged": r.law.converged, "objective": r.law.objective, "loss_space": r.law.loss_space,
        "delta": r.law.delta, "level": r.level if boot else None, "n_bootstrap": boot.n_done if boot else 0,
        "intervals": {k: list(v) for k, v in r.intervals.items()}, "std_errors": r.std_errors,
        "forms": [{"form": name, **v} for name, v in r.stored_scores().items()],
        "heldout": r.stored_heldout(), "heldout_notes": list(r.heldout.notes),
        "predictions": r.stored_predictions(), "band": _band_json(r.band),
        "monotone": None if r.monotonicity is None else r.monotonicity.ok,
        "stability": _stability_json(r.stability), "warnings": list(r.warnings),
        "points": [vars(p) for p in r.points],
    }  # fmt: skip


def _band_json(band: Band | None) -> dict[str, Any] | None:
    if band is None:
        return None
    return {"x": band.x[0].tolist(), "value": band.value.tolist(), "lo": band.lo.tolist(), "hi": band.hi.tolist(),
            "level": band.level, "n_resamples": band.n_resamples, "extrapolation_rate": band.extrapolation_rate}


def json_clean(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null, numpy scalars Python numbers, keys strings, tuples lists."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def point_text(at: Sequence[float]) -> str:
    """"x=1024", or "N=1e+09, D=2e+10" for the two-variable law."""
    names = ("x",) if len(at) == 1 else ("N", "D")
    return ", ".join(f"{name}={v:.4g}" for name, v in zip(names, at, strict=True))


def percent_text(ratio: float) -> str:
    """A ratio as a percentage; an infinite one (alpha's median is 0) says so."""
    return f"{ratio:.0%}" if math.isfinite(ratio) else "more than 100% (median 0)"



# ----------------------------------------------------------------------------- plain-text summaries


def describe_heldout(heldout: HeldOutReport) -> list[str]:
    """One line per held-out point: what was left out, predicted vs actual, relative error."""
    lines = []
    for h in heldout.checks:
        for i, (p, a, e) in enumerate(zip(h.predicted, h.actual, h.rel_error, strict=True)):
            point = h.points[i] if h.points else (h.x_out[i],)
            lines.append(f"largest {h.left_out} left out: {point_text(point)}: predicted {p:.4g}, actual {a:.4g} "
                         f"({e:.1%})")
    return lines + list(heldout.notes)


def describe_stability(s: Stability | None) -> str:
    """alpha over the last evaluations, e.g. "alpha 0.31..0.33 over the last 5 evals (6%): stable"."""
    if s is None:
        return "not computed (no test-loss series, or x = steps)"
    if s.notes:
        return "; ".join(s.notes)
    tail = s.alpha[np.isfinite(s.alpha)][-s.last_k:]
    verdict = "stable" if s.stable else "UNSTABLE"
    return (f"alpha {tail.min():.3g}..{tail.max():.3g} over the last {tail.size} evaluations "
            f"(range {percent_text(s.rel_range)} of median, tolerance {s.rel_tol:.0%}): {verdict}")
