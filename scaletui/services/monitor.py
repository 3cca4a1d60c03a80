"""Live alerts: the detectors of `analysis.diagnose`, run on a sweep's runs while they train.

Why here. Workers must only train (a detector pass in a worker steals time from its run and would need
every other run's losses for the group checks), and the app must only read (an app that is closed, or a
headless sweep, still has to produce alerts). So one thread in the runner process watches the database
the workers write, the same way the app does: `Reader` queries with per-run cursors, reading only what
is new. Every `interval_s` it

* diagnoses each run of this sweep that has new records (`diagnose_run` over the run's whole series so
  far: the detectors are replayable, so the step an alert names does not move as the run grows) and
  syncs that run's alerts (`Store.sync_alerts`: inserted, updated, or deactivated when evidence fades);
* when runs of the sweep finish, runs the group detectors (`diagnose_group`: non-monotonic scaling, seed
  sensitivity) over the sweep's finished runs, by the sweep's loss rule.

A last pass runs when the executor returns, so a headless sweep's alerts are complete when its summary
prints. A failing pass is logged and recorded as a `monitor_error` event; it never stops the sweep.

Grouping. The group detectors compare sizes (width, depth) over seeds. Other axes of the sweep either
define *what* is being scaled (data.*, model.arch, model.init, model.norm: one group analysis each) or are
nuisance hyperparameters (train.*, model.dropout): for those each size is judged at its best setting (lowest
mean loss over seeds), since a scaling trend is only meaningful with every size tuned.

Memory. Per running run only the four metrics and three layer statistics the detectors read are kept,
one value per step (a replayed step overwrites), and a run's state is dropped once it has finished.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scaletui.analysis.diagnose import GroupRow, Thresholds, diagnose_group, diagnose_run, series_from_records
from scaletui.analysis.configurator import mlp_params
from scaletui.config import Sweep, axis_value
from scaletui.datasets import DATASETS
from scaletui.records import Alert, LayerStats, MetricRecord, RunSpec, RunStatus
from scaletui.store.alerts import alert_subject
from scaletui.store.reader import Reader
from scaletui.store.writer import Store

log = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 2.0
_DIAGNOSED_KEYS = frozenset({"train_loss", "test_loss", "test_acc", "train_acc"})
_GOOD = (RunStatus.DONE.value, RunStatus.EARLY_STOPPED.value)  # their loss counts; diverged ones do not
_BEFORE_ANY_STEP = -(2**62)
_SIZE_AXES = ("model.width", "model.depth", "train.seeds")


def _is_nuisance(axis: str) -> bool:
    """Hyperparameters every size should be tuned over, rather than groups of their own."""
    return axis.startswith("train.") or axis == "model.dropout"


def _config_params(spec: RunSpec) -> int | None:
    """Parameters of an mlp/resmlp from its config (no torch); None for other architectures."""
    if spec.model.arch not in ("mlp", "resmlp"):
        return None
    info = DATASETS[spec.data.dataset]
    return mlp_params(math.prod(info.input_shape), spec.model.width, spec.model.depth, info.num_classes,
                      spec.model.arch, spec.model.norm)


def _run_subject(run_id: int) -> str:
    return alert_subject(Alert("", "", None, "", "", run_id=run_id))


# --------------------------------------------------------------------------- grouping (pure)


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of the sweep with its loss by the sweep's rule."""

    run_id: int
    spec: RunSpec
    loss: float


