"""The storage side of a run of your own training loop (the Python API): its row, its records, its end.

Why a module of its own. `scaletui.init` (a front end) and, later, the runner calling a user's
`train.entrypoint` (a service) both need the same things underneath a run handle:

* a row in the same `runs` table as built-in runs, keyed by a stable hash of the experiment's name and
  the config (`own_run_row`), with the width/depth/lr/seed columns filled from the config when present;
* a writer that never makes the training thread wait for SQLite (`RecordWriter`): records go into a
  bounded queue, and one background thread writes them through the store's sink, one transaction per
  second (or per heartbeat when nothing arrives), so the app sees the run live and `reap_orphans` can
  tell a live run from a dead one;
* the run-level detectors of `analysis.diagnose` on what the loop logs (`RunDiagnoser`), so a NaN or a
  blow-up logged by one's own loop raises the same `divergence` alert a built-in run would;
* "the loss of the run" at its end (`own_outcome`): final, best and smoothed value of the experiment's
  loss metric, computed from what the database holds (so a resumed run counts every step once).

No torch here: the handle (`services/own_run.py`) turns tensors into floats before they arrive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from scaletui.core.records import Alert, LayerStats, MetricRecord, RunOutcome
from scaletui.core.rows import ExperimentLoss
from scaletui.core.thresholds import Thresholds
from scaletui.core.vocabulary import DIAGNOSED_METRICS, TRAIN_LOSS_METRIC, AlertKind, DebiasedEma, RunSource, RunStatus
from scaletui.store.alerts import alert_subject
from scaletui.store.reader import Reader
from scaletui.store.schema import HYPERPARAMETERS
from scaletui.store.writer import OwnRunRow, OwnRunSink

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0  # records reach the database (and the app) within about this long
HEARTBEAT_SECONDS = 10.0  # an idle run still tells the database it is alive this often
MAX_PENDING = 100_000  # log calls waiting to be written before `log` waits for the writer
DIAGNOSE_EVERY_S = 5.0  # detectors run at most this often, and take at most ~2% of one core
TRAIN_TAIL = 25  # final_train_loss: the mean of this many last train losses (as the built-in loop's window)


# --------------------------------------------------------------------------- where a run's records go


class RunStore(Protocol):
    """What a run handle writes besides its records: its sizes and its live alerts. The database's
    `Store` on this machine; on a Ray node, the executor's stand-in that sends them to its writer."""

    @property
    def path(self) -> Path: ...

    def set_sizes(self, run_id: int, sizes: Mapping[str, int]) -> None: ...

    def sync_alerts(self, experiment_id: int, alerts: Sequence[Alert], subjects: Iterable[str] = ()) -> int: ...


class RunSink(Protocol):
    """Where `RecordWriter`'s thread puts one run's records: everything given before a `flush` is
    written by it, in one transaction (`LocalRunSink`: the database file here; on a Ray node, a batch
    shipped to the executor's writer, which writes it with `OwnRunSink` in one transaction there)."""

    def metrics(self, rows: Sequence[MetricRecord]) -> None: ...

    def layer_stats(self, rows: Sequence[LayerStats]) -> None: ...

    def queue_event(self, kind: str, message: str) -> None: ...

    def replace_from(self, step: int) -> None: ...

    def flush(self) -> None: ...

    def release(self) -> None:
        """Let go of the destination after the last flush (writes nothing more)."""


class LocalRunSink(OwnRunSink):
    """The run's records straight into the database file on this machine."""

    def release(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- errors


class InvalidConfig(ValueError):
    """A config (or experiment name) that cannot be stored as the run's identity; one line."""


class RunStorageError(RuntimeError):
    """The database stopped taking this run's records (disk full, read-only, busy past the deadline)."""


# --------------------------------------------------------------------------- the run's row


def canonical_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config as plain JSON values (numpy scalars become numbers, tuples lists), or InvalidConfig
    naming the key that is not: the config is the run's identity, so it must be stored exactly."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidConfig(f"config: expected a mapping of names to values, got a {type(config).__name__} "
                            "(for argparse results pass vars(args))")
    return {_config_key(key, "config"): _plain(value, f"config[{key!r}]") for key, value in config.items()}


def _config_key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise InvalidConfig(f"{where}: key {key!r} is a {type(key).__name__}; config keys are strings")
    return key


