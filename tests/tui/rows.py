"""Typed rows for the app's unit tests, built with defaults: only what a test is about is spelled out."""

from __future__ import annotations

from typing import Any

from scaletui.core.rows import AlertRow, FinalLoss, RunSummary
from scaletui.core.vocabulary import LossRule, RunStatus, Severity


def run(id: int, width: int, depth: int, loss: float | None = None, status: RunStatus = RunStatus.DONE,
        seed: int = 0, **kw: Any) -> RunSummary:
    """A run of experiment "x" whose every loss is `loss`."""
    base: dict[str, Any] = dict(
        id=id, key=f"key{id}", experiment="x", experiment_id=1, label=f"mlp w{width} d{depth} s{seed}",
        status=status, arch="mlp", width=width, depth=depth, seed=seed, dataset="mnist1d", train_size=None,
        optimizer="adam", lr=1e-3, lr_effective=None, params=width * depth, flops_per_example=None, step=10,
        steps=10, final_train_loss=loss, final_test_loss=loss, best_test_loss=loss, best_step=None,
        smoothed_test_loss=None, final_test_acc=None, loss=loss, loss_rule=LossRule.FINAL, created_at=None,
        started_at=None, finished_at=None, heartbeat_at=None, host=None, pid=None, error=None, rev=id,
    )  # fmt: skip
    return RunSummary(**{**base, **kw})


def point(depth: int, width: int, mean: float | None, lo: float | None = None,
          hi: float | None = None) -> FinalLoss:
    """A `final_losses` row of two seeds (min and max default to the mean)."""
    return FinalLoss(experiment="x", experiment_id=1, loss_rule=LossRule.FINAL, point_key=f"w{width}d{depth}",
                     hyperparameters={"width": width, "depth": depth}, n_seeds=2, n_diverged=0, mean_loss=mean,
                     min_loss=lo if lo is not None else mean, max_loss=hi if hi is not None else mean,
                     params=None, flops_per_example=None)


def alert(id: int, run_id: int | None, kind: str, severity: Severity, **kw: Any) -> AlertRow:
    """An active alert of experiment "x"."""
    base: dict[str, Any] = dict(
        id=id, experiment_id=1, experiment="x", run_id=run_id, subject=f"run:{run_id}", kind=kind,
        severity=severity, step=None, message="seen", suggestion=None, evidence={}, active=True,
        first_seen_at="2026-01-01T12:00:00.000Z", updated_at="2026-01-01T12:00:00.000Z", rev=id,
    )  # fmt: skip
    return AlertRow(**{**base, **kw})
