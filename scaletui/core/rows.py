"""Typed rows: what the store's reader returns, the only shape in which stored data crosses a layer.

Why not dicts: with `row["final_test_loss"]` scattered over the CLI, the services and the app, a renamed
column silently became `None` somewhere far away. Each class here names its columns once; the reader
builds them with `from_columns`, which fails loudly when the query and the class disagree (a missing or
unexpected column raises at once, in the reader's tests). Enums are parsed on the way in, so a consumer
compares `row.status is RunStatus.DONE`, never a string.

Standard library only (plus the vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from scaletui.core.records import FittedLaw
from scaletui.core.vocabulary import (
    DEFAULT_LOSS_METRIC,
    LossRule,
    PredictionKind,
    PredictionSource,
    PredictionStatus,
    RunSource,
    RunStatus,
    Severity,
)

R = TypeVar("R")


def from_columns(cls: type[R], names: Sequence[str], values: Sequence[Any], **extra: Any) -> R:
    """Build row class `cls` from one result row; the column names must be exactly its fields.

    `extra` supplies fields the query does not (or overrides one it does)."""
    wanted = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    given = dict(zip(names, values, strict=True)) | extra
    missing = [n for n in wanted if n not in given]
    unexpected = [n for n in given if n not in wanted]
    if missing or unexpected:
        raise TypeError(f"{cls.__name__}: query and row disagree (missing {missing}, unexpected {unexpected})")
    return cls(**given)


def _status(value: Any) -> RunStatus:
    return value if isinstance(value, RunStatus) else RunStatus(value)


def _rule(value: Any) -> LossRule | None:
    return None if value is None or isinstance(value, LossRule) else LossRule(value)


def _set(row: object, name: str, value: Any) -> None:
    object.__setattr__(row, name, value)  # normalising a frozen row in __post_init__


class MetricPoint(NamedTuple):
    """One value of one metric: still unpacks as `step, value`."""

    step: int
    value: float  # NaN where the measured number was NaN (stored as NULL)


@dataclass(frozen=True)
class RunSummary:
    """One row of the `run_summary` view: a run, its experiment and "the loss of the run" by its rule.

    A run of a researcher's own loop (`source` api, or entrypoint for a sweep's `train.entrypoint`) has only the columns
    its config or `run.summary()`
    gave: arch, width, depth, seed, dataset, optimizer, lr and steps may be None. Its `loss` is the
    final/best/smoothed value of the experiment's `loss_metric` (lower better unless `higher_is_better`).
    """

    id: int
    key: str
    experiment: str | None
    experiment_id: int | None
    label: str
    status: RunStatus
    arch: str | None
    width: int | None
    depth: int | None
    seed: int | None
    dataset: str | None
    train_size: int | None
    optimizer: str | None
    lr: float | None
    lr_effective: float | None
    params: int | None
    flops_per_example: int | None
    step: int | None
    steps: int | None
    final_train_loss: float | None
    final_test_loss: float | None
    best_test_loss: float | None
    best_step: int | None
    smoothed_test_loss: float | None
    final_test_acc: float | None
    loss: float | None  # by the experiment's loss rule
    loss_rule: LossRule | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    host: str | None
    pid: int | None
    error: str | None
    rev: int
    source: RunSource = RunSource.SWEEP
    loss_metric: str = DEFAULT_LOSS_METRIC  # the experiment's metric behind `loss`
    higher_is_better: bool = False  # of loss_metric: "best" is then the largest value

    def __post_init__(self) -> None:
        _set(self, "status", _status(self.status))
        _set(self, "loss_rule", _rule(self.loss_rule))
        _set(self, "source", RunSource(self.source))
        _set(self, "higher_is_better", bool(self.higher_is_better))

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def ok(self) -> bool:
        return self.status.ok

    def loss_by(self, rule: LossRule) -> float | None:
        """The run's loss under another rule than its experiment's."""
        value = getattr(self, rule.column)
        return None if value is None else float(value)


@dataclass(frozen=True)
class ExperimentRow:
    """One row of `experiments`, with its number of runs."""

    id: int
    name: str
    config_path: str | None
    config_toml: str | None
    loss_rule: LossRule
    created_at: str | None
    updated_at: str | None
    n_runs: int
    loss_metric: str = DEFAULT_LOSS_METRIC  # which metric is "the loss" of its runs
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        _set(self, "loss_rule", LossRule(self.loss_rule))
        _set(self, "higher_is_better", bool(self.higher_is_better))


@dataclass(frozen=True)
class EventRow:
    """One row of `events`: something that happened to a run (run_id None: to the sweep)."""

    id: int
    run_id: int | None
    at: str
    kind: str  # a RunStatus value for state changes, else an EventKind value
    message: str | None


def _evidence(text: str | None) -> dict[str, float]:
    """Evidence JSON back to floats (non-finite numbers were stored as strings such as 'inf')."""
    return {k: float(v) for k, v in json.loads(text or "{}").items()}


@dataclass(frozen=True)
class AlertRow:
    """One row of `alerts`, with its experiment's name and the evidence parsed."""

    id: int
    experiment_id: int | None
    experiment: str | None
    run_id: int | None
    subject: str
    kind: str  # an AlertKind value
    severity: Severity
    step: int | None
    message: str
    suggestion: str | None
    evidence: dict[str, float]
    active: bool
    first_seen_at: str
    updated_at: str
    rev: int

    def __post_init__(self) -> None:
        _set(self, "severity", Severity(self.severity))
        _set(self, "active", bool(self.active))
        if isinstance(self.evidence, str) or self.evidence is None:
            _set(self, "evidence", _evidence(self.evidence))


