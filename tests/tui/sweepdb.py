"""A deterministic sweep database for the app's tests, written through the store's own writers.

The shape is that of the tiny sweep in tests/conftest.py (MLPs, widths x depths on MNIST-1D), with
curves from a closed form instead of training, so every number (and every snapshot) is the same on
every machine: loss falls from ~2.3 towards a floor set by the model's size, except that the
deepest run of the narrowest width ends *worse* than the one below it (the runs table and the grid
must mark it). Some runs are finished, one is running on another host, the rest are queued.
Timestamps are pinned after writing, so nothing on screen depends on the clock.

`extend_run` appends steps to a run the way a worker does (a StoreSink flush), for tests that watch
the app pick up new rows, and for the benchmark.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from scaletui.core.records import Alert, LayerStats, MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import CURVE_FORM, LossRule, PredictionKind, PredictionSource, RunStatus
from scaletui.store.predictions import NewPrediction
from scaletui.store.writer import Store, StoreSink

EXPERIMENT = "tiny"
PINNED = "2026-01-01T12:00:00.000Z"
FINISHED_AT = "2026-01-01T12:01:00.000Z"  # every finished run took 60 s: ETA is predictable


def params_of(width: int, depth: int) -> int:
    """MLP on MNIST-1D (40 inputs, 10 classes)."""
    return 40 * width + width + (depth - 1) * (width * width + width) + width * 10 + 10


def final_loss(width: int, depth: int) -> float:
    loss = 0.4 + 30.0 / math.sqrt(params_of(width, depth))
    return loss + 0.3 if (width, depth) == (8, 4) else loss  # deeper was worse here


def curve(width: int, depth: int, step: int, steps: int) -> float:
    floor = final_loss(width, depth)
    wiggle = 0.02 * math.sin(step / 3.0)
    return floor + (2.3 - floor) * math.exp(-5.0 * step / steps) + wiggle


def specs(widths: Iterable[int], depths: Iterable[int], seeds: Iterable[int], steps: int,
          experiment: str = EXPERIMENT) -> list[RunSpec]:
    train = TrainSpec(steps=steps, eval_every=20, log_every=10)
    base = RunSpec(experiment, DataSpec(train_size=512), ModelSpec(), train)
    return [replace(base, model=replace(base.model, width=w, depth=d), seed=s)
            for w in widths for d in depths for s in seeds]


def layer_names(depth: int) -> list[str]:
    return [f"hidden.{i}" for i in range(depth)] + ["head"]


def write_steps(sink: StoreSink, spec: RunSpec, first: int, last: int) -> None:
    """Train loss every step, test loss every eval_every, layer stats every log_every."""
    w, d, steps = spec.model.width, spec.model.depth, spec.train.steps
    metrics = [MetricRecord(s, "train_loss", curve(w, d, s, steps)) for s in range(first, last + 1)]
    metrics += [MetricRecord(s, "test_loss", curve(w, d, s, steps) + 0.05)
                for s in range(first, last + 1) if s % spec.train.eval_every == 0]
    sink.metrics(metrics)
    sink.layer_stats([
        LayerStats(s, i, name, grad_norm=0.5 * (i + 1) / (d + 1) * math.exp(-s / steps), weight_norm=3.0 + 0.1 * i,
                   update_ratio=1e-3, nonfinite=0)
        for s in range(first, last + 1) if s % spec.train.log_every == 0
        for i, name in enumerate(layer_names(d))
    ])  # fmt: skip


def _outcome(spec: RunSpec) -> RunOutcome:
    w, d, steps = spec.model.width, spec.model.depth, spec.train.steps
    test = curve(w, d, steps, steps) + 0.05
    return RunOutcome(RunStatus.DONE, steps, final_train_loss=curve(w, d, steps, steps), final_test_loss=test,
                      final_test_acc=0.8, best_test_loss=test - 0.01, best_step=steps, smoothed_test_loss=test)


def build(path: Path, *, widths: tuple[int, ...] = (8, 16), depths: tuple[int, ...] = (1, 2, 4),
          seeds: tuple[int, ...] = (0,), steps: int = 60, running: int = 1, queued: int = 1,
          experiment: str = EXPERIMENT) -> dict[str, int]:
    """Write the sweep (or add another experiment to the file: use other widths, run keys ignore the
    name); returns {label: run_id}. The last `running` + `queued` runs are unfinished."""
    all_specs = specs(widths, depths, seeds, steps, experiment)
    with Store(path) as store:
        experiment_id = store.upsert_experiment(experiment, None, None, LossRule.FINAL)
        registered = store.register_runs(experiment_id, all_specs, fresh=False)
        n_done = len(registered) - running - queued
        for i, (run_id, spec) in enumerate(registered):
            if i < n_done + running:
                _train(store, path, run_id, spec, finish=i < n_done)
        store.sync_alerts(experiment_id, _alerts(registered))
    _pin_timestamps(path)
    return {spec.label: run_id for run_id, spec in registered}


def _train(store: Store, path: Path, run_id: int, spec: RunSpec, *, finish: bool) -> None:
    store.mark_running(run_id, pid=4_000_000 + run_id, host="gpu-box-elsewhere")  # not this host: never signalled
    w, d = spec.model.width, spec.model.depth
    last = spec.train.steps if finish else spec.train.steps // 2
    with StoreSink(path, run_id) as sink:
        sink.started(ModelInfo(params_of(w, d), 2 * params_of(w, d), tuple(layer_names(d)), spec.train.lr), 0)
        write_steps(sink, spec, 0, last)
    if finish:
        store.finish_run(run_id, _outcome(spec))
    else:
        _forecast(store, run_id, spec, last)


def _forecast(store: Store, run_id: int, spec: RunSpec, last: int) -> None:
    """What the sweep's monitor records for a running run: its final test loss predicted at its latest
    evaluation (here the true final value, 2% high, with a band of +-0.05)."""
    w, d, steps = spec.model.width, spec.model.depth, spec.train.steps
    at = last - last % spec.train.eval_every
    final = (curve(w, d, steps, steps) + 0.05) * 1.02
    plan: dict[str, object] = {"hashes": ["pinned"], "plans": {}}
    store.add_prediction(NewPrediction(
        store.experiment_id(spec.experiment) or 0, PredictionSource.MONITOR, w, d, "params", float(params_of(w, d)),
        f"depth={d}", LossRule.FINAL.value, final, final - 0.05, final + 0.05, 0.9, None, plan,
        {"fraction": at / steps}, kind=PredictionKind.CURVE, run_id=run_id, at_step=at, steps=steps, form=CURVE_FORM))


def _alerts(registered: list[tuple[int, RunSpec]]) -> list[Alert]:
    by_shape = {(s.model.width, s.model.depth, s.seed): run_id for run_id, s in registered}
    alerts = []
    if (8, 4, 0) in by_shape:
        alerts.append(Alert("vanishing_gradients", "warning", 40, "first/last layer grad norm 0.004 at step 40",
                            "add normalisation or residual connections", {"ratio": 0.004},
                            run_id=by_shape[(8, 4, 0)]))
        alerts.append(Alert("non_monotonic", "warning", None, "width 8: depth 4 worse than depth 2 by 0.15",
                            "check the learning rate of the deeper model", {"width": 8, "depth_large": 4}))
    return alerts


def _pin_timestamps(path: Path) -> None:
    """Fixed times everywhere, so what the app shows does not depend on when the file was written."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE events SET at = ?", [PINNED])
        conn.execute("UPDATE runs SET created_at = ?, heartbeat_at = ?", [PINNED, PINNED])
        conn.execute("UPDATE runs SET started_at = ? WHERE started_at IS NOT NULL", [PINNED])
        conn.execute("UPDATE runs SET finished_at = ? WHERE finished_at IS NOT NULL", [FINISHED_AT])
        conn.execute("UPDATE alerts SET first_seen_at = ?, updated_at = ?", [PINNED, PINNED])
        conn.execute("UPDATE predictions SET created_at = ?", [PINNED])
    conn.close()


def extend_run(path: Path, run_id: int, spec: RunSpec, first: int, last: int) -> None:
    """Append steps first..last to a run, as its worker would (one flush)."""
    with StoreSink(path, run_id) as sink:
        write_steps(sink, spec, first, last)
