"""Live alerts: the detectors of `analysis.diagnose`, run on a sweep's runs while they train.

Why here. Workers must only train (a detector pass in a worker steals time from its run and would need
every other run's losses for the group checks), and the app must only read (an app that is closed, or a
headless sweep, still has to produce alerts). So one thread in the runner process watches the database
the workers write, the same way the app does: through a `Tracker` (`scaletui.services.tracker`), reading
only what is new, and everything of a run again when it restarted. Every `interval_s` it

* diagnoses each run of this sweep that has new records (`diagnose_run` over the run's whole series so
  far: the detectors are replayable, so the step an alert names does not move as the run grows) and
  syncs that run's alerts (`Store.sync_alerts`: inserted, updated, or deactivated when evidence fades);
* predicts each running run's final test loss at each of its new evaluations from the sweep's finished
  runs (services.curve_forecasts: the app's `pred. final`), recorded in the predictions ledger (the
  latest one per pass);
* with `train.stop_when_hopeless`, judges every new evaluation of a running run by the rule of
  `analysis.hopeless` (its forecast's band above a finished smaller size of its group, at two
  evaluations in a row) and asks the run's worker to stop a hopeless run with the reason
  (services.stop_requests): it ends `early_stopped`, the reason in its error and its event. Every
  evaluation is judged, not only the latest of a pass, so the rule does not depend on how often the
  monitor looks. Local workers only: a Ray worker cannot take the reason (the key is refused in the
  file with `executor = "ray"`, and ignored with a warning under `scaletui run --executor ray`);
* when runs of the sweep finish, runs the group detectors (`diagnose_group`: non-monotonic scaling, seed
  sensitivity) over the sweep's finished runs, by the sweep's loss rule.

A last pass runs when the executor returns, so a headless sweep's alerts are complete when its summary
prints. A failing pass is logged and recorded as a `monitor_error` event; it never stops the sweep, and
moves no cursor, so the next pass reads the same rows again.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scaletui.analysis.configurator import mlp_params
from scaletui.analysis.diagnose import GroupRow, diagnose_group, diagnose_run, series_from_records
from scaletui.analysis.hopeless import HopelessStreak, best_smaller, is_hopeless, stop_reason
from scaletui.core.config import Sweep, axis_value
from scaletui.core.datasets import DATASETS
from scaletui.core.records import Alert, LayerStats, MetricRecord
from scaletui.core.rows import RunSummary
from scaletui.core.specs import RunSpec
from scaletui.core.thresholds import Thresholds
from scaletui.core.vocabulary import (
    DENSE_ARCHS,
    DIAGNOSED_METRICS,
    TEST_LOSS_METRIC,
    TRAIN_LOSS_METRIC,
    EventKind,
    ExecutorKind,
    RunStatus,
)
from scaletui.services.curve_forecasts import CurveForecaster, LiveRun, anchor_of
from scaletui.services.stop_requests import request_run_stop, signals_reach
from scaletui.services.tracker import Tracker
from scaletui.store.alerts import alert_subject
from scaletui.store.predictions import NewPrediction
from scaletui.store.writer import Store

log = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 2.0
_DIAGNOSED_KEYS = frozenset(DIAGNOSED_METRICS)
_SIZE_AXES = ("model.width", "model.depth", "train.seeds")
_OWNER = "monitor"  # whose cursors, in the tracker


def _is_nuisance(axis: str) -> bool:
    """Hyperparameters every size should be tuned over, rather than groups of their own."""
    return axis.startswith("train.") or axis == "model.dropout"


def _config_params(spec: RunSpec) -> int | None:
    """Parameters of an mlp/resmlp from its config (no torch); None for other architectures."""
    if spec.model.arch not in DENSE_ARCHS:
        return None
    info = DATASETS[spec.data.dataset]
    return mlp_params(math.prod(info.input_shape), spec.model.width, spec.model.depth, info.num_classes,
                      spec.model.arch, spec.model.norm)


def _entrypoint_keys(sweep: Sweep) -> dict[str, RunSpec]:
    """The row key of each run of an entrypoint sweep (`own_records.own_run_key`), with its spec."""
    if sweep.entrypoint is None:
        return {}
    from scaletui.services.own_records import canonical_config, own_run_key

    return {own_run_key(sweep.name, canonical_config(config)): spec
            for spec, config in zip(sweep.runs, sweep.entry_configs, strict=True)}


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
    Values = tuple[tuple[str, Any], ...]
    points: dict[Values, dict[tuple[int, int], dict[Values, list[FinishedRun]]]] = defaultdict(
        lambda: defaultdict(dict))
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


class _Series(Mapping[int, float]):
    """One metric of a track's records as step -> value, read in place: a run's train loss has a value at
    every step, and a forecast reads a log window of it (its peers' too), not all of it."""

    def __init__(self, metrics: Mapping[tuple[int, str], MetricRecord], key: str) -> None:
        self._metrics = metrics
        self._key = key

    def __getitem__(self, step: int) -> float:
        return self._metrics[(step, self._key)].value

    def __iter__(self) -> Iterator[int]:
        return (step for step, key in self._metrics if key == self._key)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class _Track:
    """What the monitor keeps of one run between passes: the records the detectors read."""

    run_id: int
    spec: RunSpec
    metrics: dict[tuple[int, str], MetricRecord] = field(default_factory=dict)
    layers: dict[tuple[int, int], LayerStats] = field(default_factory=dict)
    signature: tuple[tuple[Any, ...], ...] | None = None  # the alerts last synced
    forecast_step: int = 0  # the evaluation step its final loss was last predicted from
    hopeless: HopelessStreak = field(default_factory=HopelessStreak)  # train.stop_when_hopeless's count
    stop_asked: bool = False  # its worker was asked to stop it as hopeless (once)

    def test_losses(self) -> dict[int, float]:
        return dict(_Series(self.metrics, TEST_LOSS_METRIC))

    def live(self, row: RunSummary) -> LiveRun:
        """The run as a forecast reads it: its losses as views of what is kept (a peer's are read at one
        step or one log window, not copied)."""
        return LiveRun(row, self.spec, _Series(self.metrics, TEST_LOSS_METRIC),
                       _Series(self.metrics, TRAIN_LOSS_METRIC))

    def take(self, metrics: Sequence[MetricRecord], layers: Sequence[LayerStats]) -> bool:
        """Keep the new records the detectors read; True when that changed what is kept."""
        known = len(self.metrics) + len(self.layers)
        for r in metrics:
            if r.key in _DIAGNOSED_KEYS:
                self.metrics[(r.step, r.key)] = r
        for s in layers:
            self.layers[(s.step, s.layer)] = s
        return len(self.metrics) + len(self.layers) != known


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
        # A `train.entrypoint` sweep's rows are keyed as runs of one's own loop: they join the group
        # checks (non-monotonic, seed sensitivity) by their spec, while their run-level alerts come
        # from the run handle in the worker, which sees every value as it is logged.
        self._own_keys = _entrypoint_keys(sweep)
        self._specs.update(self._own_keys)
        self._config_sizes = [n for n in map(_config_params, sweep.runs) if n is not None]
        self._watch = set(run_ids)  # runs this sweep trains: diagnosed as they progress
        self._tracks: dict[int, _Track] = {}
        self._before: dict[int, str | None] = {}  # started_at of watched runs left unfinished by an earlier sweep
        self._rows: dict[int, RunSummary] = {}  # latest row of every run of this sweep
        self._tracker = Tracker(sweep.db)
        self._group_dirty = True
        self._group_subjects: set[str] | None = None
        self._group_signature: tuple[tuple[Any, ...], ...] | None = None
        self._store: Store | None = None
        self._forecaster = CurveForecaster(experiment_id)  # `pred. final` of running runs
        self._stop_hopeless = sweep.stop_when_hopeless and sweep.executor is ExecutorKind.LOCAL
        if sweep.stop_when_hopeless and not self._stop_hopeless:
            log.warning("train.stop_when_hopeless is ignored with the %s executor (local workers only)",
                        sweep.executor.value)
        self._references_stale = True  # the forecaster has not read the experiment's earlier runs yet
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
        self._tracker.close()
        if self._store is not None:
            self._store.close()
        self._store = None

    def safe_pass(self) -> None:
        """One pass; a failure is logged and recorded as an event, never raised into the sweep."""
        try:
            self.run_pass()
        except Exception as exc:
            self._report(f"{type(exc).__name__}: {exc}")

    def _report(self, error: str) -> None:
        log.warning("alert monitor: %s", error)
        if error == self._last_error:  # the same failure every 2 s is one event, not hundreds
            return
        self._last_error = error
        try:
            self._writer().add_event(None, EventKind.MONITOR_ERROR, f"alert monitor: {error}")
        except Exception:
            log.debug("could not record the monitor error", exc_info=True)

    def _writer(self) -> Store:
        """The store, opened before the first read (it creates the database if the sweep has not yet)."""
        if self._store is None:
            self._store = Store(self.sweep.db)
        return self._store

    # ----------------------------------------------------------------- one pass

    def run_pass(self) -> None:
        """Read what changed, diagnose the runs that have new records, and the group if runs finished.
        A pass that fails half-way moves no cursor: the next one reads the same rows again."""
        self._writer()
        with self._tracker.transaction():
            to_forecast: list[tuple[_Track, RunSummary]] = []
            for row in self._tracker.changed_runs():
                if row.key in self._own_keys:
                    self._rows[row.id] = row
                    self._group_dirty |= row.ok
                elif row.key in self._specs:
                    self._rows[row.id] = row
                    if row.id in self._watch:
                        self._group_dirty |= self._follow(row, to_forecast)
            # Runs that finished in this pass teach the forecasts made in it (one snapshot): a run whose
            # evaluations arrived in the same pass is judged against them, never against what had finished
            # a pass earlier (a run held or paused after those evaluations would never be judged again).
            if self._references_stale or self._group_dirty:
                self._forecaster.learn_experiment(self._tracker.reader, self.sweep.name)
                self._references_stale = False
            # After every changed run is read: a run's forecast uses its peers' losses at the same step
            # (a bundle's members report together, and the pass reads them one by one).
            for track, row in to_forecast:
                self._forecast(track, row)
            if self._group_dirty:
                self._group_pass()
                self._group_dirty = False

    def _follow(self, row: RunSummary, to_forecast: list[tuple[_Track, RunSummary]]) -> bool:
        """Diagnose one watched run if it has new records (a running one joins `to_forecast`); True when
        it has just finished."""
        if row.id not in self._tracks:
            if row.status is not RunStatus.RUNNING and not row.finished:
                self._before[row.id] = row.started_at
            self._tracks[row.id] = _Track(row.id, self._specs[row.key])
        if row.status is RunStatus.QUEUED or self._before.get(row.id, 0) == row.started_at:
            return False  # not started by this sweep yet (a resumable run keeps its old state until then)
        track = self._tracks[row.id]
        if self._read_new(track) and row.params:
            self._diagnose(track, row)
            if row.status is RunStatus.RUNNING:
                to_forecast.append((track, row))
        if row.status is RunStatus.RUNNING:
            return False
        del self._tracks[row.id]  # finished, failed or interrupted: its alerts are final
        self._watch.discard(row.id)
        self._tracker.forget(row.id, owner=_OWNER)
        return row.ok

    def _read_new(self, track: _Track) -> bool:
        """The run's records not read yet; all of them after a (re)start, which rewrote those after its
        checkpoint (the tracker notices, and what was kept is dropped)."""
        metrics = self._tracker.records(track.run_id, owner=_OWNER)
        layers = self._tracker.layer_stats(track.run_id, owner=_OWNER)
        if metrics.reset:
            track.metrics.clear()
        if layers.reset:
            track.layers.clear()
        return track.take(metrics.items, layers.items)

    def _diagnose(self, track: _Track, row: RunSummary) -> None:
        spec = track.spec
        series = series_from_records(
            track.metrics.values(), track.layers.values(), run_id=track.run_id, width=spec.model.width,
            depth=spec.model.depth, params=int(row.params or 0), lr=row.lr_effective or spec.train.lr,
            base_lr=spec.train.lr, lr_ref_params=spec.train.lr_ref_params, dropout=spec.model.dropout)
        alerts = diagnose_run(series, self.thresholds, group_best=self._group_best(spec),
                              ref_params=self._ref_params(spec))
        signature = tuple((a.kind, a.severity, a.step, a.message) for a in alerts)
        if signature != track.signature:
            self._writer().sync_alerts(self.experiment_id, alerts, subjects=[_run_subject(track.run_id)])
            track.signature = signature

    def _forecast(self, track: _Track, row: RunSummary) -> None:
        """Predict a running run's final loss (services.curve_forecasts) at each of its new evaluations, in
        step order, or, before its first one, at its latest log window once that is in a new tenth of the
        run, and record it; with `train.stop_when_hopeless`, judge each new evaluation."""
        if row.status is not RunStatus.RUNNING:
            return
        steps = track.spec.train.steps
        losses = track.test_losses()
        new = sorted(s for s in losses if track.forecast_step < s < steps)
        if new:
            running = self._running_peers(row)
            # Evaluations that arrived between two passes (a small run evaluates more often than every
            # MONITOR_INTERVAL_S) are each predicted from the run as it stood then: the ledger holds a
            # prediction from every evaluation, however often the monitor happened to look.
            for step in new:
                then = LiveRun(row, track.spec, {s: v for s, v in losses.items() if s <= step})
                self._record(track, row, step, self._forecaster.forecast(then, running))
        elif not any(0 < s < steps for s in losses):  # not evaluated yet: from its train loss
            run = track.live(row)
            anchor = anchor_of(run)
            if anchor is not None and _tenth(anchor[1], steps) > _tenth(track.forecast_step, steps):
                self._record(track, row, anchor[1], self._forecaster.forecast(run, self._running_peers(row)))

    def _record(self, track: _Track, row: RunSummary, step: int, entry: NewPrediction | None) -> None:
        if entry is not None:
            self._writer().add_prediction(entry)
        if self._stop_hopeless:
            self._judge(track, row, step, entry)
        track.forecast_step = step

    def _running_peers(self, row: RunSummary) -> list[LiveRun]:
        """The other followed runs of the run's size with their losses (the forecaster checks the plan)."""
        return [t.live(other)
                for t in self._tracks.values()
                if t.run_id != row.id and (other := self._rows.get(t.run_id)) is not None
                and (other.params, other.depth) == (row.params, row.depth)]

    def _judge(self, track: _Track, row: RunSummary, step: int, entry: NewPrediction | None) -> None:
        """Count one evaluation by analysis.hopeless's rule; ask the worker to stop the run once it says so."""
        if track.stop_asked:
            return
        baseline = best_smaller(self._forecaster.finished_smaller(row, track.spec), float(row.params or 0))
        hopeless = entry is not None and is_hopeless(entry.lo, entry.hi, baseline)
        if not track.hopeless.observe(step, hopeless) or entry is None or baseline is None:
            return
        if entry.lo is None or entry.hi is None:  # is_hopeless said there is a band: never here
            return
        track.stop_asked = True
        level = entry.level or self._forecaster.level
        reason = stop_reason(entry.lo, entry.hi, level, baseline, track.hopeless.steps)
        if not signals_reach(row.host, row.pid) or row.pid is None:
            self._report(f"run {row.id} is hopeless but its worker is on another machine: not stopped ({reason})")
            return
        try:
            request_run_stop(row.pid, row.id, reason)
        except OSError as exc:  # the worker just ended (the run finished) or cannot be signalled
            log.info("could not stop hopeless run %s: %s", row.id, exc)

    def _finished(self) -> list[FinishedRun]:
        return [FinishedRun(run_id, self._specs[row.key], row.loss) for run_id, row in self._rows.items()
                if row.ok and row.loss is not None and math.isfinite(row.loss)]

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
        sizes = [row.params for row in self._rows.values() if row.params]
        return min([*sizes, *self._config_sizes], default=None)

    def _group_pass(self) -> None:
        alerts = group_alerts(self._finished(), self.sweep.axes, self.thresholds)
        signature = tuple(sorted((alert_subject(a), a.kind, a.message) for a in alerts))
        if signature == self._group_signature:
            return
        if self._group_subjects is None:  # group rows stored before (an earlier sweep) may be stale now
            stored = self._tracker.reader.alerts(self.sweep.name)
            self._group_subjects = {row.subject for row in stored if row.run_id is None}
        self._writer().sync_alerts(self.experiment_id, alerts, subjects=self._group_subjects)
        self._group_subjects |= {alert_subject(a) for a in alerts}
        self._group_signature = signature


def _tenth(step: int, steps: int) -> int:
    """Which tenth of a run of `steps` steps `step` is in (0 before its first tenth)."""
    return 10 * step // steps if steps > 0 else 0
