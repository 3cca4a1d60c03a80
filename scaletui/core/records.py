"""What training produces and how it is delivered: metric and layer records, a model's size, how a run
ended, alerts, the `Sink` / `StopSignal` protocols every training loop speaks, and a fitted scaling
law (`FittedLaw`, the one fit record from analysis to storage to display).

The training loop sends records to a *sink* and watches a *stop* signal; it does not know who listens.
The built-in loop, a researcher's own loop through the API, a batched bundle and a run on another
machine all deliver through the same protocol to the same store.

Standard library only (plus the vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scaletui.core.vocabulary import RunStatus


@dataclass(frozen=True)
class MetricRecord:
    """One scalar at one step: train_loss, test_loss, test_acc, train_acc, lr, ..."""

    step: int
    key: str
    value: float


@dataclass(frozen=True)
class LayerStats:
    """Per-layer statistics at one step; `layer` is the index in depth order (0 = input side)."""

    step: int
    layer: int
    name: str
    grad_norm: float
    weight_norm: float
    update_ratio: float  # ||delta W|| / ||W|| of this step's update
    nonfinite: int  # count of NaN/Inf gradient values in this layer


@dataclass(frozen=True)
class ModelInfo:
    """Size of a built model: what a scaling law's x axis is made of."""

    params: int
    flops_per_example: int  # forward-pass FLOPs for one example (multiply-add = 2)
    layer_names: tuple[str, ...]
    lr: float  # the effective learning rate after lr_scaling


@dataclass(frozen=True)
class RunOutcome:
    """How a call to the training loop ended."""

    status: RunStatus
    step: int
    error: str | None = None
    final_train_loss: float | None = None
    final_test_loss: float | None = None
    final_test_acc: float | None = None
    best_test_loss: float | None = None
    best_step: int | None = None
    smoothed_test_loss: float | None = None


class Sink(Protocol):
    """Where the training loop sends what it measures. The loop does not know who listens.

    `flush` is a durability point: once it returns, everything emitted before it
    is stored. The loop flushes before every checkpoint, so a checkpoint never
    refers to records that could still be lost.
    """

    def started(self, info: ModelInfo, resumed_from: int) -> None: ...

    def metrics(self, rows: Sequence[MetricRecord]) -> None: ...

    def layer_stats(self, rows: Sequence[LayerStats]) -> None: ...

    def event(self, kind: str, message: str) -> None: ...

    def flush(self) -> None: ...


class StopSignal(Protocol):
    """Anything with `is_set()`: a threading or multiprocessing Event."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Alert:
    """Something a detector saw, with the numbers that show it and the usual fix.

    `run_id` is None for alerts about a group of runs (non-monotonic scaling,
    seed sensitivity); those name the runs they compare in `evidence`.
    """

    kind: str  # an AlertKind value
    severity: str  # a Severity value
    step: int | None  # where the evidence first appeared
    message: str  # what was seen, one line
    suggestion: str  # the usual fix, one line
    evidence: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None


@dataclass(frozen=True)
class FittedLaw:
    """A fitted scaling law: the one fit record that analysis returns, the store stores and display shows.

    form: a key of `scaletui.analysis.forms.FORMS` ("M1", "M2", ..., "CHINCHILLA"). params: natural
    parameters, in the form's order. variables: what each input is (("x",), ("N", "D")). x_range:
    (smallest, largest) fitted value of the first variable, so a display can say when a prediction
    extrapolates. loss_space / delta: the residuals minimised ("log": log L_hat - log L; "log_excess":
    the same above the floor) and the Huber threshold (inf: least squares). objective: the minimised
    sum. upper_bound: the metric's known upper bound, if the fit was told one. warnings: reasons not
    to trust it, one line each.

    Plain data only (strings, floats, a dict of floats, tuples): it crosses every layer, and `to_json`
    / `from_json` carry it through the database. Evaluating it needs numpy: `analysis.forms.predict`.
    """

    form: str
    params: dict[str, float]
    variables: tuple[str, ...] = ("x",)
    x_range: tuple[float, float] = (float("nan"), float("nan"))
    n_points: int = 0
    loss_space: str = "log"
    delta: float = 1e-3
    objective: float = float("nan")
    converged: bool = True
    upper_bound: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def exponent(self) -> float:
        """The scaling exponent alpha (the first variable's, for two-variable forms)."""
        return self.params["alpha"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite numbers become the strings "nan", "inf", "-inf" (JSON has none)."""
        return {"form": self.form, "params": {k: _number_out(v) for k, v in self.params.items()},
                "variables": list(self.variables), "x_range": [_number_out(v) for v in self.x_range],
                "n_points": self.n_points, "loss_space": self.loss_space, "delta": _number_out(self.delta),
                "objective": _number_out(self.objective), "converged": self.converged,
                "upper_bound": None if self.upper_bound is None else _number_out(self.upper_bound),
                "warnings": list(self.warnings)}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> FittedLaw:
        """The law `to_json` wrote (missing keys take their defaults, so older documents still read)."""
        lo, hi = doc.get("x_range", [math.nan, math.nan])
        bound = doc.get("upper_bound")
        return FittedLaw(str(doc["form"]), {str(k): _number_in(v) for k, v in doc["params"].items()},
                         tuple(doc.get("variables", ("x",))), (_number_in(lo), _number_in(hi)),
                         int(doc.get("n_points", 0)), str(doc.get("loss_space", "log")),
                         _number_in(doc.get("delta", 1e-3)), _number_in(doc.get("objective", math.nan)),
                         bool(doc.get("converged", True)), None if bound is None else _number_in(bound),
                         tuple(doc.get("warnings", ())))


def _number_out(value: float) -> float | str:
    return float(value) if math.isfinite(value) else str(float(value))


def _number_in(value: float | str | None) -> float:
    return math.nan if value is None else float(value)