def _plain(value: Any, where: str) -> Any:
    """One config value as JSON: None, bool, str, int, finite float, lists and mappings of those."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidConfig(f"{where}: {number} is not a finite number (a config value identifies the run)")
        return number
    if isinstance(value, Mapping):
        return {_config_key(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise InvalidConfig(f"{where}: a {type(value).__name__} is not a config value "
                        "(use numbers, strings, booleans, None, lists and mappings of them)")


def _digest(document: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of canonical JSON, as RunSpec keys are made."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def own_run_key(experiment: str, config: Mapping[str, Any]) -> str:
    """A run's identity: its experiment and its config (the same config in two experiments is two runs)."""
    return _digest({"experiment": experiment, "config": dict(config)})


def check_experiment_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip() or not name.isprintable():
        raise InvalidConfig(f"experiment: {name!r} is not a name (one line of printable text, no outer spaces)")
    return name


def config_columns(config: Mapping[str, Any], column_types: Mapping[str, str]) -> dict[str, Any]:
    """The hyperparameter columns of `runs` the config has a value of the column's type for (width,
    depth, lr, seed, ...); other keys live only in user_config_json."""
    fits = {"INTEGER": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "REAL": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "TEXT": lambda v: isinstance(v, str)}
    return {name: config[name] for name in HYPERPARAMETERS
            if name in config and fits.get(column_types.get(name, ""), lambda v: False)(config[name])}


def default_label(config: Mapping[str, Any], key: str) -> str:
    """A short name like the built-in runs' (`mlp w64 d2 s0`) from what the config has, else the key."""
    parts = [str(config["arch"])] if isinstance(config.get("arch"), str) else []
    parts += [f"{tag}{config[name]}" for tag, name in (("w", "width"), ("d", "depth"), ("s", "seed"))
              if isinstance(config.get(name), int | float) and not isinstance(config.get(name), bool)]
    return " ".join(parts) if parts else f"run {key[:8]}"


def own_run_row(experiment_id: int, experiment: str, config: Mapping[str, Any], label: str | None,
                column_types: Mapping[str, str], source: RunSource = RunSource.API) -> OwnRunRow:
    """Everything the run's row is registered with (config already canonical)."""
    key = own_run_key(experiment, config)
    point = own_run_key(experiment, {k: v for k, v in config.items() if k != "seed"})
    return OwnRunRow(experiment_id, key, point, label or default_label(config, key),
                     json.dumps(config, sort_keys=True), config_columns(config, column_types), source)


# --------------------------------------------------------------------------- the end of a run


def own_outcome(reader: Reader, run_id: int, loss: ExperimentLoss, status: RunStatus,
                error: str | None = None) -> RunOutcome:
    """How the run ended, with "the loss" from the database: the final, best (lowest, or highest when
    higher is better) and smoothed (debiased EMA of the values after step 0) value of the experiment's
    loss metric, NaN values skipped for best and smoothed. A run asked to end `done` whose final loss is
    not finite ends `diverged`, as a built-in run would."""
    points = reader.metric_series(run_id, loss.metric)
    row = reader.run(run_id)
    step = int(row.step) if row is not None and row.step is not None else 0
    final = points[-1].value if points else None
    best_step, best = _best(points, loss.higher_is_better)
    if status is RunStatus.DONE and final is not None and not math.isfinite(final):
        status, error = RunStatus.DIVERGED, f"{loss.metric} is {final} at step {points[-1].step}"
    train = [v for _, v in reader.metric_series(run_id, TRAIN_LOSS_METRIC) if math.isfinite(v)][-TRAIN_TAIL:]
    acc = reader.metric_series(run_id, "test_acc")
    return RunOutcome(status=status, step=step, error=error,
                      final_train_loss=sum(train) / len(train) if train else None, final_test_loss=final,
                      final_test_acc=acc[-1].value if acc else None, best_test_loss=best, best_step=best_step,
                      smoothed_test_loss=_smoothed(points))


def _best(points: Sequence[tuple[int, float]], higher_is_better: bool) -> tuple[int | None, float | None]:
    finite = [(step, value) for step, value in points if math.isfinite(value)]
    if not finite:
        return None, None
    sign = -1.0 if higher_is_better else 1.0
    step, value = min(finite, key=lambda p: sign * p[1])  # min keeps the first of equal values
    return step, value


def _smoothed(points: Sequence[tuple[int, float]]) -> float | None:
    ema = DebiasedEma()
    for step, value in points:
        if step > 0 and math.isfinite(value):
            ema.update(value)
    return ema.value if ema.count else None


