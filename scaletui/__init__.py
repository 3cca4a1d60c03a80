"""scaletui: a terminal workbench for scaling-law experiments.

`scaletui.init(...)` is the Python API for your own training loop (`scaletui.api`). It is loaded on
first use, so `import scaletui` stays instant: no torch, textual or scipy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Names of `scaletui.api` offered as `scaletui.<name>`, loaded when first asked for.
_API = frozenset({
    "init", "Run", "InvalidConfig", "InvalidMetric", "InvalidSize", "LossRuleConflict", "NotANumber",
    "ReservedMetricKey", "RunClosed", "RunInUse", "RunStorageError", "RunTerminated", "StepWentBackwards",
})


def __getattr__(name: str) -> Any:
    if name in _API:
        from scaletui import api

        return getattr(api, name)
    raise AttributeError(f"module 'scaletui' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
