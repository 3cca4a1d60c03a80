"""An in-memory Sink: for tests, benchmarks, and anyone who wants a run's records as lists.

The real sink (SQLite) lives in scaletui.store, which the engine must not import;
this one satisfies the same `scaletui.core.records.Sink` protocol with plain lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scaletui.core.records import LayerStats, MetricRecord, ModelInfo


@dataclass
class MemorySink:
    info: ModelInfo | None = None
    resumed_from: list[int] = field(default_factory=list)  # one entry per started() call
    metric_rows: list[MetricRecord] = field(default_factory=list)
    layer_rows: list[LayerStats] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    flushes: int = 0

    def started(self, info: ModelInfo, resumed_from: int) -> None:
        self.info = info
        self.resumed_from.append(resumed_from)

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self.metric_rows.extend(rows)

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self.layer_rows.extend(rows)

    def event(self, kind: str, message: str) -> None:
        self.events.append((kind, message))

    def flush(self) -> None:
        self.flushes += 1

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in the order recorded."""
        return [(r.step, r.value) for r in self.metric_rows if r.key == key]
