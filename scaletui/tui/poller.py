"""The app's only way to see the database: incremental reads, one immutable snapshot per poll.

Why a poller and not a push channel: the app must show a sweep started by another process (a
headless run in another terminal) exactly like its own, and the database is the one thing both
share. So every half second a thread worker calls `Poller.poll()`, which asks only for what is new
since the last poll: runs whose `rev` moved, metrics and layer statistics after a per-run cursor,
events after the last id, alerts after the last `rev`. What it found travels to the UI thread as
one frozen `Snapshot`; the poller itself never touches a widget, and the UI never touches SQL.

What is read per run is bounded by what is on screen. Every unfinished run that has steps gets its
latest train loss and new test-loss evaluations (for the runs table): incrementally while it runs,
and once more when its row changes after it stopped, so an interrupted run shows the database's last
values, not those of the poll before it stopped (a finished run's row has its final values). Whole
series are read only for the *tracked* runs: the selected run (train and test loss, per-layer
statistics) and the runs of its group (test loss, drawn faint). A run's series is read again only
when its row changed (its `rev` moved).

This module imports no textual (it is plain Python over `scaletui.store.Reader`), so it is unit
tested and benchmarked without an app.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaletui.records import LayerStats
from scaletui.store.errors import StoreError
from scaletui.store.reader import Reader
from scaletui.tui.model import FINISHED, RunRow

_START = -(2**62)  # a cursor before any step
EVENT_BACKLOG = 500  # events read on the first poll (the log shows the latest ones anyway)


@dataclass(frozen=True)
class SeriesUpdate:
    """New points of one metric of one tracked run; `reset` means "this is the whole series"."""

    run_id: int
    key: str  # train_loss | test_loss
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
    train: tuple[int, float] | None
    test: tuple[tuple[int, float], ...]
    reset: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Everything one poll found, immutable, handed to the UI thread in one message."""

    polled_at: float  # the poller's clock (wall time) when the poll finished
    runs: tuple[RunRow, ...] = ()
    live: tuple[LiveValues, ...] = ()
    series: tuple[SeriesUpdate, ...] = ()
    layers: tuple[LayerUpdate, ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    alerts: tuple[dict[str, Any], ...] = ()
    final_losses: tuple[dict[str, Any], ...] | None = None  # None: unchanged since the last snapshot
    experiments: tuple[str, ...] | None = None  # None: unchanged
    tracked: tuple[int | None, frozenset[int]] = (None, frozenset())
    error: str | None = None  # why nothing could be read (e.g. no database yet)

    @property
    def empty(self) -> bool:
        return not (self.runs or self.live or self.series or self.layers or self.events or self.alerts
                    or self.final_losses is not None or self.experiments is not None)


@dataclass
class _Cursors:
    """Where the previous polls stopped reading (poller thread only)."""

    run_rev: int = 0
    event_id: int = 0
    alert_rev: int = 0
    live: dict[tuple[int, str], int] = field(default_factory=dict)
    series: dict[tuple[int, str], int] = field(default_factory=dict)
    layers: dict[int, int] = field(default_factory=dict)


class Poller:
    """Incremental reader of one database. `poll()` runs in one thread at a time; `track()` may be
    called from any thread (it swaps one tuple, which is atomic)."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db_path = Path(db_path)
        self.clock = clock
        self.reader: Reader | None = None
        self.cursors = _Cursors()
        self.running: set[int] = set()  # runs seen running at the last poll that saw their row
        self.experiment_names: tuple[str, ...] = ()
        self._experiment_ids: dict[int, str] = {}
        self._wanted: tuple[int | None, frozenset[int]] = (None, frozenset())
        self._first = True

    def track(self, selected: int | None, group: Iterable[int] = ()) -> None:
        """Read whole series for `selected` (train, test, layers) and test loss for `group`."""
        self._wanted = (selected, frozenset(group) - {selected} if selected is not None else frozenset())

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    # ----------------------------------------------------------------- one poll

    def poll(self) -> Snapshot:
        """Read what is new; never raises for a missing or busy database (the snapshot says why)."""
        wanted = self._wanted
        try:
            reader = self._open()
            return self._read(reader, wanted)
        except FileNotFoundError:
            return Snapshot(self.clock(), tracked=wanted, error=f"{self.db_path}: no database yet (start a sweep)")
        except (StoreError, sqlite3.Error) as exc:
            self.close()  # reopen next time: the file may have been replaced or migrated
            text = str(exc)  # the store's messages name the file already; sqlite3's do not
            return Snapshot(self.clock(), tracked=wanted,
                            error=text if text.startswith(str(self.db_path)) else f"{self.db_path}: {text}")

    def _open(self) -> Reader:
        if self.reader is None:
            self.reader = Reader(self.db_path)
        return self.reader

    def _read(self, reader: Reader, wanted: tuple[int | None, frozenset[int]]) -> Snapshot:
        c = self.cursors
        c.run_rev, rows = reader.changed_runs_since(c.run_rev)
        runs = tuple(RunRow.from_summary(row) for row in rows)
        changed = {run.id for run in runs}
        live = tuple(self._live(reader, runs))
        series = tuple(self._series(reader, wanted, changed))
        layers = tuple(self._layers(reader, wanted[0], changed))
        events = tuple(self._events(reader))
        experiments = self._experiments(reader, runs)
        c.alert_rev, rows = reader.alerts_since(c.alert_rev)
        alerts = [{**row, "experiment": self._experiment_ids.get(row["experiment_id"])} for row in rows]
        finals = self._final_losses(reader, runs)
        self._first = False
        return Snapshot(self.clock(), runs, live, series, layers, events, tuple(alerts), finals, experiments, wanted)

    # ----------------------------------------------------------------- parts

    def _live(self, reader: Reader, runs: tuple[RunRow, ...]) -> Iterable[LiveValues]:
        """Latest train loss and new test losses of every unfinished run whose row changed. A run that
        just stopped is read up to its last record before its cursors are dropped."""
        for run in runs:
            if run.finished or not run.step:  # final values are in the row / nothing recorded yet
                self._forget_live(run.id)
                continue
            restart = self._needs_restart(run)
            if restart:  # the last train step, every test evaluation
                self.cursors.live[(run.id, "train_loss")] = run.step - 1
                self.cursors.live[(run.id, "test_loss")] = _START
            train = self._new_points(reader, run.id, "train_loss", self.cursors.live)
            test = self._new_points(reader, run.id, "test_loss", self.cursors.live)
            yield LiveValues(run.id, train[-1] if train else None, tuple(test), restart)
            if run.status == "running":
                self.running.add(run.id)
            else:
                self._forget_live(run.id)

    def _needs_restart(self, run: RunRow) -> bool:
        """Read from the start: first sight, (re)started since the last poll, or rewound by a resume
        (which deletes the records after its checkpoint, so the cursors point past the new ones)."""
        cursor = self.cursors.live.get((run.id, "train_loss"))
        fresh_start = run.status == "running" and run.id not in self.running
        return cursor is None or fresh_start or cursor > (run.step or 0)

    def _forget_live(self, run_id: int) -> None:
        self.running.discard(run_id)
        for key in ("train_loss", "test_loss"):
            self.cursors.live.pop((run_id, key), None)

    @staticmethod
    def _new_points(reader: Reader, run_id: int, key: str, cursors: dict[tuple[int, str], int]) -> list[tuple[int, float]]:
        points = reader.metrics_since(run_id, key, cursors[(run_id, key)])
        if points:
            cursors[(run_id, key)] = points[-1][0]
        return points

    def _series(self, reader: Reader, wanted: tuple[int | None, frozenset[int]], changed: set[int]
                ) -> Iterable[SeriesUpdate]:
        """Whole series for newly tracked runs, new points for tracked runs that changed."""
        selected, group = wanted
        keys = {(selected, "train_loss"), (selected, "test_loss")} if selected is not None else set()
        keys |= {(run_id, "test_loss") for run_id in group}
        for stale in set(self.cursors.series) - keys:
            del self.cursors.series[stale]
        for run_id, key in sorted(keys):
            reset = (run_id, key) not in self.cursors.series
            if not reset and run_id not in changed:
                continue
            self.cursors.series.setdefault((run_id, key), _START)
            points = self._new_points(reader, run_id, key, self.cursors.series)
            if points or reset:
                yield SeriesUpdate(run_id, key, reset, tuple(p[0] for p in points), tuple(p[1] for p in points))

    def _layers(self, reader: Reader, selected: int | None, changed: set[int]) -> Iterable[LayerUpdate]:
        for stale in set(self.cursors.layers) - {selected}:
            del self.cursors.layers[stale]
        if selected is None:
            return
        reset = selected not in self.cursors.layers
        if not reset and selected not in changed:
            return
        rows = reader.layer_stats_since(selected, self.cursors.layers.get(selected, _START))
        if rows:
            self.cursors.layers[selected] = rows[-1].step
        else:
            self.cursors.layers.setdefault(selected, _START)
        if rows or reset:
            yield LayerUpdate(selected, reset, tuple(rows))

    def _events(self, reader: Reader) -> list[dict[str, Any]]:
        if self._first:  # start near the end: the log shows the latest events, not a whole history
            newest = reader.events_since(0, limit=1_000_000)[-EVENT_BACKLOG:]
            self.cursors.event_id = newest[-1]["id"] if newest else 0
            return newest
        events = reader.events_since(self.cursors.event_id)
        if events:
            self.cursors.event_id = events[-1]["id"]
        return events

    def _experiments(self, reader: Reader, runs: tuple[RunRow, ...]) -> tuple[str, ...] | None:
        unknown = {run.experiment for run in runs} - set(self.experiment_names)
        if not self._first and not unknown:
            return None
        rows = reader.experiments()
        self.experiment_names = tuple(e["name"] for e in rows)
        self._experiment_ids = {e["id"]: e["name"] for e in rows}
        return self.experiment_names

    def _final_losses(self, reader: Reader, runs: tuple[RunRow, ...]) -> tuple[dict[str, Any], ...] | None:
        """Re-read the per-point aggregate only when a run finished (or on the first poll)."""
        if self._first or any(run.status in FINISHED for run in runs):
            return tuple(reader.final_losses())
        return None