# --------------------------------------------------------------------------- live alerts


@dataclass
class RunFacts:
    """What the detectors' messages and suggestions need to know about the run (0 / NaN: unknown)."""

    width: int = 0
    depth: int = 0
    params: int = 0
    lr: float = math.nan


class RunDiagnoser:
    """The run-level detectors over what one run of one's own loop logged, alerts synced to the store.

    Keeps only the metrics the detectors read, one value per (step, key). The train-loss series is the
    loop's `train_loss`, else the experiment's loss metric when lower is better (a `cost` logged every
    step: its NaN or blow-up is a divergence too)."""

    def __init__(self, store: RunStore, experiment_id: int, run_id: int, loss: ExperimentLoss, facts: RunFacts,
                 thresholds: Thresholds | None = None) -> None:
        self.store, self.experiment_id, self.run_id, self.facts = store, experiment_id, run_id, facts
        self.thresholds = thresholds  # a sweep's [diagnostics]; None: the documented defaults
        self._stand_in = loss.metric if loss.metric not in DIAGNOSED_METRICS and not loss.higher_is_better else None
        self._values: dict[str, dict[int, float]] = {}
        self._layers: dict[tuple[int, int], LayerStats] = {}
        self._dirty = False
        self._next_pass = 0.0
        self._signature: tuple[tuple[Any, ...], ...] | None = None

    def take(self, metrics: Sequence[MetricRecord], layers: Sequence[LayerStats]) -> None:
        for r in metrics:
            if r.key in DIAGNOSED_METRICS or r.key == self._stand_in:
                self._values.setdefault(r.key, {})[r.step] = r.value
                self._dirty = True
        for s in layers:
            self._layers[(s.step, s.layer)] = s
            self._dirty = True

    def forget_from(self, step: int) -> None:
        """A resumed loop restarted at `step`: what was kept from there on is being replaced."""
        for series in self._values.values():
            for old in [s for s in series if s >= step]:
                del series[old]
        for key in [k for k in self._layers if k[0] >= step]:
            del self._layers[key]

    def maybe_run(self, *, force: bool = False) -> None:
        """Run the detectors if records arrived and the last pass was long enough ago (or `force`)."""
        if not self._dirty or (not force and time.monotonic() < self._next_pass):
            return
        started = time.monotonic()
        alerts = self._alerts()
        signature = tuple((a.kind, a.severity, a.step, a.message) for a in alerts)
        if signature != self._signature:
            subject = alert_subject(Alert("", "", None, "", "", run_id=self.run_id))
            self.store.sync_alerts(self.experiment_id, alerts, subjects=[subject])
            self._signature = signature
        self._dirty = False
        took = time.monotonic() - started
        self._next_pass = time.monotonic() + max(DIAGNOSE_EVERY_S, 50 * took)

    def _alerts(self) -> list[Alert]:
        from scaletui.analysis.diagnose import diagnose_run, series_from_records

        train_key = TRAIN_LOSS_METRIC if TRAIN_LOSS_METRIC in self._values or self._stand_in is None else self._stand_in
        records = [MetricRecord(step, TRAIN_LOSS_METRIC if key == train_key else key, value)
                   for key, series in self._values.items() if key in DIAGNOSED_METRICS or key == train_key
                   for step, value in series.items()]
        f = self.facts
        series = series_from_records(records, self._layers.values(), run_id=self.run_id, width=f.width,
                                     depth=f.depth, params=f.params, lr=f.lr)
        alerts = diagnose_run(series, self.thresholds)
        if math.isnan(f.lr):  # no lr in the config: a rate cannot be suggested, only the direction
            alerts = [replace(a, suggestion="lower the learning rate (or clip gradients)")
                      if a.kind == AlertKind.DIVERGENCE else a for a in alerts]
        return alerts


# --------------------------------------------------------------------------- the writer thread


_METRICS, _LAYERS, _EVENT, _REPLACE_FROM = range(4)


