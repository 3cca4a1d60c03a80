"""The one way tests and benchmarks read the published reference data in `../shared/data/`.

Why one helper: the data is read where it lives (it is never copied into the repository), every
data set comes with its authors' fit/extrapolate split, and that split has to be applied the same
way by every test and benchmark that compares against the published errors. The rules are the
ones in `../shared/data/external/README.md`:

* Alabdulmohsin et al. 2022 benchmark (`revisiting_benchmark.{vision,lang}.csv`): a curve is one
  (Domain, Task, Model); rows with Training == 1 are fitted, Training == 0 are extrapolated. Every LM
  curve is stored 4 times: exact duplicate rows are dropped.
* Caballero et al. 2023, 4-digit addition (`bnsl_4digit_addition.csv`): fit the first 14 sizes,
  extrapolate the last 3.
* Muennighoff et al. 2023 via Choshen et al. 2024 (`datablations_contour_losses.csv`): the rows with
  epochs == 1 suit L(N, D); the largest model (N = 8.67e9) is held out.
* Chinchilla (Besiroglu et al. 2024): N, D = C / (6 N), loss, the 5 highest-loss points dropped.

The folder is `<repo>/../shared/data`, or `$SCALETUI_REFDATA` when set. Tests call
`require_refdata()` (a pytest skip with the reason when the folder is absent); benchmarks call
`data_dir()` and report a missing folder themselves.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "SCALETUI_REFDATA"
REPO = Path(__file__).resolve().parents[1]

# The per-domain settings of the authors' M4 (their notebook): the loss at x -> 0 starts at err_0 and,
# for error rates, cannot exceed up_bound. They are properties of the metric, known before any fit.
DOMAIN_SETTINGS: dict[str, tuple[float, float | None]] = {
    "IC": (1.0, 1.0), "NMT": (1.0, None), "LM": (1.0, None), "BB": (1.001, 1.0),
}
DATABLATIONS_HOLDOUT_N = 8.67e9
BNSL_SPLIT = 14


def data_dir() -> Path:
    """Where the reference data lives: $SCALETUI_REFDATA, else <repo>/../shared/data."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else REPO.parent / "shared" / "data"


def missing_reason() -> str | None:
    """None when the reference data is readable, else one line saying what is missing and where."""
    root = data_dir()
    for rel in ("chinchilla_svg_extracted_data.csv", "external/reference_errors.json"):
        if not (root / rel).is_file():
            return f"reference data not found: {root / rel} (set {ENV_VAR} to the shared data folder)"
    return None


def require_refdata() -> Path:
    """For tests: the data folder, or skip the calling test with the reason it is absent."""
    import pytest  # only tests call this; benchmarks must not need pytest

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return data_dir()


@dataclass(frozen=True)
class Curve:
    """One learning curve with its published split.

    `key` matches `reference_errors.json` ('Domain|Task|Model' for IC, 'Domain|Model' for NMT and LM,
    'Domain|Task' for BB, 'BNSL|4digit'); `err_0` and `up_bound` are the authors' M4 settings for the
    domain (the loss at x -> 0, and the metric's upper bound or None).
    """

    key: str
    domain: str
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    err_0: float
    up_bound: float | None


@dataclass(frozen=True)
class TwoVarData:
    """Points of L(N, D): model size, training tokens, loss."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class TwoVarSplit:
    """A two-variable data set with its held-out part (the largest model)."""

    fit: TwoVarData
    test: TwoVarData


@dataclass(frozen=True)
class RefError:
    """The published estimator's errors on the extrapolated points of one curve (NaN where the
    file gives none: BNSL's own script reports no relative error or time)."""

    rmse_log: float
    rel_err: float
    seconds: float


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _floats(rows: Iterable[dict[str, str]], column: str) -> np.ndarray:
    return np.array([float(r[column]) for r in rows])


def chinchilla(drop_highest: int = 5) -> TwoVarData:
    """Epoch AI's 245 Chinchilla points with D = C / (6 N), minus the `drop_highest` highest losses."""
    rows = _rows(data_dir() / "chinchilla_svg_extracted_data.csv")
    n, c, y = _floats(rows, "Model Size"), _floats(rows, "Training FLOP"), _floats(rows, "loss")
    keep = np.sort(np.argsort(y, kind="stable")[: y.size - drop_highest])
    return TwoVarData(n[keep], c[keep] / (6.0 * n[keep]), y[keep])


