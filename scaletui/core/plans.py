"""A run's training plan: its config without its size, seed, device and logging cadence.

Runs of one plan share everything a scaling law compares sizes across (data, steps, schedule, learning
rate ...). The predictions ledger scores a prediction only against runs of its plan, the curve forecaster
learns only from finished runs of a running run's plan, and the runner's schedule treats the sizes of one
plan and depth as one ladder (services/schedule.py): all three read it here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scaletui.core.specs import RunSpec

__all__ = ["plan_hash", "plan_of"]

#: Keys of a run's config that name its size, its seed or where it ran: everything else is its plan.
_NOT_PLAN = {("model", "width"), ("model", "depth"), ("seed",), ("experiment",), ("train", "device"),
             ("train", "checkpoint_every"), ("train", "log_every")}
_NOT_PLAN_USER = {"width", "depth", "seed", "device"}


def plan_of(spec: RunSpec | None, user_config: dict[str, Any] | None) -> dict[str, Any]:
    """A run's training plan: its config without its size, seed, device and logging cadence (from the
    spec of a built-in run, else from the config a run of one's own loop logged)."""
    if spec is not None:
        return _without(spec.to_dict(), ())
    return {k: v for k, v in (user_config or {}).items() if k not in _NOT_PLAN_USER}


def _without(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        here = (*path, key)
        if here in _NOT_PLAN:
            continue
        out[key] = _without(value, here) if isinstance(value, dict) else value
    return out


def plan_hash(plan: dict[str, Any]) -> str:
    """A plan's stable identity: the first 16 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