class RecordWriter:
    """Writes one run's records from a background thread, so the training thread never waits on SQLite.

    `put_*` only append to a queue (and raise `RunStorageError` once the database has refused a write).
    The thread writes what is queued every `flush_seconds` in one transaction, or touches the heartbeat
    every `heartbeat_seconds` when nothing arrives. The queue is bounded: past `max_pending` waiting
    calls, `put_*` waits for the writer (the database is then far behind; memory stays bounded).
    `flush()` returns once everything put before it is in the database; `close()` writes the rest and
    stops the thread."""

    def __init__(self, db_path: str | Path, run_id: int, *, diagnoser: RunDiagnoser | None = None,
                 flush_seconds: float = FLUSH_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 max_pending: int = MAX_PENDING, sink: RunSink | None = None) -> None:
        self.path = Path(db_path)
        self.run_id = run_id
        # opened here: a database it cannot open fails at the call
        self._sink: RunSink = sink if sink is not None else LocalRunSink(self.path, run_id)
        self._diagnoser = diagnoser
        self._flush_seconds, self._heartbeat_seconds, self._max_pending = flush_seconds, heartbeat_seconds, max_pending
        self._queue: deque[tuple[int, Any]] = deque()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._requested = self._written = 0  # flush requests made / served
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"scaletui-run-{run_id}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the training thread's side

    def put_metrics(self, rows: Sequence[MetricRecord]) -> None:
        self._put(_METRICS, rows)

    def put_layers(self, rows: Sequence[LayerStats]) -> None:
        self._put(_LAYERS, rows)

    def put_event(self, kind: str, message: str) -> None:
        self._put(_EVENT, (kind, message))

    def replace_from(self, step: int) -> None:
        """A resumed loop restarted at `step`: the run's records from there on are replaced by what follows."""
        self._put(_REPLACE_FROM, step)

    def _put(self, kind: int, payload: Any) -> None:
        self.raise_if_failed()
        self._queue.append((kind, payload))
        if len(self._queue) >= self._max_pending:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: len(self._queue) < self._max_pending // 2 or self.error is not None
                                    or not self._thread.is_alive())
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RunStorageError(f"{self.path}: run {self.run_id} cannot be recorded: {self.error}") from self.error

    def flush(self) -> None:
        """Return once everything put so far is in the database (RunStorageError if it cannot be)."""
        with self._progress:
            self._requested += 1
            wanted = self._requested
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: self._written >= wanted or self.error is not None
                                    or not self._thread.is_alive())
        self.raise_if_failed()

    def close(self) -> None:
        """Write what is left, stop the thread and close the connection (RunStorageError if it failed)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self.raise_if_failed()

    # ----------------------------------------------------------------- the writer thread

    def _loop(self) -> None:
        last_write = time.monotonic()
        try:
            while True:
                self._wake.wait(self._flush_seconds)
                self._wake.clear()
                stopping, requested = self._stopping, self._requested
                wrote = self._write_queued(force=stopping or requested > self._written
                                           or time.monotonic() - last_write >= self._heartbeat_seconds)
                last_write = time.monotonic() if wrote else last_write
                self._served(requested)
                if self._diagnoser is not None:
                    self._diagnose(force=stopping)
                if stopping and not self._queue:
                    return
        except BaseException as exc:  # the database refused: every later put raises this, at the call site
            log.debug("run %s: writer failed", self.run_id, exc_info=True)
            self.error = exc
        finally:
            self._served(self._requested)
            self._close_sink()

    def _write_queued(self, *, force: bool) -> bool:
        """Hand what is queued to the sink and flush it as one transaction; False when nothing was due."""
        items = [self._queue.popleft() for _ in range(len(self._queue))]
        if not items and not force:
            return False
        metrics: list[MetricRecord] = []
        layers: list[LayerStats] = []
        for kind, payload in items:
            if kind == _REPLACE_FROM:
                self._sink.replace_from(payload)
                if self._diagnoser is not None:
                    self._diagnoser.forget_from(payload)
            elif kind == _METRICS:
                metrics.extend(payload)
            elif kind == _LAYERS:
                layers.extend(payload)
            else:
                self._sink.queue_event(*payload)
        self._sink.metrics(metrics)
        self._sink.layer_stats(layers)
        self._sink.flush()
        if self._diagnoser is not None:
            self._diagnoser.take(metrics, layers)
        return True

    def _diagnose(self, *, force: bool) -> None:
        """Alerts are a courtesy: a detector failing never stops the records."""
        assert self._diagnoser is not None
        try:
            self._diagnoser.maybe_run(force=force)
        except Exception:
            log.warning("run %s: alert pass failed", self.run_id, exc_info=True)

    def _served(self, requested: int) -> None:
        with self._progress:
            self._written = max(self._written, requested)
            self._progress.notify_all()

    def _close_sink(self) -> None:
        try:
            self._sink.release()
        except Exception:
            log.debug("run %s: closing the sink failed", self.run_id, exc_info=True)
