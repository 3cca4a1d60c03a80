"""Sweeps that launch your code: load a `train.entrypoint` function and run one run of it in a worker.

config.py has already checked the target statically (the file or module exists and defines the
function) without running any user code. Here, inside a worker process, the module is imported for
real (once per worker) and the function is called with the run's config (a plain dict) and a
`RunHandle` attached to the run row the runner registered: the same handle `scaletui.init` gives a
script, so `log`, `watch`, `summary`, live alerts, `should_stop` (the app's `k`, the sweep's stop,
Ctrl-C) and `checkpoint_dir` + `last_step` (resume) behave the same for both.

How a run ends is decided here, from what the function did:
* it returned: `done` (or `diverged` when the loss's final value is not finite), or `interrupted`
  when it returned because it was asked to stop (`run.should_stop`): a later sweep resumes it;
* it raised: `failed` with the exception's first line; the worker and the sweep go on;
* the database refused its records: `StoreWriteFailed`, which stops the sweep (as built-in runs do).

Where the run's state and records go is its *ledger*: the database file from a local worker
(`LocalLedger`), or the Ray executor's writer from a Ray node, which writes them with the same store
code (`record_end` here, `OwnRunSink` there).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scaletui.core.config import Entrypoint, Sweep
from scaletui.core.records import RunOutcome, StopSignal
from scaletui.core.rows import ExperimentLoss
from scaletui.core.specs import RunSpec
from scaletui.core.thresholds import Thresholds
from scaletui.core.vocabulary import TRAIN_LOSS_METRIC, RunSource, RunStatus
from scaletui.services.own_records import (
    RunStorageError,
    RunStore,
    canonical_config,
    default_label,
    own_outcome,
    own_run_row,
)
from scaletui.services.own_run import RunHandle, attached_run
from scaletui.store.errors import StoreWriteFailed
from scaletui.store.reader import Reader
from scaletui.store.writer import Store, default_host

log = logging.getLogger(__name__)

#: What a worker reports while a run goes: (step, the loss-like value just logged or None).
Progress = Callable[[int, "float | None"], None]
PROGRESS_INTERVAL_S = 0.25  # as the built-in loop's progress reports

_loaded: dict[tuple[str, str], Callable[..., Any]] = {}  # (target, folder) -> function, per worker process


class EntrypointError(ImportError):
    """The target cannot be loaded as a function; one line naming it."""


@dataclass(frozen=True)
class EntryRun:
    """One run of an entrypoint sweep, as the runner hands it to a worker (picklable)."""

    entrypoint: Entrypoint
    key: str  # the run's key (own_run_key): its checkpoint folder's name
    label: str
    thresholds: Thresholds  # the sweep's [diagnostics], for the run's live alerts


class LossConflict(ValueError):
    """The sweep's experiment already exists with another loss (metric or direction); one line."""


# --------------------------------------------------------------------------- in the runner: registration


def register_entry_runs(store: Store, sweep: Sweep, fresh: bool) -> tuple[int, list[tuple[int, RunSpec, EntryRun]]]:
    """Register the sweep's runs as runs of one's own loop (their config in user_config_json, keyed by the
    experiment and the config, as `scaletui.init` keys them) and return the experiment's id and the runs
    still to train, `queued`. As for built-in sweeps: without `fresh`, finished runs are skipped, runs
    another live process holds are left to it, and the rest resume with their records; with `fresh`
    every run starts over."""
    if sweep.entrypoint is None:
        raise ValueError(f"{sweep.source}: not an entrypoint sweep")
    experiment_id = _experiment(store, sweep)
    column_types = store.run_column_types()
    with Reader(store.path) as reader:
        statuses = {row.key: row.status for row in reader.runs(sweep.name)}
    todo: list[tuple[int, RunSpec, EntryRun]] = []
    seen: set[str] = set()
    for spec, config in zip(sweep.runs, sweep.entry_configs, strict=True):
        clean = canonical_config(config)
        row = own_run_row(experiment_id, sweep.name, clean, _label(clean, sweep), column_types, RunSource.ENTRYPOINT)
        status = statuses.get(row.key)
        if row.key in seen or (not fresh and status is not None and (status.finished or status is RunStatus.RUNNING)):
            continue
        seen.add(row.key)
        claim = store.claim_own_run(row, resume=not fresh, pid=os.getpid(), host=default_host(), queue=True)
        if claim.held_by is None:  # queued: running once a worker has it
            todo.append((claim.run_id, spec, EntryRun(sweep.entrypoint, row.key, row.label, sweep.thresholds)))
    return experiment_id, todo