@dataclass(frozen=True)
class FinalLoss:
    """One row of `final_losses`: a sweep point (config without seed) and its loss over successful seeds."""

    experiment: str
    experiment_id: int
    loss_rule: LossRule
    point_key: str
    hyperparameters: Mapping[str, Any]  # every config column but seed and device
    n_seeds: int
    n_diverged: int
    mean_loss: float | None
    min_loss: float | None
    max_loss: float | None
    params: float | None
    flops_per_example: float | None

    def __post_init__(self) -> None:
        _set(self, "loss_rule", LossRule(self.loss_rule))

    @property
    def width(self) -> int:
        return int(self.hyperparameters["width"])

    @property
    def depth(self) -> int:
        return int(self.hyperparameters["depth"])

    @property
    def spread(self) -> float:
        """max - min over seeds (NaN without a loss)."""
        if self.max_loss is None or self.min_loss is None:
            return math.nan
        return self.max_loss - self.min_loss


def _json(value: Any, empty: Any) -> Any:
    """A JSON column parsed (text from SQL); already-parsed values pass through."""
    if value is None:
        return empty
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class FitRow:
    """One stored fit (`fits` table), its JSON columns parsed; `law` is the stored `FittedLaw`.

    form: the form as text: "A*x^-alpha", "E + A*x^-alpha", "E + A/N^alpha + B/D^beta" for M1, M2,
    CHINCHILLA (as ever), the formula for the other forms ("L = E (1 + x_c/x)^alpha").
    scores: every candidate form's held-out error by form name; heldout: one entry per held-out
    check (largest 1, 2 sizes left out) with its points; predictions: what `--predict` asked for.
    Fits stored before schema v4 have no law_json: their law is rebuilt from `form` and `params`
    (`legacy_law`), their held-out checks come from options ($.heldout), scores and predictions are empty.
    """

    id: int
    created_at: str
    experiment_id: int | None
    experiment: str | None
    source: str
    x: str
    form: str
    loss_rule: str | None
    grouping: str | None
    n_points: int
    n_sizes: int | None
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    objective: float | None
    heldout_rel_error: float | None
    heldout_rel_error_2: float | None
    warnings: tuple[str, ...]
    inputs: dict[str, Any]
    options: dict[str, Any]
    law: FittedLaw
    scores: dict[str, dict[str, Any]]
    heldout: tuple[dict[str, Any], ...]
    predictions: tuple[dict[str, Any], ...]

    def __post_init__(self) -> None:
        _set(self, "params", {k: float(v) for k, v in _json(self.params, {}).items()})
        _set(self, "intervals", {k: (float(v[0]), float(v[1])) for k, v in _json(self.intervals, {}).items()})
        _set(self, "warnings", tuple(_json(self.warnings, [])))
        _set(self, "inputs", _json(self.inputs, {}))
        _set(self, "options", _json(self.options, {}))
        law = _json(self.law, None)
        _set(self, "law", law if isinstance(law, FittedLaw) else
             FittedLaw.from_json(law) if law is not None else legacy_law(self))
        _set(self, "scores", _json(self.scores, {}))
        _set(self, "heldout", tuple(_json(self.heldout, None) or self.options.get("heldout", [])))
        _set(self, "predictions", tuple(_json(self.predictions, [])))


