"""One incremental reader of a scaletui database: what is new since the last read.

Why one: the app's poller and the runner's alert monitor both watch a database that other processes
write, and both must read only what is new: the runs whose row changed, each run's records after where
they stopped reading, the events and alerts after a cursor. Both must also notice a run that started
again: a resume deletes the records after its checkpoint and writes them again, so a step cursor left
where it was would point past the rewritten records and miss them. Each used to keep its own cursors
and its own idea of a restart. `Tracker` owns both:

* `changed_runs()`: the rows whose `rev` moved. Seeing a row is where restarts are detected: a new
  `started_at` (a worker took the run again) or a cursor beyond the row's `step` (a resume rewound it)
  drops every cursor of that run, so its next read starts over and says so (`Fresh.reset`).
* `points(run, key)`, `records(run)`, `layer_stats(run)`: a run's records after the cursor of one
  *owner*. Each consumer of a stream keeps its own position: the app reads the latest train loss of
  every running run for its table and the whole curve of the selected run for its plot, over the same rows.
* `new_events()`, `changed_alerts()`: after the last id / `rev`.

Reads are transactional: `transaction()` keeps the cursors moved in its block when the block ends, and
puts them back when it raises, so a poll or pass that failed half-way reads the same rows again next
time instead of losing them.

Errors: `READ_ERRORS` is what reading raises for a file that is missing, busy, replaced or not a
scaletui database; `describe()` turns one into a line naming the file, which a front end shows as it
is (the app catches these without importing `scaletui.store`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from scaletui.core.records import LayerStats, MetricRecord
from scaletui.core.rows import AlertRow, EventRow, MetricPoint, RunSummary
from scaletui.core.vocabulary import BEFORE_ANY_STEP
from scaletui.store.errors import StoreError
from scaletui.store.reader import Reader

T = TypeVar("T")


class _AtStep(Protocol):
    @property
    def step(self) -> int: ...


S = TypeVar("S", bound=_AtStep)

#: What reading a database can raise: no file yet, or one the store cannot read now (busy, replaced,
#: not scaletui's, too new). `Tracker.describe` says which in one line.
READ_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, StoreError, sqlite3.Error)

EVENT_BACKLOG = 500  # events the first read returns: the latest ones, not a whole history
LAYERS = "#layers"  # the stream of a run's layer statistics (no metric key starts with '#')
RECORDS = "#records"  # the stream of every metric of a run


@dataclass(frozen=True)
class Fresh(Generic[T]):
    """What one read of a stream found. `reset`: these items start from the beginning (first read, or the
    run restarted): replace what you kept, do not append."""

    reset: bool
    items: tuple[T, ...]


@dataclass(frozen=True)
class _Position:
    """Where an owner stopped reading a stream: the highest step read, and what was read at that step
    (streams with several rows per step re-read it and keep only the rows not seen yet)."""

    step: int
    seen: frozenset[str | int] = frozenset()


_Streams = dict[tuple[str, str], _Position]  # (owner, stream) -> position, for one run


@dataclass
class _Cursors:
    run_rev: int = 0
    event_id: int | None = None  # None: no event read yet
    alert_rev: int = 0
    started: dict[int, str | None] = field(default_factory=dict)  # started_at of every run seen
    streams: dict[int, _Streams] = field(default_factory=dict)

    def copy(self) -> _Cursors:
        return _Cursors(self.run_rev, self.event_id, self.alert_rev, dict(self.started),
                        {run_id: dict(streams) for run_id, streams in self.streams.items()})


def _label_layer(row: LayerStats) -> int:
    return row.layer


def _label_key(row: MetricRecord) -> str:
    return row.key


class Tracker:
    """Incremental reads of one database for one consumer; not thread-safe (one reading thread)."""

    def __init__(self, db_path: str | Path, *, event_backlog: int = EVENT_BACKLOG) -> None:
        self.path = Path(db_path)
        self.event_backlog = event_backlog
        self._reader: Reader | None = None
        self._cursors = _Cursors()
        self._kept = _Cursors()

    @property
    def reader(self) -> Reader:
        """The read-only connection, opened on first use (also for whole reads: experiments, alerts)."""
        if self._reader is None:
            self._reader = Reader(self.path)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def describe(self, error: BaseException) -> str:
        """One line for a front end, naming the file (the store's messages do already; sqlite3's do not)."""
        if isinstance(error, FileNotFoundError):
            return f"{self.path}: no database yet (start a sweep)"
        text = str(error)
        return text if text.startswith(str(self.path)) else f"{self.path}: {text}"

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[Tracker]:
        """Keep the cursors the block moved, or put them back if it raises. After a read error the
        connection is closed too: the next read opens the file again (it may have been replaced)."""
        try:
            yield self
        except READ_ERRORS:
            self._cursors = self._kept.copy()
            self.close()
            raise
        except BaseException:
            self._cursors = self._kept.copy()
            raise
        self._kept = self._cursors.copy()

    # ----------------------------------------------------------------- runs, events, alerts

    def changed_runs(self) -> list[RunSummary]:
        """Rows changed since the last read (all of them the first time); restarted runs start over."""
        cursors = self._cursors
        cursors.run_rev, rows = self.reader.changed_runs_since(cursors.run_rev)
        for row in rows:
            if self._restarted(row):
                cursors.streams.pop(row.id, None)
            cursors.started[row.id] = row.started_at
        return rows

    def _restarted(self, row: RunSummary) -> bool:
        """Started again since it was last seen, or rewound (by a resume) behind what was read of it."""
        started = self._cursors.started
        if row.id in started and started[row.id] != row.started_at:
            return True
        positions = self._cursors.streams.get(row.id, {}).values()
        return row.step is not None and any(p.step > row.step for p in positions)

    def new_events(self) -> list[EventRow]:
        """Events after the last read; the first read returns the latest `event_backlog` of them."""
        cursors = self._cursors
        if cursors.event_id is None:
            events = self.reader.events_since(0, limit=1_000_000)[-self.event_backlog:]
        else:
            events = self.reader.events_since(cursors.event_id)
        cursors.event_id = events[-1].id if events else (cursors.event_id or 0)
        return events

    def changed_alerts(self) -> list[AlertRow]:
        """Alerts inserted, updated or deactivated since the last read."""
        self._cursors.alert_rev, rows = self.reader.alerts_since(self._cursors.alert_rev)
        return rows

    # ----------------------------------------------------------------- one run's records

    def points(self, run_id: int, key: str, *, owner: str, start: int = BEFORE_ANY_STEP) -> Fresh[MetricPoint]:
        """New points of one metric for `owner`; a first read (or one after a restart) starts after `start`."""
        position = self._position(run_id, key, owner)
        after = start if position is None else position.step
        points = self.reader.metrics_since(run_id, key, after)
        self._move(run_id, key, owner, _Position(points[-1].step if points else after))
        return Fresh(position is None, tuple(points))

    def records(self, run_id: int, *, owner: str) -> Fresh[MetricRecord]:
        """Every metric of the run not read yet by `owner`. The last step read is read again: an
        evaluation at a step can land in the flush after the one that carried that step's train loss."""
        return self._many(run_id, RECORDS, owner, lambda after: self.reader.records_since(run_id, after), _label_key)

    def layer_stats(self, run_id: int, *, owner: str) -> Fresh[LayerStats]:
        """The run's per-layer statistics not read yet by `owner` (the last step read is read again)."""
        return self._many(run_id, LAYERS, owner, lambda after: self.reader.layer_stats_since(run_id, after),
                          _label_layer)

    def _many(self, run_id: int, stream: str, owner: str, read: Callable[[int], Sequence[S]],
              label: Callable[[S], str | int]) -> Fresh[S]:
        """A stream with several rows per step: re-read the last step, keep the rows not seen there."""
        position = self._position(run_id, stream, owner)
        if position is None:
            rows, new = read(BEFORE_ANY_STEP), None
        else:
            rows = read(position.step - 1)
            new = [r for r in rows if r.step > position.step or label(r) not in position.seen]
        if rows:
            top = rows[-1].step
            seen = frozenset(label(r) for r in rows if r.step == top)
            self._move(run_id, stream, owner, _Position(top, seen))
        elif position is None:
            self._move(run_id, stream, owner, _Position(BEFORE_ANY_STEP))
        return Fresh(position is None, tuple(rows if new is None else new))

    # ----------------------------------------------------------------- cursors by owner

    def reading(self, run_id: int, stream: str, *, owner: str) -> bool:
        """Whether `owner` has read this stream (a metric key, LAYERS or RECORDS) since its last start."""
        return self._position(run_id, stream, owner) is not None

    def forget(self, run_id: int, *, owner: str) -> None:
        """Drop `owner`'s cursors of one run: its next read of the run starts over."""
        streams = self._cursors.streams.get(run_id, {})
        for name in [name for name in streams if name[0] == owner]:
            del streams[name]
        self._prune(run_id)

    def keep_only(self, owner: str, wanted: set[tuple[int, str]]) -> None:
        """Drop `owner`'s cursors of every (run, stream) not in `wanted`."""
        for run_id, streams in list(self._cursors.streams.items()):
            for name in [n for n in streams if n[0] == owner and (run_id, n[1]) not in wanted]:
                del streams[name]
            self._prune(run_id)

    def _position(self, run_id: int, stream: str, owner: str) -> _Position | None:
        return self._cursors.streams.get(run_id, {}).get((owner, stream))

    def _move(self, run_id: int, stream: str, owner: str, position: _Position) -> None:
        self._cursors.streams.setdefault(run_id, {})[(owner, stream)] = position

    def _prune(self, run_id: int) -> None:
        """No empty entries: the cursors of a run that nobody reads any more take no memory."""
        if run_id in self._cursors.streams and not self._cursors.streams[run_id]:
            del self._cursors.streams[run_id]