def _values(spec: RunSpec, axes: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    return tuple((axis, axis_value(spec, axis)) for axis in axes)


def _split_axes(axes: Iterable[str]) -> tuple[list[str], list[str]]:
    """(group axes, nuisance axes) among a sweep's axes other than width, depth and seeds."""
    others = [a for a in axes if a not in _SIZE_AXES]
    return [a for a in others if not _is_nuisance(a)], [a for a in others if _is_nuisance(a)]


def group_tables(runs: Iterable[FinishedRun], axes: Iterable[str]) -> dict[tuple[tuple[str, Any], ...], list[GroupRow]]:
    """One table of GroupRows per setting of the group axes; each size keeps only the seeds of its best
    nuisance setting (lowest mean loss over seeds)."""
    group_axes, nuisance_axes = _split_axes(axes)
    points: dict[tuple, dict[tuple, dict[tuple, list[FinishedRun]]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        size = (run.spec.model.width, run.spec.model.depth)
        point = points[_values(run.spec, group_axes)][size]
        point.setdefault(_values(run.spec, nuisance_axes), []).append(run)
    tables = {}
    for group, sizes in points.items():
        best = [min(by_point.values(), key=lambda rs: sum(r.loss for r in rs) / len(rs)) for by_point in sizes.values()]
        tables[group] = [GroupRow(r.spec.model.width, r.spec.model.depth, r.spec.seed, r.loss, r.run_id)
                         for seeds in best for r in seeds]
    return tables


def _label(group: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{axis}={value}" for axis, value in group)


def group_alerts(runs: Iterable[FinishedRun], axes: Iterable[str], thresholds: Thresholds) -> list[Alert]:
    """diagnose_group over every group table. With group axes the message names the group; two groups
    raising the same kind about the same sizes share one stored row (the table keeps one per subject
    and kind), so the first is kept and names the others."""
    merged: dict[tuple[str, str], Alert] = {}
    for group, rows in group_tables(runs, axes).items():
        for alert in diagnose_group(rows, thresholds):
            if group:
                alert = _with_message(alert, f"[{_label(group)}] {alert.message}")
            key = (alert_subject(alert), alert.kind)
            if key in merged:
                alert = _with_message(merged[key], f"{merged[key].message}; also in [{_label(group)}]")
            merged[key] = alert
    return list(merged.values())


def _with_message(alert: Alert, message: str) -> Alert:
    return Alert(alert.kind, alert.severity, alert.step, message, alert.suggestion, alert.evidence, alert.run_id)


# --------------------------------------------------------------------------- per-run state


@dataclass
class _Track:
    """What the monitor keeps of one run between passes: cursors and the diagnosed records."""

    run_id: int
    spec: RunSpec
    started_at: str | None = None
    metrics: dict[tuple[int, str], MetricRecord] = field(default_factory=dict)
    layers: dict[tuple[int, int], LayerStats] = field(default_factory=dict)
    metric_step: int = _BEFORE_ANY_STEP  # highest step read so far
    layer_step: int = _BEFORE_ANY_STEP
    signature: tuple[tuple[Any, ...], ...] | None = None  # the alerts last synced

    def restart(self, started_at: str | None) -> None:
        """A (re)start: the worker dropped records after its resume step, so read everything again."""
        self.started_at = started_at
        self.metrics.clear()
        self.layers.clear()
        self.metric_step = self.layer_step = _BEFORE_ANY_STEP

    def take(self, metrics: Sequence[MetricRecord], layers: Sequence[LayerStats]) -> bool:
        """Keep the new records the detectors read; True when anything was new."""
        for r in metrics:
            if r.key in _DIAGNOSED_KEYS:
                self.metrics[(r.step, r.key)] = r
        for s in layers:
            self.layers[(s.step, s.layer)] = s
        self.metric_step = max([self.metric_step, *(r.step for r in metrics)])
        self.layer_step = max([self.layer_step, *(s.step for s in layers)])
        return bool(metrics or layers)


# --------------------------------------------------------------------------- the monitor


class SweepMonitor:
    """Watches one sweep's runs from a thread of the runner; a context manager around executor.run.

    `run_pass()` is one pass (tests call it directly); `start()`/`stop()` run it every `interval_s`
    in a daemon thread, plus a final pass on stop."""

    def __init__(self, sweep: Sweep, experiment_id: int, run_ids: Iterable[int], *,
                 interval_s: float = MONITOR_INTERVAL_S) -> None:
        self.sweep = sweep
        self.experiment_id = experiment_id
        self.interval_s = interval_s
        self.thresholds = sweep.thresholds
        self._specs = {spec.key: spec for spec in sweep.runs}
        self._config_sizes = [n for n in map(_config_params, sweep.runs) if n is not None]
        self._watch = set(run_ids)  # runs this sweep trains: diagnosed as they progress
        self._tracks: dict[int, _Track] = {}
        self._before: dict[int, str | None] = {}  # started_at of watched runs left unfinished by an earlier sweep
        self._rows: dict[int, dict[str, Any]] = {}  # latest run_summary row of every run of this sweep
        self._rev = 0
        self._group_dirty = True
        self._group_subjects: set[str] | None = None
        self._group_signature: tuple[tuple[Any, ...], ...] | None = None
        self._reader: Reader | None = None
        self._store: Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.final_pass = True

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> SweepMonitor:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.final_pass = exc_type is None or not issubclass(exc_type, KeyboardInterrupt)  # aborted: just go
        self.stop()

    def start(self) -> None:
        """First pass here, before any worker starts: it tells runs an earlier sweep left interrupted or
        failed (to be resumed) from runs this sweep has already run."""
        self.safe_pass()
        self._thread = threading.Thread(target=self._loop, name="scaletui-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop the thread after its final pass (bounded: a stuck pass cannot hang the sweep's exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.safe_pass()
        if self.final_pass:
            self.safe_pass()
        self.close()

    def close(self) -> None:
        for handle in (self._reader, self._store):
            if handle is not None:
                handle.close()
        self._reader = self._store = None

    def safe_pass(self) -> None:
        """One pass; a failure is logged and recorded as an event, never raised into the sweep."""
        try:
            self.run_pass()
        except Exception as exc:  # noqa: BLE001 - alerts are advisory; the sweep must go on
            self._report(f"{type(exc).__name__}: {exc}")

    def _report(self, error: str) -> None:
        log.warning("alert monitor: %s", error)
        if error == self._last_error:  # the same failure every 2 s is one event, not hundreds
            return
        self._last_error = error
        try:
            self._handles()[1].add_event(None, "monitor_error", f"alert monitor: {error}")
        except Exception:  # noqa: BLE001 - the database itself may be what failed
            log.debug("could not record the monitor error", exc_info=True)

    def _handles(self) -> tuple[Reader, Store]:
        if self._store is None:
            self._store = Store(self.sweep.db)
        if self._reader is None:
            self._reader = Reader(self.sweep.db)
        return self._reader, self._store

    # ----------------------------------------------------------------- one pass

    def run_pass(self) -> None:
        """Read what changed, diagnose the runs that have new records, and the group if runs finished."""
        reader, _ = self._handles()
        rev, rows = reader.changed_runs_since(self._rev)
        for row in rows:
            if row["key"] in self._specs:
                self._rows[row["id"]] = row
                if row["id"] in self._watch:
                    self._group_dirty |= self._follow(row)
        if self._group_dirty:
            self._group_pass()
            self._group_dirty = False
        self._rev = rev  # only now: a pass that failed half-way is redone from the same cursor

    def _follow(self, row: Mapping[str, Any]) -> bool:
        """Diagnose one watched run if it has new records; True when it has just finished."""
        if row["id"] not in self._tracks:
            if row["status"] not in (RunStatus.RUNNING.value, *_GOOD, RunStatus.DIVERGED.value):
                self._before[row["id"]] = row["started_at"]
            self._tracks[row["id"]] = _Track(row["id"], self._specs[row["key"]])
        if row["status"] == RunStatus.QUEUED.value or self._before.get(row["id"], 0) == row["started_at"]:
            return False  # not started by this sweep yet (a resumable run keeps its old state until then)
        track = self._tracks[row["id"]]
        if row["started_at"] != track.started_at:
            track.restart(row["started_at"])
        if self._read_new(track) and row["params"]:
            self._diagnose(track, row)
        if row["status"] == RunStatus.RUNNING.value:
            return False
        del self._tracks[row["id"]]  # finished, failed or interrupted: its alerts are final
        self._watch.discard(row["id"])
        return row["status"] in _GOOD

    def _read_new(self, track: _Track) -> bool:
        """Records since the cursors. The cursor's own step is read again: an evaluation at a step can
        land in the flush after the one that carried that step's train loss."""
        reader, _ = self._handles()
        metrics = reader.records_since(track.run_id, track.metric_step - 1)
        layers = reader.layer_stats_since(track.run_id, track.layer_step - 1)
        known = len(track.metrics) + len(track.layers)
        track.take(metrics, layers)
        return len(track.metrics) + len(track.layers) != known

    def _diagnose(self, track: _Track, row: Mapping[str, Any]) -> None:
        spec = track.spec
        series = series_from_records(
            track.metrics.values(), track.layers.values(), run_id=track.run_id, width=spec.model.width,
            depth=spec.model.depth, params=int(row["params"]), lr=row["lr_effective"] or spec.train.lr,
            base_lr=spec.train.lr, lr_ref_params=spec.train.lr_ref_params, dropout=spec.model.dropout)
        alerts = diagnose_run(series, self.thresholds, group_best=self._group_best(spec),
                              ref_params=self._ref_params(spec))
        signature = tuple((a.kind, a.severity, a.step, a.message) for a in alerts)
        if signature != track.signature:
            self._handles()[1].sync_alerts(self.experiment_id, alerts, subjects=[_run_subject(track.run_id)])
            track.signature = signature

    def _finished(self) -> list[FinishedRun]:
        return [FinishedRun(run_id, self._specs[row["key"]], float(row["loss"])) for run_id, row in self._rows.items()
                if row["status"] in _GOOD and row["loss"] is not None and math.isfinite(row["loss"])]

    def _group_best(self, spec: RunSpec) -> float | None:
        """Best finished loss among runs of the same width (and the same group axes): "far from the best"."""
        group_axes, _ = _split_axes(self.sweep.axes)
        mine = _values(spec, group_axes)
        losses = [r.loss for r in self._finished()
                  if r.spec.model.width == spec.model.width and _values(r.spec, group_axes) == mine]
        return min(losses, default=None)

    def _ref_params(self, spec: RunSpec) -> int | None:
        """The size the learning rate was tuned at: the run's lr_ref_params, else the sweep's smallest model
        (counted from the config for MLPs, so it is known before that model has started)."""
        if spec.train.lr_ref_params:
            return spec.train.lr_ref_params
        sizes = [int(row["params"]) for row in self._rows.values() if row["params"]]
        return min([*sizes, *self._config_sizes], default=None)

    def _group_pass(self) -> None:
        alerts = group_alerts(self._finished(), self.sweep.axes, self.thresholds)
        signature = tuple(sorted((alert_subject(a), a.kind, a.message) for a in alerts))
        if signature == self._group_signature:
            return
        reader, store = self._handles()
        if self._group_subjects is None:  # group rows stored before (an earlier sweep) may be stale now
            self._group_subjects = {row["subject"] for row in reader.alerts(self.sweep.name) if row["run_id"] is None}
        store.sync_alerts(self.experiment_id, alerts, subjects=self._group_subjects)
        self._group_subjects |= {alert_subject(a) for a in alerts}
        self._group_signature = signature