@dataclass(frozen=True)
class ExperimentLoss:
    """What "the loss" of an experiment's runs is, stated once per experiment: which metric, which way is
    better, and which of its values counts (`rule`: the final one, the best one, or the debiased EMA).
    Built-in sweeps use the default: the final test loss, lower is better."""

    metric: str = DEFAULT_LOSS_METRIC
    higher_is_better: bool = False
    rule: LossRule = LossRule.FINAL

    def __post_init__(self) -> None:
        _set(self, "rule", LossRule(self.rule))
        _set(self, "higher_is_better", bool(self.higher_is_better))

    def describe(self) -> str:
        """E.g. `final cost (lower is better)`."""
        return f"{self.rule.value} {self.metric} ({'higher' if self.higher_is_better else 'lower'} is better)"


@dataclass(frozen=True)
class ExportColumn:
    """One column of an export (`scaletui export`): its name, its declared SQLite type (INTEGER, REAL,
    TEXT) and whether NULL in it means NaN (metrics.value and the float columns of layer_stats)."""

    name: str
    sql_type: str
    null_is_nan: bool = False


#: The `form` text of M1, M2 and CHINCHILLA (the laws of fits stored before schema v4 too) -> the form's name.
LEGACY_FORMS: dict[str, str] = {"A*x^-alpha": "M1", "E + A*x^-alpha": "M2", "E + A/N^alpha + B/D^beta": "CHINCHILLA"}


def legacy_law(row: FitRow) -> FittedLaw:
    """The law of a fit stored before schema v4, from its columns: form text, parameters, points, options."""
    name = LEGACY_FORMS.get(row.form, row.form)
    xs = [float(v) for v in row.inputs.get("x", [])]
    variables = ("N", "D") if name == "CHINCHILLA" else (row.x,)
    x_range = (min(xs), max(xs)) if xs else (math.nan, math.nan)
    delta = float(row.options.get("delta", 1e-3))
    objective = math.nan if row.objective is None else float(row.objective)
    return FittedLaw(name, dict(row.params), variables, x_range, row.n_points, "log", delta, objective,
                     True, None, row.warnings)


@dataclass(frozen=True)
class PredictionRow:
    """One entry of the predictions ledger (`predictions` table), its JSON columns parsed.

    kind size: a law's prediction of the loss at a size not yet trained (`width` x `depth`, `x` on the
    law's axis `x_name`), with its band, recorded before the runs exist. kind curve: a running run's
    final loss (`run_id`, at its planned last step `steps`) predicted from its loss at `at_step`.
    `status` says whether it has been scored
    against the runs of that size since (`truth`: their mean loss, `error`: (predicted - truth) / truth,
    `inside`: truth within [lo, hi]). `plan` holds the training plans (config minus size and seed) the
    law was fitted under: runs trained under another plan do not score it. `curve`: which law ("depth=6",
    or None for the law over every run); `inputs`: run ids, sizes and fit options behind it.
    """

    id: int
    experiment_id: int
    experiment: str | None
    created_at: str
    kind: PredictionKind
    source: PredictionSource
    run_id: int | None
    at_step: int | None
    steps: int | None
    width: int | None
    depth: int | None
    x_name: str
    x: float
    curve: str | None
    form: str
    loss_rule: str
    predicted: float
    lo: float | None
    hi: float | None
    level: float | None
    status: PredictionStatus
    truth: float | None
    n_truth: int | None
    error: float | None
    inside: bool | None
    scored_at: str | None
    note: str | None
    law: FittedLaw | None  # kind size; a curve prediction's ratio law is in inputs
    plan: dict[str, Any]
    inputs: dict[str, Any]

    def __post_init__(self) -> None:
        _set(self, "kind", PredictionKind(self.kind))
        _set(self, "source", PredictionSource(self.source))
        _set(self, "status", PredictionStatus(self.status))
        _set(self, "inside", None if self.inside is None else bool(self.inside))
        law = _json(self.law, None)
        _set(self, "law", law if isinstance(law, FittedLaw) or law is None else FittedLaw.from_json(law))
        _set(self, "plan", _json(self.plan, {}))
        _set(self, "inputs", _json(self.inputs, {}))

    @property
    def size_label(self) -> str:
        """E.g. `192x6`, or the law's x where the size has no width and depth."""
        if self.width is not None and self.depth is not None:
            return f"{self.width}x{self.depth}"
        return f"{self.x_name}={self.x:.4g}"
