"""A handle on one run of your own training loop: `log`, `watch`, `summary`, `flush`, `close`.

`scaletui.init` returns one (with a lifecycle around it: statuses, signals); the runner hands one,
bound to a run it registered, its stop signal and its checkpoint folder, to a `train.entrypoint`
function, on this machine or on a Ray node (where what it writes travels to the executor's writer).
Either way the handle guarantees the same things:

* Bad input fails at the call site, before anything is queued: a metric name that is not one line of
  text or clashes with a reserved name (`ReservedMetricKey`), a value that is not a number
  (`NotANumber`), a step that goes backwards (`StepWentBackwards`). NaN and +/-Inf are numbers: they
  are stored as the store stores them (NULL, REAL infinities) and the divergence detector sees them.
* The training thread never waits on SQLite: records go to a `RecordWriter` thread.
* Tensors are not synchronised one by one. A tensor on the CPU is read at once (no sync to avoid); a
  tensor on an accelerator is kept, and all kept ones go to the host together, in one transfer per
  device, every `SYNC_EVERY` log calls or `SYNC_SECONDS`, at a watched step, on `flush` and `close`.
* `watch(model, every)` measures per-layer gradient, weight and update norms with the engine's fused
  `LayerProbe` around every `every`-th step of the optimizer that trains the model (global optimizer
  hooks, so any `torch.optim` optimizer works without being passed in), and hands them to the next
  `log` call, which moves them to the host with its own tensors: one transfer per logging step.
  Between measurements a step runs one counting hook and nothing else of the watch: the hook that
  snapshots the weights is installed only for the watched steps. (Profiled on a 512x8 MLP: a watched
  step costs ~5 ms more, ~20% of a step, all of it the snapshot copy, the update and the fused norms,
  memory-bound; at the default cadence that is ~0.8% of the steps.)
  torch is imported only when `watch` is called, or when a tensor is logged (then it is loaded already).
* After a resume, the first step the loop logs says where it restarted: the run's records from that
  step on are replaced by what it logs now (in the transaction that writes the first new ones).
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from scaletui.core.records import LayerStats, MetricRecord, StopSignal
from scaletui.core.rows import ExperimentLoss
from scaletui.core.thresholds import Thresholds
from scaletui.services.own_records import RecordWriter, RunDiagnoser, RunFacts, RunSink, RunStorageError, RunStore
from scaletui.store.reader import Reader
from scaletui.store.writer import SIZE_COLUMNS, Store

log = logging.getLogger(__name__)

#: Metric names a run may not log: the columns an export of metrics has besides the metric's own (a
#: metric called `step` could not be told from the step in a table with one column per metric).
RESERVED_METRIC_KEYS: frozenset[str] = frozenset({"run_id", "step", "key", "value", "experiment"})
MAX_KEY_LENGTH = 200
SYNC_EVERY = 25  # log calls between host transfers of accelerator tensors (the built-in loop's log_every)
SYNC_SECONDS = 1.0  # ... or this long, whichever comes first, so slow steps still show up live
DEFAULT_WATCH_EVERY = 25  # optimizer steps between per-layer measurements: ~1% of a step on CPU


class InvalidMetric(ValueError):
    """A metric name or step that cannot be recorded; one line, raised before anything is queued."""


class StepWentBackwards(InvalidMetric):
    """`log(..., step=s)` with s before a step this run already logged."""


class ReservedMetricKey(InvalidMetric):
    """A metric name that is one of RESERVED_METRIC_KEYS."""


class NotANumber(TypeError):
    """A logged value that is not a real number (or a one-element real tensor)."""


class InvalidSize(ValueError):
    """`summary(...)` with a name that is not a size column or a value that is not a count."""


class RunClosed(RuntimeError):
    """The run handle was used after its run ended."""


StoreT = TypeVar("StoreT", bound=RunStore)
_Handle = TypeVar("_Handle", bound="RunHandle[Any]")


@dataclass(frozen=True)
class AttachedRun:
    """What a handle on a run someone else registered starts from, read from the database (picklable:
    on a Ray node the executor's writer reads it and sends it to the worker)."""

    run_id: int
    experiment: str
    experiment_id: int
    key: str
    label: str
    config: Mapping[str, Any]
    loss: ExperimentLoss
    last_step: int | None


def attached_run(db_path: str | Path, run_id: int) -> AttachedRun:
    """The registered run `run_id` as a handle needs it (ValueError when there is none with an experiment)."""
    with Reader(db_path) as reader:
        row = reader.run(run_id)
        if row is None or row.experiment is None:
            raise ValueError(f"{db_path}: no run {run_id} with an experiment")
        experiment = next(e for e in reader.experiments() if e.name == row.experiment)
        config = reader.user_config(run_id) or {}
    loss = ExperimentLoss(experiment.loss_metric, experiment.higher_is_better, experiment.loss_rule)
    return AttachedRun(run_id, experiment.name, experiment.id, row.key, row.label, config, loss, row.step)


class RunHandle(Generic[StoreT]):
    """One run of your own loop, already registered and running; see the module docstring.

    `store` takes the run's sizes and alerts, `sink` its records (default: the database file at
    `store.path`, through a `LocalRunSink`); a Ray worker passes stand-ins for both that send them to
    the executor's writer (services/ray_executor.py)."""

    def __init__(self, store: StoreT, run_id: int, *, experiment: str, experiment_id: int, key: str, label: str,
                 config: Mapping[str, Any], loss: ExperimentLoss, last_step: int | None,
                 stop: StopSignal | None = None, checkpoint_dir: Path | None = None,
                 thresholds: Thresholds | None = None, sink: RunSink | None = None) -> None:
        self.store, self.id, self.key, self.label = store, run_id, key, label
        self.experiment, self.experiment_id, self.loss = experiment, experiment_id, loss
        self.config: Mapping[str, Any] = dict(config)
        self.last_step = last_step  # the last step the database held for the run when it was taken up
        self.checkpoint_dir = checkpoint_dir
        self._stop = stop
        self._facts = _facts(config)
        diagnoser = RunDiagnoser(store, experiment_id, run_id, loss, self._facts, thresholds)
        self._writer = RecordWriter(store.path, run_id, diagnoser=diagnoser, sink=sink)
        self._step: int | None = None  # the last step logged through this handle
        self._keys_ok: set[str] = set()
        self._deferred: list[tuple[int, str, Any]] = []  # (step, key, accelerator tensor)
        self._calls_since_sync, self._deferred_since = 0, 0.0
        self._watch: _Watch | None = None
        self._closed = False

    @classmethod
    def attach(cls: type[_Handle], db_path: str | Path, run_id: int, *, stop: StopSignal | None = None,
               checkpoint_dir: Path | None = None, thresholds: Thresholds | None = None) -> _Handle:
        """A handle on a run someone else registered and marked running (the runner, for an entrypoint):
        it writes the run's records and sizes, and changes nothing about its status."""
        return cls.on(Store(db_path), attached_run(db_path, run_id), stop=stop, checkpoint_dir=checkpoint_dir,
                      thresholds=thresholds)

    @classmethod
    def on(cls: type[_Handle], store: RunStore, run: AttachedRun, *, stop: StopSignal | None = None,
           checkpoint_dir: Path | None = None, thresholds: Thresholds | None = None,
           sink: RunSink | None = None) -> _Handle:
        """A handle on `run`, writing through `store` (and `sink`, when not the database file here)."""
        return cls(store, run.run_id, experiment=run.experiment, experiment_id=run.experiment_id, key=run.key,
                   label=run.label, config=run.config, loss=run.loss, last_step=run.last_step, stop=stop,
                   checkpoint_dir=checkpoint_dir, thresholds=thresholds, sink=sink)

    # ----------------------------------------------------------------- what a loop calls

    @property
    def step(self) -> int | None:
        """The last step logged through this handle (None before the first `log`)."""
        return self._step

    @property
    def should_stop(self) -> bool:
        """True once whoever runs this loop asked it to stop (the runner's stop signal); check it each step."""
        return self._stop is not None and self._stop.is_set()

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Record `values` (metric name -> number or one-element tensor) at `step` (default: the last
        step logged + 1, or 0). Raises InvalidMetric / NotANumber before anything is recorded."""
        self._check_open("log")
        at = self._next_step(step)
        if not isinstance(values, Mapping):
            raise NotANumber(f"log: expected a mapping of metric names to numbers, got a {type(values).__name__}")
        records: list[MetricRecord] = []
        deferred: list[tuple[int, str, Any]] = []
        for key, value in values.items():
            if key not in self._keys_ok:
                self._check_key(key)
            number = _number(key, value)
            if isinstance(number, float):
                records.append(MetricRecord(at, key, number))
            else:
                deferred.append((at, key, number))
        self._take_step(at)
        self._keep(deferred)
        layers: list[LayerStats] = []
        if self._sync_due():
            more, layers = self._sync(at)
            records += more
        if records:
            self._writer.put_metrics(records)
        if layers:
            self._writer.put_layers(layers)

    def watch(self, model: Any, every: int = DEFAULT_WATCH_EVERY) -> None:
        """Per-layer grad/weight/update norms of `model` every `every` optimizer steps (imports torch).
        Calling it again watches the new model instead."""
        self._check_open("watch")
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise InvalidMetric(f"watch: every={every!r} must be a whole number of steps >= 1")
        self.unwatch()
        self._watch = _Watch(model, int(every))

    def unwatch(self) -> None:
        """Stop watching (measurements not yet logged are dropped)."""
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def summary(self, **sizes: Any) -> None:
        """Set the run's size columns that fits use: params, width, depth, flops_per_example,
        batch_size, train_size, steps (whole numbers >= 0)."""
        self._check_open("summary")
        clean = {name: _count(name, value) for name, value in sizes.items()}
        self.store.set_sizes(self.id, clean)
        self._facts.params = clean.get("params", self._facts.params)
        self._facts.width = clean.get("width", self._facts.width)
        self._facts.depth = clean.get("depth", self._facts.depth)

    def event(self, kind: str, message: str) -> None:
        """Record a free-form event of this run (the app's event log shows it)."""
        self._check_open("event")
        self._writer.put_event(kind, message)

    def flush(self) -> None:
        """Return once everything logged so far is in the database."""
        self._check_open("flush")
        self._sync_all()
        self._writer.flush()

    def close(self) -> None:
        """Write everything left and stop the writer; the run's status is left to whoever owns it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sync_all()
        finally:
            self.unwatch()
            self._writer.close()

    # ----------------------------------------------------------------- checks

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RunClosed(f"{what}: run {self.id} ({self.label}) has ended; start another with scaletui.init")
        self._writer.raise_if_failed()

    def _next_step(self, step: Any) -> int:
        if step is None:
            return 0 if self._step is None else self._step + 1
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise InvalidMetric(f"log: step={step!r} is a {type(step).__name__}; steps are whole numbers >= 0")
        if step < 0:
            raise InvalidMetric(f"log: step={step} is negative; steps are whole numbers >= 0")
        if self._step is not None and step < self._step:
            raise StepWentBackwards(f"log: step {step} is before step {self._step}, which this run already logged "
                                    "(steps never go backwards; to redo steps, init again with resume=True)")
        return int(step)

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str):
            raise InvalidMetric(f"log: metric name {key!r} is a {type(key).__name__}; names are strings")
        if not key or key != key.strip() or not key.isprintable() or len(key) > MAX_KEY_LENGTH:
            raise InvalidMetric(f"log: metric name {key!r} is not one line of printable text without outer "
                                f"spaces, at most {MAX_KEY_LENGTH} characters")
        if key in RESERVED_METRIC_KEYS:
            raise ReservedMetricKey(f"log: metric name {key!r} is reserved (so are "
                                    f"{', '.join(sorted(RESERVED_METRIC_KEYS - {key}))}); call it something else")
        self._keys_ok.add(key)

    def _take_step(self, at: int) -> None:
        if self._step is None and self.last_step is not None:  # a resumed loop says where it restarted
            self._writer.replace_from(at)
        self._step = at

    # ----------------------------------------------------------------- tensors and the watch

    def _keep(self, deferred: list[tuple[int, str, Any]]) -> None:
        if deferred:
            if not self._deferred:
                self._deferred_since = time.monotonic()
            self._deferred += deferred
        self._calls_since_sync += 1

    def _sync_due(self) -> bool:
        if self._watch is not None and self._watch.pending is not None:
            return True
        if not self._deferred:
            return False
        return self._calls_since_sync >= SYNC_EVERY or time.monotonic() - self._deferred_since >= SYNC_SECONDS

    def _sync(self, at: int) -> tuple[list[MetricRecord], list[LayerStats]]:
        """Every kept tensor and the watch's pending norms to the host, one transfer per device; the
        norms become layer statistics at step `at`."""
        norms = self._watch.take() if self._watch is not None else None
        tensors = [t for _, _, t in self._deferred] + (norms or [])
        values = _host_values(tensors) if tensors else []
        records = [MetricRecord(s, k, v) for (s, k, _), v in zip(self._deferred, values, strict=False)]
        layers: list[LayerStats] = []
        if norms and self._watch is not None:
            layers = self._watch.probe.layer_stats(at, values[len(self._deferred):])
        self._deferred, self._calls_since_sync = [], 0
        return records, layers

    def _sync_all(self) -> None:
        """Kept tensors and pending norms out (norms at the last logged step, or 0), before a flush."""
        if self._deferred or (self._watch is not None and self._watch.pending is not None):
            records, layers = self._sync(self._step if self._step is not None else 0)
            if records:
                self._writer.put_metrics(records)
            if layers:
                self._writer.put_layers(layers)


def _facts(config: Mapping[str, Any]) -> RunFacts:
    def whole(name: str) -> int:
        value = config.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    lr = config.get("lr")
    return RunFacts(width=whole("width"), depth=whole("depth"),
                    lr=float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else math.nan)


def _number(key: str, value: Any) -> float | Any:
    """A float, or an accelerator tensor to read later; NotANumber for anything else."""
    if type(value) is float:
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _tensor(key, value)
    if isinstance(value, bool) or value is None or not isinstance(value, numbers.Real):
        return _array_item(key, value)
    try:
        return float(value)
    except OverflowError as exc:
        shown = str(value) if len(str(value)) <= 20 else str(value)[:17] + "..."
        raise NotANumber(f"log: {key!r} = {shown} does not fit in a float") from exc


def _tensor(key: str, value: Any) -> float | Any:
    if value.numel() != 1:
        raise NotANumber(f"log: {key!r} is a tensor of shape {tuple(value.shape)}, not one number")
    if value.dtype.is_complex or value.dtype == sys.modules["torch"].bool:
        raise NotANumber(f"log: {key!r} is a {value.dtype} tensor, not a real number")
    value = value.detach()
    return float(value) if value.device.type == "cpu" else value  # a CPU tensor has no sync to avoid


def _array_item(key: str, value: Any) -> float:
    """A one-element numpy array of reals; NotANumber for anything else."""
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "kind", "") in ("f", "i", "u") and getattr(value, "size", 0) == 1:
        return float(value.item())
    shown = "a bool" if isinstance(value, bool) else "None" if value is None else f"a {type(value).__name__}"
    raise NotANumber(f"log: {key!r} is {shown}, not a number (log floats, ints or one-element tensors)")


def _count(name: str, value: Any) -> int:
    if name not in SIZE_COLUMNS:
        raise InvalidSize(f"summary: {name!r} is not a size column (choose from {', '.join(SIZE_COLUMNS)})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidSize(f"summary: {name}={value!r} is not a whole number >= 0")
    return int(value)


def _host_values(tensors: Sequence[Any]) -> list[float]:
    """Tensors (one element each) as floats: one stack and one `.tolist()` per device."""
    import torch

    by_device: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out = [math.nan] * len(tensors)
    for indices in by_device.values():
        stacked = torch.stack([tensors[i].reshape(()) for i in indices])
        for i, v in zip(indices, stacked.tolist(), strict=True):
            out[i] = float(v)
    return out


def watched_layers(model: Any) -> list[tuple[str, Any]]:
    """The modules with a trainable weight matrix or kernel (Linear, Conv*, Embedding, ...), in
    registration order: the layers of `watch` (norm layers' vectors are not layers here)."""
    from torch import nn

    return [(name or type(m).__name__, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2 and m.weight.requires_grad]


class _Watch:
    """A LayerProbe armed around every `every`-th step of the optimizer that trains the model."""

    def __init__(self, model: Any, every: int) -> None:
        from torch import nn
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        from scaletui.engine.probes import LayerProbe

        if not isinstance(model, nn.Module):
            raise TypeError(f"watch: expected a torch.nn.Module, got a {type(model).__name__}")
        layers = watched_layers(model)
        if not layers:
            raise ValueError("watch: the model has no layer with a trainable weight matrix or kernel")
        self.probe = LayerProbe(layers)
        self.every = every
        self.pending: list[Any] | None = None  # the last measurement, until a log call takes it
        self._first = self.probe.params[0]
        self._trains: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._last_optimizer: Any = None
        self._last_answer = False
        self._count = 0  # steps of the model's optimizer seen
        self._armed = False
        self._register_before = register_optimizer_step_pre_hook
        self._counting: Any = register_optimizer_step_post_hook(self._after)
        self._snapshotting: Any = None  # the pre-step hook, installed only while the next step is watched
        self._schedule()

    def take(self) -> list[Any] | None:
        pending, self.pending = self.pending, None
        return pending

    def remove(self) -> None:
        for handle in (self._counting, self._snapshotting):
            if handle is not None:
                handle.remove()
        self._counting = self._snapshotting = None

    def _schedule(self) -> None:
        """Install the pre-step hook for a watched step and take it out after, so an unwatched step runs
        one hook (the counting one) and no other Python of the watch."""
        due = self._count % self.every == 0
        if due and self._snapshotting is None and self._counting is not None:
            self._snapshotting = self._register_before(self._before)
        elif not due and self._snapshotting is not None:
            self._snapshotting.remove()
            self._snapshotting = None

    def _trains_model(self, optimizer: Any) -> bool:
        if optimizer is self._last_optimizer:  # the hot path: the same optimizer, every step
            return self._last_answer
        known = self._trains.get(optimizer)
        if known is None:
            known = any(p is self._first for group in optimizer.param_groups for p in group["params"])
            self._trains[optimizer] = known
        self._last_optimizer, self._last_answer = optimizer, known
        return known

    def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._count % self.every == 0 and self._trains_model(optimizer):
            self._guarded(self._arm)

    def _arm(self) -> None:
        self.probe.before_step(grads_will_change=False)  # weights before the step: the update is their change
        self._armed = True

    def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._trains_model(optimizer):
            return
        if self._armed:
            self._armed = False
            self._guarded(self._measure)
        self._count += 1
        self._schedule()

    def _measure(self) -> None:
        self.pending = self.probe.after_step()

    def _guarded(self, measure: Any) -> None:
        """A measurement that fails stops the watch, never the training step it runs in."""
        try:
            measure()
        except Exception:
            log.warning("scaletui watch: measuring failed; no more layer statistics for this run", exc_info=True)
            self.remove()
            self.pending, self._armed = None, False


__all__ = [
    "DEFAULT_WATCH_EVERY",
    "RESERVED_METRIC_KEYS",
    "InvalidMetric",
    "InvalidSize",
    "NotANumber",
    "ReservedMetricKey",
    "RunClosed",
    "RunHandle",
    "RunStorageError",
    "StepWentBackwards",
]
