"""Typed rows for tests that need one without a database: every field given a plain default."""

from __future__ import annotations

from typing import Any

from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import LossRule, RunStatus

_RUN_DEFAULTS: dict[str, Any] = {
    "id": 1, "key": "k1", "experiment": "exp", "experiment_id": 1, "label": "mlp w64 d2 s0",
    "status": RunStatus.DONE, "arch": "mlp", "width": 64, "depth": 2, "seed": 0, "dataset": "mnist1d",
    "train_size": None, "optimizer": "adam", "lr": 1e-3, "lr_effective": 1e-3, "params": 1000,
    "flops_per_example": 2000, "step": 100, "steps": 100, "final_train_loss": None, "final_test_loss": None,
    "best_test_loss": None, "best_step": None, "smoothed_test_loss": None, "final_test_acc": None, "loss": None,
    "loss_rule": LossRule.FINAL, "created_at": None, "started_at": None, "finished_at": None,
    "heartbeat_at": None, "host": None, "pid": None, "error": None, "rev": 1,
}  # fmt: skip


def run_summary(**overrides: Any) -> RunSummary:
    """A RunSummary with defaults; unknown field names raise (as a renamed column would)."""
    unknown = set(overrides) - set(_RUN_DEFAULTS)
    if unknown:
        raise TypeError(f"RunSummary has no field(s) {sorted(unknown)}")
    return RunSummary(**(_RUN_DEFAULTS | overrides))