def _curve_key(domain: str, task: str, model: str) -> str:
    if domain == "IC":
        return f"{domain}|{task}|{model}"
    return f"{domain}|{task}" if domain == "BB" else f"{domain}|{model}"


def _benchmark_rows() -> list[dict[str, str]]:
    root = data_dir() / "external"
    rows: list[dict[str, str]] = []
    for name in ("revisiting_benchmark.vision.csv", "revisiting_benchmark.lang.csv"):
        rows += _rows(root / name)
    unique = dict.fromkeys(tuple(r.items()) for r in rows)  # drops the exact duplicate LM rows
    return [dict(items) for items in unique]


def _to_curve(key: str, domain: str, rows: list[dict[str, str]]) -> Curve:
    fit = sorted((r for r in rows if r["Training"] == "1"), key=lambda r: float(r["Seen Examples"]))
    test = sorted((r for r in rows if r["Training"] == "0"), key=lambda r: float(r["Seen Examples"]))
    err_0, up_bound = DOMAIN_SETTINGS[domain]
    return Curve(key, domain, _floats(fit, "Seen Examples"), _floats(fit, "Loss"),
                 _floats(test, "Seen Examples"), _floats(test, "Loss"), err_0, up_bound)


def revisiting_curves(only_reference: bool = True) -> list[Curve]:
    """Alabdulmohsin et al.'s learning curves with their split, sorted by key.

    `only_reference`: just the curves that `reference_errors.json` scores (IC 5-shot, NMT, LM, BB).
    """
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in _benchmark_rows():
        key = _curve_key(r["Domain"], r["Task"], r["Model"])
        groups.setdefault((key, r["Domain"]), []).append(r)
    wanted = set(reference_errors()) if only_reference else None
    return [_to_curve(key, domain, rows) for (key, domain), rows in sorted(groups.items())
            if wanted is None or key in wanted]


def bnsl_addition() -> Curve:
    """Caballero et al.'s 4-digit addition curve: fit the first 14 sizes, extrapolate the last 3."""
    rows = _rows(data_dir() / "external" / "bnsl_4digit_addition.csv")
    x, y = _floats(rows, "train_size"), _floats(rows, "test_cross_entropy")
    fit = np.array([r["split"] == "fit" for r in rows])
    if int(fit.sum()) != BNSL_SPLIT or not np.all(fit[:BNSL_SPLIT]):
        raise ValueError(f"bnsl_4digit_addition.csv: expected the first {BNSL_SPLIT} rows to be 'fit'")
    return Curve("BNSL|4digit", "BNSL", x[fit], y[fit], x[~fit], y[~fit], float(y.max()), None)


def datablations() -> TwoVarSplit:
    """Muennighoff et al.'s single-epoch C4 runs (33 rows); N = 8.67e9 is held out."""
    rows = [r for r in _rows(data_dir() / "external" / "datablations_contour_losses.csv")
            if float(r["epochs"]) == 1.0]
    n, d, y = _floats(rows, "num_params"), _floats(rows, "token_num"), _floats(rows, "openLM_loss")
    out = np.isclose(n, DATABLATIONS_HOLDOUT_N, rtol=1e-3)
    return TwoVarSplit(TwoVarData(n[~out], d[~out], y[~out]), TwoVarData(n[out], d[out], y[out]))


def _number(value: float | str | None) -> float:
    return float("nan") if value is None else float(value)


def reference_errors() -> dict[str, dict[str, RefError]]:
    """curve key -> estimator ('M2', 'M4', 'BNSL') -> its published extrapolation errors."""
    raw = json.loads((data_dir() / "external" / "reference_errors.json").read_text(encoding="utf-8"))
    return {key: {est: RefError(*(_number(v.get(f)) for f in ("rmse_log", "rel_err", "seconds")))
                  for est, v in by_est.items()}
            for key, by_est in raw.items() if not key.startswith("_")}
