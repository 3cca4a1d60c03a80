"""The app's only way to see the database: incremental reads, one immutable snapshot per poll.

Why a poller and not a push channel: the app must show a sweep started by another process (a
headless run in another terminal) exactly like its own, and the database is the one thing both
share. So every half second a thread worker calls `Poller.poll()`, which asks the `Tracker` (the
incremental reader the runner's alert monitor uses too) only for what is new since the last poll:
runs whose `rev` moved, metrics and layer statistics after per-run cursors, events after the last id,
alerts after the last `rev`. What it found travels to the UI thread as one frozen `Snapshot`; the
poller itself never touches a widget, and the UI never touches SQL. A poll that fails half-way moves
no cursor (the tracker puts them back), so the next poll reads the same rows again.

What is read per run is bounded by what is on screen. Every unfinished run that has steps gets its
latest train loss and new test-loss evaluations (for the runs table): incrementally while it runs,
and once more when its row changes after it stopped, so an interrupted run shows the database's last
values, not those of the poll before it stopped (a finished run's row has its final values). Whole
series are read only for the *tracked* runs: the selected run (train and test loss, per-layer
statistics), the runs of its group (test loss, drawn faint) and the *compared* (marked) runs (the one
metric the loss pane overlays for them). Of the compared runs the poller also learns which metrics they
logged (the names `v` cycles through), incrementally too: only the steps after the last one looked at.
A run's series is read again only when its row changed (its `rev` moved), and from the start when the
run started again (a resume rewrites the steps after its checkpoint).

This module imports no textual (it is plain Python over `scaletui.services.tracker`), so it is unit
tested and benchmarked without an app.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from scaletui.core.records import LayerStats
from scaletui.core.rows import AlertRow, EventRow, FinalLoss, MetricPoint, RunSummary
from scaletui.core.vocabulary import (
    BEFORE_ANY_STEP,
    NOISE_SCALE_METRIC,
    TEST_LOSS_METRIC,
    TRAIN_LOSS_METRIC,
    PredictionKind,
    RunStatus,
)
from scaletui.services.tracker import LAYERS, READ_ERRORS, Tracker

EVENT_BACKLOG = 500  # events read on the first poll (the log shows the latest ones anyway)
TRAIN, TEST = TRAIN_LOSS_METRIC, TEST_LOSS_METRIC
# Whose cursors, in the tracker: each reads the same rows for another purpose.
LIVE = "live"  # the latest values of unfinished runs (the runs table)
SERIES = "series"  # whole curves of the tracked runs (the loss pane)
GRADIENTS = "gradients"  # layer statistics of the selected run (the gradient pane)

Tracked = tuple[int | None, frozenset[int]]  # the selected run, its group
Compared = tuple[frozenset[int], str | None]  # the marked runs, the metric drawn for them


def series_keys(tracked: Tracked, compared: Compared) -> set[tuple[int, str]]:
    """(run, metric) of every series read: train and test loss and the gradient noise scale (the gradient
    pane's) of the selected run, test loss of its group, the compared metric of the compared runs."""
    selected, group = tracked
    marked, metric = compared
    keys = {(selected, TRAIN), (selected, TEST), (selected, NOISE_SCALE_METRIC)} if selected is not None else set()
    keys |= {(run_id, TEST) for run_id in group}
    return keys | ({(run_id, metric) for run_id in marked} if metric is not None else set())


@dataclass(frozen=True)
class SeriesUpdate:
    """New points of one metric of one tracked run; `reset` means "this is the whole series"."""

    run_id: int
    key: str  # train_loss | test_loss | the compared metric
    reset: bool
    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class LayerUpdate:
    """New per-layer statistics of the selected run; `reset` as in SeriesUpdate."""

    run_id: int
    reset: bool
    rows: tuple[LayerStats, ...]


@dataclass(frozen=True)
class LiveValues:
    """What an unfinished run's table row needs beyond its `runs` row: latest train loss, new test
    points; `reset` means the test points start from the first evaluation (forget the earlier ones)."""

    run_id: int
    train: MetricPoint | None
    test: tuple[MetricPoint, ...]
    reset: bool = False


@dataclass(frozen=True)
class Forecast:
    """A running run's final loss as the sweep's monitor last predicted it (`pred. final`)."""

    id: int
    run_id: int
    at_step: int
    steps: int
    predicted: float
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one poll found, immutable, handed to the UI thread in one message."""

    polled_at: float  # the poller's clock (wall time) when the poll finished
    runs: tuple[RunSummary, ...] = ()
    live: tuple[LiveValues, ...] = ()
    series: tuple[SeriesUpdate, ...] = ()
    layers: tuple[LayerUpdate, ...] = ()
    events: tuple[EventRow, ...] = ()
    alerts: tuple[AlertRow, ...] = ()
    final_losses: tuple[FinalLoss, ...] | None = None  # None: unchanged since the last snapshot
    experiments: tuple[str, ...] | None = None  # None: unchanged
    tracked: Tracked = (None, frozenset())
    error: str | None = None  # why nothing could be read (e.g. no database yet)
    compared: Compared = (frozenset(), None)
    metric_keys: tuple[tuple[int, frozenset[str]], ...] = ()  # compared runs whose metric names grew: all of them
    forecasts: tuple[Forecast, ...] = ()  # curve predictions recorded since the last snapshot

    @property
    def empty(self) -> bool:
        return not (self.runs or self.live or self.series or self.layers or self.events or self.alerts
                    or self.final_losses is not None or self.experiments is not None or self.metric_keys
                    or self.forecasts)


@dataclass(frozen=True)
class _KeysRead:
    """Where the poller stopped learning one compared run's metric names: the last step looked at."""

    step: int
    keys: frozenset[str]


class Poller:
    """Incremental reader of one database for the app. `poll()` runs in one thread at a time; `track()`
    may be called from any thread (it swaps one tuple, which is atomic)."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db_path = Path(db_path)
        self.clock = clock
        self.tracker = Tracker(self.db_path, event_backlog=EVENT_BACKLOG)
        self.experiment_names: tuple[str, ...] = ()
        self._wanted: Tracked = (None, frozenset())
        self._compared: Compared = (frozenset(), None)
        self._keys: dict[int, _KeysRead] = {}  # of the compared runs; moved only by a poll that succeeded
        self._forecasts_after = 0  # the last curve prediction read; moved only by a poll that succeeded
        self._first = True

    def track(self, selected: int | None, group: Iterable[int] = ()) -> None:
        """Read whole series for `selected` (train, test, layers) and test loss for `group`."""
        self._wanted = (selected, frozenset(group) - {selected} if selected is not None else frozenset())

    def compare(self, runs: Iterable[int], metric: str | None) -> None:
        """Read the series of `metric` (None: none yet) and the metric names of each of `runs`."""
        self._compared = (frozenset(runs), metric)

    def close(self) -> None:
        self.tracker.close()

    # ----------------------------------------------------------------- one poll

    def poll(self) -> Snapshot:
        """Read what is new; never raises for a missing or busy database (the snapshot says why)."""
        wanted, compared = self._wanted, self._compared
        try:
            with self.tracker.transaction():
                snapshot, keys = self._read(wanted, compared)
        except READ_ERRORS as exc:
            return Snapshot(self.clock(), tracked=wanted, error=self.tracker.describe(exc), compared=compared)
        self._first = False
        self._keys = keys
        self._forecasts_after = max((f.id for f in snapshot.forecasts), default=self._forecasts_after)
        if snapshot.experiments is not None:
            self.experiment_names = snapshot.experiments
        return snapshot

    def _read(self, wanted: Tracked, compared: Compared) -> tuple[Snapshot, dict[int, _KeysRead]]:
        runs = tuple(self.tracker.changed_runs())
        changed = {run.id for run in runs}
        live = tuple(self._live(runs))
        series = tuple(self._series(wanted, compared, changed))
        keys, metric_keys = self._metric_keys(compared[0], {run.id: run for run in runs})
        layers = tuple(self._layers(wanted[0], changed))
        events = tuple(self.tracker.new_events())
        experiments = self._experiments(runs)
        alerts = tuple(self.tracker.changed_alerts())
        finals = self._final_losses(runs)
        forecasts = tuple(self._forecasts())
        return Snapshot(self.clock(), runs, live, series, layers, events, alerts, finals, experiments, wanted,
                        compared=compared, metric_keys=metric_keys, forecasts=forecasts), keys

    # ----------------------------------------------------------------- parts

    def _live(self, runs: tuple[RunSummary, ...]) -> Iterable[LiveValues]:
        """Latest train loss and new test losses of every unfinished run whose row changed. A run that
        just stopped is read up to its last record before its cursors are dropped; read again (its row
        changed: resumed, or marked stale), it starts over."""
        for run in runs:
            if run.finished or not run.step:  # final values are in the row / nothing recorded yet
                self.tracker.forget(run.id, owner=LIVE)
                continue
            # From the start: the last train step and every test evaluation.
            train = self.tracker.points(run.id, TRAIN, owner=LIVE, start=run.step - 1)
            test = self.tracker.points(run.id, TEST, owner=LIVE)
            yield LiveValues(run.id, train.items[-1] if train.items else None, test.items, train.reset)
            if run.status is not RunStatus.RUNNING:
                self.tracker.forget(run.id, owner=LIVE)

    def _series(self, wanted: Tracked, compared: Compared, changed: set[int]) -> Iterable[SeriesUpdate]:
        """Whole series for newly tracked (or restarted) runs, new points for tracked runs that changed."""
        keys = series_keys(wanted, compared)
        self.tracker.keep_only(SERIES, keys)
        for run_id, key in sorted(keys):
            if run_id not in changed and self.tracker.reading(run_id, key, owner=SERIES):
                continue
            fresh = self.tracker.points(run_id, key, owner=SERIES)
            if fresh.items or fresh.reset:
                yield SeriesUpdate(run_id, key, fresh.reset, tuple(p.step for p in fresh.items),
                                   tuple(p.value for p in fresh.items))

    def _metric_keys(self, marked: frozenset[int], changed: dict[int, RunSummary]
                     ) -> tuple[dict[int, _KeysRead], tuple[tuple[int, frozenset[str]], ...]]:
        """Each compared run's metric names: read whole when it is newly compared (or was rewound by a
        resume), from the last step looked at when its row changed, not at all otherwise. Returns the
        new positions (kept only if the whole poll succeeds) and the runs whose names grew."""
        positions: dict[int, _KeysRead] = {}
        grew: list[tuple[int, frozenset[str]]] = []
        for run_id in sorted(marked):
            known, run = self._keys.get(run_id), changed.get(run_id)
            if known is not None and run is None:
                positions[run_id] = known
                continue
            if known is not None and run is not None and run.step is not None and run.step < known.step:
                known = None  # rewound: what was looked at may have been rewritten
            positions[run_id] = self._more_keys(run_id, known)
            if known is None or positions[run_id].keys != known.keys:
                grew.append((run_id, positions[run_id].keys))
        return positions, tuple(grew)

    def _more_keys(self, run_id: int, known: _KeysRead | None) -> _KeysRead:
        """`known` plus the names at its last step (a later flush may add rows there) and after."""
        after = BEFORE_ANY_STEP if known is None else known.step - 1
        rows = self.tracker.reader.metric_keys_since(run_id, after)
        keys = (known.keys if known is not None else frozenset()) | {key for key, _ in rows}
        last = max((step for _, step in rows), default=after if known is None else known.step)
        return _KeysRead(last, keys)

    def _layers(self, selected: int | None, changed: set[int]) -> Iterable[LayerUpdate]:
        self.tracker.keep_only(GRADIENTS, set() if selected is None else {(selected, LAYERS)})
        if selected is None:
            return
        if selected not in changed and self.tracker.reading(selected, LAYERS, owner=GRADIENTS):
            return
        fresh = self.tracker.layer_stats(selected, owner=GRADIENTS)
        if fresh.items or fresh.reset:
            yield LayerUpdate(selected, fresh.reset, fresh.items)

    def _forecasts(self) -> Iterable[Forecast]:
        """Curve predictions recorded since the last poll (one indexed range read on the ledger's id)."""
        for p in self.tracker.reader.predictions(kind=PredictionKind.CURVE, after_id=self._forecasts_after):
            if p.run_id is not None and p.at_step is not None and p.steps is not None:
                yield Forecast(p.id, p.run_id, p.at_step, p.steps, p.predicted, p.lo, p.hi)

    def _experiments(self, runs: tuple[RunSummary, ...]) -> tuple[str, ...] | None:
        """Every experiment's name, on the first poll and when a run of an unknown one appears."""
        unknown = {run.experiment for run in runs} - set(self.experiment_names)
        if not self._first and not unknown:
            return None
        return tuple(e.name for e in self.tracker.reader.experiments())

    def _final_losses(self, runs: tuple[RunSummary, ...]) -> tuple[FinalLoss, ...] | None:
        """Re-read the per-point aggregate only when a run finished (or on the first poll)."""
        if self._first or any(run.finished for run in runs):
            return tuple(self.tracker.reader.final_losses())
        return None
