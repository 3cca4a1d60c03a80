"""A run's resolved configuration: what it trains on, its model, its optimisation, and its identity.

One run of a sweep is one fully resolved `RunSpec`. Its `key` is a stable hash of everything that
determines the training trajectory, so re-running a sweep recognises finished runs and resumes
interrupted ones; its `point_key` leaves the seed out, so the seeds of one sweep point share it.

Standard library only (plus the vocabulary). Choice fields hold the vocabulary's `str` enums or plain
strings of the same values: both compare, serialise and hash identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from scaletui.core.vocabulary import (
    Arch,
    Device,
    EarlyStoppingMetric,
    Init,
    LrScaling,
    Norm,
    Normalize,
    Optimizer,
    Schedule,
)


@dataclass(frozen=True)
class DataSpec:
    """What a run trains on. `train_size` None means the whole training split."""

    dataset: str = "mnist1d"  # a name of scaletui.core.datasets.DATASETS
    train_size: int | None = None
    label_noise: float = 0.0  # fraction of training labels replaced, fixed by the run's seed
    normalize: str = Normalize.STANDARD.value
    download: bool = False  # torchvision datasets: try to download when the files are missing


@dataclass(frozen=True)
class ModelSpec:
    """Architecture. For `mlp`/`resmlp` depth counts hidden layers/blocks; for `resnet`
    depth is blocks per stage (6n+2 layers) and width the first stage's channels."""

    arch: str = Arch.MLP.value
    width: int = 64
    depth: int = 2
    dropout: float = 0.0
    init: str = Init.DEFAULT.value
    norm: str = Norm.NONE.value


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when `metric` has not improved by `min_delta` for `patience` evaluations."""

    patience: int = 0  # 0 disables early stopping
    metric: str = EarlyStoppingMetric.TEST_LOSS.value
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation. `steps` is always resolved (epochs are converted by config.py).
    `lr` is the base rate; `lr_scaling = sqrt_params` rescales it per model with
    lr * sqrt(lr_ref_params / params) once the model's size is known."""

    optimizer: str = Optimizer.ADAM.value
    lr: float = 1e-3
    lr_scaling: str = LrScaling.NONE.value
    lr_ref_params: int | None = None
    momentum: float = 0.9  # used by the `momentum` optimizer
    schedule: str = Schedule.CONSTANT.value
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
    device: str = Device.AUTO.value  # auto | cpu | cuda | cuda:N


def _digest(d: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of canonical JSON: stable across runs and machines."""
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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

    def _identity(self, *, with_seed: bool) -> dict[str, Any]:
        """Everything that shapes the trajectory: not the experiment's name, not the device."""
        d = self.to_dict()
        d.pop("experiment")
        d["train"].pop("device")
        if not with_seed:
            d.pop("seed")
        return d

    @property
    def key(self) -> str:
        """Stable identity: the same config run under another sweep name, or moved to a GPU, is the same run."""
        return _digest(self._identity(with_seed=True))

    @property
    def point_key(self) -> str:
        """Like `key` without the seed: the runs that are seeds of one sweep point share it."""
        return _digest(self._identity(with_seed=False))

    @property
    def label(self) -> str:
        """Short human name, e.g. `mlp w64 d2 s0`."""
        return f"{self.model.arch} w{self.model.width} d{self.model.depth} s{self.seed}"
