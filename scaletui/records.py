"""Plain frozen dataclasses shared by every layer of scaletui.

This module is the bottom of the dependency graph: it imports nothing from
scaletui and nothing heavier than the standard library, so the engine (torch),
the store (sqlite-utils), the analysis (numpy/scipy) and the front ends can all
speak the same types without pulling each other in.

One run of a sweep is one fully resolved `RunSpec`. Its `key` is a stable hash
of everything that determines the training trajectory, so re-running a sweep
recognises finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class RunStatus(str, enum.Enum):
    """Every state a run can be in; nothing stays RUNNING once its process is gone."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    EARLY_STOPPED = "early_stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process was stopped or died; resumable
    STALE = "stale"  # no heartbeat for too long, owner unknown

    @property
    def finished(self) -> bool:
        """A finished run is skipped when the sweep is run again."""
        return self in (RunStatus.DONE, RunStatus.EARLY_STOPPED, RunStatus.DIVERGED)

    @property
    def ok(self) -> bool:
        """Statuses that count as success for the CLI's exit code."""
        return self in (RunStatus.DONE, RunStatus.EARLY_STOPPED)


class LossRule(str, enum.Enum):
    """Which number is "the loss of a run": stated once, labelled everywhere."""

    FINAL = "final"  # test loss at the last evaluation
    BEST = "best"  # lowest test loss over all evaluations
    SMOOTHED = "smoothed"  # debiased EMA of the test-loss evaluations, at the end

    @property
    def label(self) -> str:
        return {"final": "final test loss", "best": "best test loss", "smoothed": "smoothed test loss"}[
            self.value
        ]


@dataclass(frozen=True)
class DataSpec:
    """What a run trains on. `train_size` None means the whole training split."""

    dataset: str = "mnist1d"  # mnist1d | mnist | fashion_mnist | cifar10
    train_size: int | None = None
    label_noise: float = 0.0  # fraction of training labels replaced, fixed by the run's seed
    normalize: str = "standard"  # standard (per-feature/channel mean and std of the train split) | none
    download: bool = False  # torchvision datasets: try to download when the files are missing


@dataclass(frozen=True)
class ModelSpec:
    """Architecture. For `mlp`/`resmlp` depth counts hidden layers/blocks; for `resnet`
    depth is blocks per stage (6n+2 layers) and width the first stage's channels."""

    arch: str = "mlp"  # mlp | resmlp | resnet
    width: int = 64
    depth: int = 2
    dropout: float = 0.0
    init: str = "default"  # default | he | xavier | orthogonal
    norm: str = "none"  # none | batch | layer


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when `metric` has not improved by `min_delta` for `patience` evaluations."""

    patience: int = 0  # 0 disables early stopping
    metric: str = "test_loss"  # test_loss | test_acc
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation. `steps` is always resolved (epochs are converted by config.py).
    `lr` is the base rate; `lr_scaling = sqrt_params` rescales it per model with
    lr * sqrt(lr_ref_params / params) once the model's size is known."""

    optimizer: str = "adam"  # sgd | momentum | adam | adamw
    lr: float = 1e-3
    lr_scaling: str = "none"  # none | sqrt_params
    lr_ref_params: int | None = None
    momentum: float = 0.9  # used by `momentum`
    schedule: str = "constant"  # constant | cosine | linear_warmup_cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 128
    steps: int = 1000
    grad_clip: float | None = None  # max global gradient L2 norm; None disables clipping
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    eval_every: int = 100
    log_every: int = 25  # per-layer statistics and lr cadence (train loss is recorded every step);
    # 25 keeps the probe (3 fused norms per layer + a weight snapshot) under ~1% of a step on CPU
    checkpoint_every: int = 500
    divergence_factor: float = 10.0  # loss above factor x max(initial, best) counts as divergence
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run of a sweep."""

    experiment: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunSpec:
        train = dict(d["train"])
        train["early_stopping"] = EarlyStopping(**train.get("early_stopping", {}))
        return RunSpec(
            experiment=d["experiment"],
            data=DataSpec(**d["data"]),
            model=ModelSpec(**d["model"]),
            train=TrainSpec(**train),
            seed=int(d["seed"]),
        )

    @property
    def key(self) -> str:
        """Stable identity: a hash of everything that shapes the trajectory.

        The experiment name and the device are left out on purpose: the same
        config run under another sweep name, or moved to a GPU, is the same run.
        """
        d = self.to_dict()
        d.pop("experiment")
        d["train"].pop("device")
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human name, e.g. `mlp w64 d2 s0`."""
        return f"{self.model.arch} w{self.model.width} d{self.model.depth} s{self.seed}"


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
class FitResult:
    """A fitted scaling law, as stored and displayed."""

    form: str  # e.g. "E + A*x^-alpha"
    x: str  # params | width | depth | flops | examples | steps | N,D
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_points: int = 0
    loss: float = float("nan")
    heldout_rel_error: float | None = None
    heldout_rel_error_2: float | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alert:
    """Something a detector saw, with the numbers that show it and the usual fix.

    `run_id` is None for alerts about a group of runs (non-monotonic scaling,
    seed sensitivity); those name the runs they compare in `evidence`.
    """

    kind: str  # divergence | plateau | vanishing_gradients | exploding_gradients | overfitting | non_monotonic | seed_sensitivity
    severity: str  # info | warning | critical
    step: int | None  # where the evidence first appeared
    message: str  # what was seen, one line
    suggestion: str  # the usual fix, one line
    evidence: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None