def _experiment(store: Store, sweep: Sweep) -> int:
    """The experiment, created with the sweep's loss; one that already has another loss is a LossConflict."""
    wanted = ExperimentLoss(sweep.loss_metric, sweep.higher_is_better, sweep.loss_rule)
    experiment_id, loss = store.own_experiment(sweep.name, wanted)
    if (loss.metric, loss.higher_is_better) != (wanted.metric, wanted.higher_is_better):
        raise LossConflict(f"{sweep.source.name}: experiment.loss: experiment {sweep.name!r} in {store.path} has the "
                           f"{loss.describe()}; this file says {wanted.describe()} (state the same, or rename it)")
    store.upsert_experiment(sweep.name, str(sweep.source), sweep.toml_text, sweep.loss_rule.value)
    return experiment_id


def _label(config: Mapping[str, Any], sweep: Sweep) -> str:
    """Like a built-in run's (`w64 d2 s0`), plus the value of every [user] axis (`gain=0.5`)."""
    own = [f"{axis.removeprefix('user.')}={config[axis.removeprefix('user.')]}" for axis in sweep.user_axes]
    base = default_label({k: v for k, v in config.items() if k in ("width", "depth", "seed")}, "")
    return " ".join(part for part in (base.removeprefix("run "), *own) if part) or "run"


# --------------------------------------------------------------------------- in a worker


def load_entrypoint(entrypoint: Entrypoint) -> Callable[..., Any]:
    """The function `entrypoint` names, importing its module once per process. A file's folder and the
    sweep file's folder go on sys.path first, so the user's code imports its neighbours."""
    cache_key = (entrypoint.target, str(entrypoint.folder))
    if cache_key not in _loaded:
        module = _import_file(entrypoint.path) if entrypoint.is_path else _import_module(entrypoint)
        function = getattr(module, entrypoint.function, None)
        if not callable(function):
            raise EntrypointError(f"train.entrypoint: {entrypoint.target} is not a function")
        _loaded[cache_key] = function
    return _loaded[cache_key]


