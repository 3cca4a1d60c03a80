"""What the app knows of the sweep, kept on the UI thread and changed only by applying a `Snapshot`.

`SweepState.apply` folds one snapshot into the state and returns a `Changes` record saying what
moved (which runs, whether the selected run's curves or layers grew, new events, alerts, the grid),
so each widget redraws only when its inputs changed. Plain Python, no textual: unit tested.

Memory is bounded by what is tracked: whole series (compact `array`s) only for the selected run and its
group and for the one metric of the compared (marked) runs, per-layer series only for the selected run,
the latest few hundred events.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from scaletui.core.rows import AlertRow, EventRow, FinalLoss, RunSummary
from scaletui.tui.model import badge, comparison_group
from scaletui.tui.poller import Forecast, LayerUpdate, LiveValues, SeriesUpdate, Snapshot, series_keys

EVENT_LOG_LINES = 300


@dataclass
class Series:
    """One metric of one run, in step order."""

    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))

    def extend(self, steps: Iterable[int], values: Iterable[float]) -> None:
        self.steps.extend(steps)
        self.values.extend(values)


@dataclass
class LayerSeries:
    """One layer of the selected run: gradient and weight norms over steps, non-finite count."""

    name: str
    steps: array = field(default_factory=lambda: array("q"))
    grad: array = field(default_factory=lambda: array("d"))
    weight: array = field(default_factory=lambda: array("d"))
    nonfinite: int = 0


@dataclass
class Changes:
    """What one applied snapshot changed (widgets redraw accordingly)."""

    runs: set[int] = field(default_factory=set)  # rows or live values changed
    added: set[int] = field(default_factory=set)  # runs seen for the first time
    series: set[int] = field(default_factory=set)
    layers: bool = False
    events: list[EventRow] = field(default_factory=list)
    alerts: bool = False
    grid: bool = False
    experiments: bool = False
    finished: set[int] = field(default_factory=set)  # runs that just reached a finished status
    metric_keys: bool = False  # a compared run logged a metric not seen before


class SweepState:
    """The app's data, current as of the last applied snapshot (what the user chose to see is `View`)."""

    def __init__(self) -> None:
        self.runs: dict[int, RunSummary] = {}
        self.live_train: dict[int, float] = {}
        self.live_test: dict[int, float] = {}
        self.live_best: dict[int, float] = {}
        self.series: dict[tuple[int, str], Series] = {}
        self.metric_keys: dict[int, frozenset[str]] = {}  # of the compared runs: the metrics they logged
        self.layers_of: int | None = None
        self.layers: dict[int, LayerSeries] = {}
        self.alerts: dict[int, AlertRow] = {}
        self.badges: dict[int, str] = {}
        self.events: deque[EventRow] = deque(maxlen=EVENT_LOG_LINES)
        self.forecasts: dict[int, Forecast] = {}  # run id -> its latest `pred. final`
        self.final_losses: tuple[FinalLoss, ...] = ()
        self.experiments: tuple[str, ...] = ()
        self.polled_at: float | None = None
        self.error: str | None = None

    # ----------------------------------------------------------------- applying

    def apply(self, snap: Snapshot) -> Changes:
        changes = Changes()
        self.polled_at, self.error = snap.polled_at, snap.error
        self._apply_runs(snap, changes)
        for live in snap.live:
            self._apply_live(live)
            changes.runs.add(live.run_id)
        self._apply_series(snap, changes)
        self._apply_metric_keys(snap, changes)
        self._apply_layers(snap.layers, changes)
        self._apply_forecasts(snap.forecasts, changes)
        self.events.extend(snap.events)
        changes.events = list(snap.events)
        if snap.alerts:
            self._apply_alerts(snap.alerts)
            changes.alerts = True
        if snap.final_losses is not None:
            self.final_losses, changes.grid = snap.final_losses, True
        if snap.experiments is not None and snap.experiments != self.experiments:
            self.experiments, changes.experiments = snap.experiments, True
        return changes

    def _apply_runs(self, snap: Snapshot, changes: Changes) -> None:
        for run in snap.runs:
            old = self.runs.get(run.id)
            if old is None:
                changes.added.add(run.id)
            elif run.finished and not old.finished:
                changes.finished.add(run.id)
            if run.finished:  # the row's final values take over
                self._forget_live(run.id)
            self.runs[run.id] = run
            changes.runs.add(run.id)

    def _apply_live(self, live: LiveValues) -> None:
        run_id = live.run_id
        if live.reset:
            self._forget_live(run_id)
        if live.train is not None:
            self.live_train[run_id] = live.train.value
        for _, value in live.test:
            self.live_test[run_id] = value
            if math.isfinite(value) and value < self.live_best.get(run_id, math.inf):
                self.live_best[run_id] = value

    def _forget_live(self, run_id: int) -> None:
        for values in (self.live_train, self.live_test, self.live_best):
            values.pop(run_id, None)

    def _apply_series(self, snap: Snapshot, changes: Changes) -> None:
        kept = series_keys(snap.tracked, snap.compared)  # the others are no longer read: dropped
        for stale in [k for k in self.series if k not in kept]:
            del self.series[stale]
        for update in snap.series:
            self._extend_series(update)
            changes.series.add(update.run_id)

    def _apply_metric_keys(self, snap: Snapshot, changes: Changes) -> None:
        marked = snap.compared[0]
        for stale in [run_id for run_id in self.metric_keys if run_id not in marked]:
            del self.metric_keys[stale]
        for run_id, keys in snap.metric_keys:
            self.metric_keys[run_id] = keys
            changes.metric_keys = True

    def _extend_series(self, update: SeriesUpdate) -> None:
        key = (update.run_id, update.key)
        if update.reset or key not in self.series:
            self.series[key] = Series()
        self.series[key].extend(update.steps, update.values)

    def _apply_layers(self, updates: Iterable[LayerUpdate], changes: Changes) -> None:
        for update in updates:
            if update.reset or update.run_id != self.layers_of:
                self.layers_of, self.layers = update.run_id, {}
            for row in update.rows:
                layer = self.layers.setdefault(row.layer, LayerSeries(row.name))
                layer.steps.append(row.step)
                layer.grad.append(row.grad_norm)
                layer.weight.append(row.weight_norm)
                layer.nonfinite += row.nonfinite
            changes.layers = True

    def _apply_forecasts(self, forecasts: Iterable[Forecast], changes: Changes) -> None:
        for f in forecasts:  # in the order they were recorded: the last one of a run is its latest
            self.forecasts[f.run_id] = f
            changes.runs.add(f.run_id)
            changes.series.add(f.run_id)  # its loss plot's continuation

    def _apply_alerts(self, rows: Iterable[AlertRow]) -> None:
        for row in rows:
            if row.active:
                self.alerts[row.id] = row
            else:
                self.alerts.pop(row.id, None)
        self.badges = alert_badges(self.alerts.values())

    # ----------------------------------------------------------------- derived values

    def train_loss(self, run: RunSummary) -> float | None:
        """Latest train loss: the latest record until the run finishes, the stored final value after."""
        return self.live_train.get(run.id, run.final_train_loss)

    def test_loss(self, run: RunSummary) -> float | None:
        """"The loss of the run" once finished; the latest test evaluation before that (also for a
        stopped run: what the database last recorded)."""
        if run.finished and run.loss is not None:
            return run.loss
        return self.live_test.get(run.id, run.final_test_loss)

    def best_loss(self, run: RunSummary) -> float | None:
        return run.best_test_loss if run.best_test_loss is not None else self.live_best.get(run.id)

    def compared_metrics(self, run_ids: Iterable[int]) -> set[str]:
        """The metrics any of `run_ids` logged (as far as the compared runs' names were read)."""
        return {key for run_id in run_ids for key in self.metric_keys.get(run_id, ())}

    def group_of(self, run_id: int, group_by: str) -> list[int]:
        """The other runs drawn faint next to `run_id`: its comparison group along the ranked axis."""
        run = self.runs.get(run_id)
        if run is None:
            return []
        across = "depth" if group_by == "width" else "width"
        key = comparison_group(run, across)
        return [r.id for r in self.runs.values() if r.id != run_id and comparison_group(r, across) == key]


def alert_badges(alerts: Iterable[AlertRow]) -> dict[int, str]:
    """Per run, its active alerts as short badges, most severe first."""
    per_run: dict[int, list[tuple[int, str]]] = {}
    for a in alerts:
        if a.run_id is not None:
            per_run.setdefault(a.run_id, []).append((a.severity.rank, badge(a.kind)))
    return {run_id: " ".join(b for _, b in sorted(set(items))) for run_id, items in per_run.items()}
