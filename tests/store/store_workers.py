"""Entry points for the worker processes the concurrency tests spawn (must be importable by name)."""

from __future__ import annotations

from typing import Any

from scaletui.core.records import MetricRecord, ModelInfo
from scaletui.store import Store, StoreSink

INFO = ModelInfo(params=1000, flops_per_example=2000, layer_names=("fc0", "fc1"), lr=1e-3)


def write_metrics(db_path: str, run_id: int, n_rows: int, flush_rows: int) -> None:
    """Write steps 0..n_rows-1 of one metric through a StoreSink, 100 rows per call."""
    sink = StoreSink(db_path, run_id, flush_rows=flush_rows, flush_seconds=0.05)
    sink.started(INFO, resumed_from=0)
    for start in range(0, n_rows, 100):
        sink.metrics([MetricRecord(step, "train_loss", 1.0 / (step + 1)) for step in range(start, start + 100)])
    sink.close()


def write_forever(db_path: str, run_id: int, batch: int) -> None:
    """Flush exactly `batch` rows at a time until killed."""
    sink = StoreSink(db_path, run_id, flush_rows=batch, flush_seconds=3600)
    step = 0
    while True:
        sink.metrics([MetricRecord(step + i, "train_loss", float(step + i)) for i in range(batch)])
        step += batch


def create_and_register(db_path: str, name: str, go: Any, ids: Any) -> None:
    """Wait for `go`, open (creating) the database, report its id and add an experiment called `name`."""
    go.wait(60)
    with Store(db_path) as store:
        ids.put(store.database_id())
        store.upsert_experiment(name, None, None, "final")