def _on_path(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _import_file(path: Path) -> Any:
    _on_path(path.parent)
    name = f"scaletui_entrypoint_{abs(hash(str(path.resolve())))}"  # its own name: no clash with the user's modules
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"train.entrypoint: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(entrypoint: Entrypoint) -> Any:
    _on_path(entrypoint.folder)
    return importlib.import_module(entrypoint.module)


class ReportingHandle(RunHandle[RunStore]):
    """A RunHandle that also tells the runner how far the run is (for progress bars), at most every
    PROGRESS_INTERVAL_S: one clock read per `log` call."""

    progress: Progress | None = None
    _last_report = 0.0

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        super().log(values, step)
        now = time.monotonic()
        if self.progress is not None and now - self._last_report >= PROGRESS_INTERVAL_S and self.step is not None:
            self._last_report = now
            self.progress(self.step, _loss_like(values, self.loss.metric))


def _loss_like(values: Mapping[str, Any], metric: str) -> float | None:
    for key in (TRAIN_LOSS_METRIC, metric):
        value = values.get(key)
        if type(value) is float or (isinstance(value, int) and not isinstance(value, bool)):
            return float(value)
    return None


def checkpoint_folder(checkpoint_dir: Path, database_id: str, key: str) -> Path:
    """The run's checkpoint folder (as runner.checkpoint_dir_for, by the run's own key)."""
    return Path(checkpoint_dir) / database_id / key


class RunLedger(Protocol):
    """Where an entrypoint run's state and records go: `LocalLedger` (the database file, from a local
    worker) or, on a Ray node, the executor's writer (services/ray_executor.py `ShippedLedger`)."""

    def mark_running(self, run_id: int, pid: int, host: str) -> None: ...

    def attach(self, run_id: int, stop: StopSignal, folder: Path, thresholds: Thresholds | None
               ) -> ReportingHandle: ...

    def end(self, handle: ReportingHandle, status: RunStatus, error: str | None) -> RunOutcome: ...


class LocalLedger:
    """An entrypoint run's database is the file at `db`, which this process opens itself."""

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self._store: Store | None = None  # the attached handle's, closed at the run's end

    def mark_running(self, run_id: int, pid: int, host: str) -> None:
        with Store(self.db) as store:
            store.mark_running(run_id, pid, host)

    def attach(self, run_id: int, stop: StopSignal, folder: Path, thresholds: Thresholds | None
               ) -> ReportingHandle:
        self._store = Store(self.db)
        return ReportingHandle.on(self._store, attached_run(self.db, run_id), stop=stop, checkpoint_dir=folder,
                                  thresholds=thresholds)

    def end(self, handle: ReportingHandle, status: RunStatus, error: str | None) -> RunOutcome:
        with self._store or Store(self.db) as store:  # the handle's own store, closed with the run
            return record_end(store, handle.id, handle.loss, status, error)


def record_end(store: Store, run_id: int, loss: ExperimentLoss, status: RunStatus, error: str | None
               ) -> RunOutcome:
    """Mark the run's end in `store`, with its loss from what the database holds (see `own_outcome`)."""
    with Reader(store.path) as reader:
        outcome = own_outcome(reader, run_id, loss, status, error)
    if status is RunStatus.FAILED:
        store.mark_failed(run_id, error or "")
    elif status is RunStatus.INTERRUPTED:
        store.mark_interrupted(run_id, error or "stopped")
    else:
        store.finish_own_run(run_id, outcome, loss.metric)
    return outcome


def start_run(ledger: RunLedger, run_id: int, stop: StopSignal, folder: Path, progress: Progress | None,
              thresholds: Thresholds | None = None) -> ReportingHandle:
    """Mark the run running in this process and attach a handle to it (its folder made)."""
    ledger.mark_running(run_id, os.getpid(), socket.gethostname())
    folder.mkdir(parents=True, exist_ok=True)
    handle = ledger.attach(run_id, stop, folder, thresholds)
    handle.progress = progress
    return handle


def run_entry(handle: ReportingHandle, entrypoint: Entrypoint, ledger: RunLedger) -> RunOutcome:
    """Call the user's function on the run and record how it ended (see the module docstring)."""
    try:
        function = load_entrypoint(entrypoint)
        function(dict(handle.config), handle)
    except Exception as exc:
        log.debug("run %s failed:\n%s", handle.id, traceback.format_exc())
        _close(handle)
        return ledger.end(handle, RunStatus.FAILED, describe(exc))
    _close(handle)
    if handle.should_stop:
        where = f"at step {handle.step}" if handle.step is not None else "before any step"
        return ledger.end(handle, RunStatus.INTERRUPTED, f"stopped {where}")
    return ledger.end(handle, RunStatus.DONE, None)


def _close(handle: ReportingHandle) -> None:
    """Write everything the run logged; a database that refuses it stops the sweep."""
    try:
        handle.close()
    except RunStorageError as exc:
        raise StoreWriteFailed(handle.store.path, str(exc)) from exc


def describe(exc: BaseException) -> str:
    """`ValueError: the first line of its message` (the type alone when there is no message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
