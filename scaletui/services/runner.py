"""Run a sweep on worker processes: the one place that wires the engine to the store.

Shape of a sweep run:
- the runner (this process) validates nothing (config.py did), prepares the
  datasets, registers runs in the store, reaps rows left `running` by dead
  processes, then hands *tasks* to an *executor*: a task is one run, or (with
  `experiment.batch_runs`) a bundle of runs that differ only in seed, lr or weight
  decay, which one worker trains as one batched model (engine/batched.py; see
  `plan_tasks` for how bundles are sized);
- the executor here is `LocalProcessExecutor`: N persistent spawn-started worker
  processes, one per core by default, each with its share of the idle cores as
  torch threads (`core.config.default_threads_per_worker`: 1 unless a worker has a
  quiet core to itself and more; two single-threaded workers beat one two-threaded
  process by 1.3-1.85x). A worker trains one task
  at a time and writes each run's records to SQLite itself through its own
  `StoreSink`, and tells the runner as each run of a bundle ends;
- the Ray executor (services/ray_executor.py, `experiment.executor = "ray"`) honours the
  same `Executor.run` with Ray tasks; its workers call `run_task` with a stand-in for the
  store and sinks that ship records to one writer on the database's node: the engine and
  the store do not change.

Robustness choices, each because of a way real sweeps die:
- every worker talks to the runner over its own pipe, never a shared queue, so
  a worker killed with SIGKILL cannot leave a shared lock held and hang the rest;
- the stop flag is a lock-free shared byte, read every step;
- workers ignore SIGINT (the terminal sends it to the whole process group) and
  stop through the flag, so Ctrl-C gives every run a flush and a checkpoint;
- a worker whose parent died stops its run and marks it `interrupted` itself;
- a worker that dies is replaced, and its unfinished runs become `interrupted`;
- the app stops one run of a bundle with a request file naming it, then SIGUSR1
  (services/stop_requests.py); the bundle's other runs go on.

A sweep with `train.entrypoint` trains the user's function instead of the built-in loop
(services/entrypoint.py): its runs are registered as runs of one's own loop (the Python API's rows),
are never bundled, and each calls the function in a worker with its config and a run handle whose
`should_stop` follows the same stop signal as a built-in run's.

A checkpoint belongs to one run of one database: runs of the same sweep file in two
databases (`--db`) share `experiment.checkpoint_dir`, so each database's checkpoints
live under `<checkpoint_dir>/<database id>/<run key>`, `--fresh` deletes only those,
and a run resumes only from a checkpoint its database holds the records for.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from scaletui.core.config import Sweep
from scaletui.core.records import LayerStats, MetricRecord, ModelInfo, RunOutcome, Sink, StopSignal
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import TRAIN_LOSS_METRIC, ExecutorKind, RunEventKind, RunStatus
from scaletui.services.schedule import ends_first

if TYPE_CHECKING:
    from scaletui.services.entrypoint import EntryRun, RunLedger

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # how often a worker reports a run's progress to the runner
STOP_GRACE_S = 60.0  # how long stopping workers get to flush and checkpoint before they are killed


@dataclass(frozen=True)
class Task:
    """One run handed to an executor, or a bundle of same-shape runs that one worker trains together as
    one batched model (engine/batched.py): `run_id`/`spec` is its first run, `others` the rest."""

    run_id: int
    spec: RunSpec
    others: tuple[tuple[int, RunSpec], ...] = ()
    entry: EntryRun | None = None  # a run of a `train.entrypoint` sweep (never bundled: `others` is empty)

    @property
    def members(self) -> tuple[tuple[int, RunSpec], ...]:
        """(run id, spec) of every run of the task, the first one first."""
        return ((self.run_id, self.spec), *self.others)


@dataclass(frozen=True)
class RunEvent:
    """What the runner tells its front end about one run (see `RunEventKind`): started, progress,
    finished (a dead worker's run finishes as `interrupted`, with the reason in `error`), and, from a
    worker whose database refuses writes, storage_failed (the sweep stops)."""

    kind: RunEventKind
    run_id: int
    label: str
    step: int = 0
    steps: int = 0
    train_loss: float | None = None
    steps_per_s: float | None = None
    status: RunStatus | None = None
    error: str | None = None
    resumed_from: int = 0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs, picklable for spawn."""

    db: Path
    data_dir: Path
    checkpoint_dir: Path  # experiment.checkpoint_dir; runs' folders are under it, see checkpoint_dir_for
    database_id: str  # the database's identity: keeps its runs' checkpoints apart from other databases'
    threads: int
    parent_pid: int
    memory_limit_mb: float | None = None  # experiment.memory_limit_mb, enforced by the training loop


@dataclass
class SweepResult:
    """How a sweep run ended: the final status of every run it was asked to run."""

    statuses: dict[int, RunStatus] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 all runs done or early-stopped, 1 otherwise (failed, diverged, interrupted)."""
        return 0 if all(s.ok for s in self.statuses.values()) and not self.interrupted else 1


@runtime_checkable
class Executor(Protocol):
    """Where runs execute. Must deliver RunEvents and honour `should_stop`."""

    def run(
        self, tasks: Sequence[Task], on_event: Callable[[RunEvent], None], should_stop: Callable[[], bool]
    ) -> None: ...


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------
class SweepBusy(RuntimeError):
    """The sweep cannot start as asked because another live process is running its runs."""


class ClusterUnusable(RuntimeError):
    """The sweep's Ray cluster cannot run it (unreachable, too small for a run, another version, no
    `ray` installed): one line, raised before anything is written (services/ray_executor.py)."""


def checkpoint_dir_for(sweep_checkpoints: Path, database_id: str, spec: RunSpec) -> Path:
    """The run's checkpoint folder: its database's own, so no other database resumes from or deletes it."""
    return Path(sweep_checkpoints) / database_id / spec.key


def run_sweep(
    sweep: Sweep,
    *,
    fresh: bool = False,
    on_event: Callable[[RunEvent], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
    executor: Executor | None = None,
    on_plan: Callable[[int, int], None] = lambda to_run, total: None,
) -> SweepResult:
    """Prepare data, register runs, reap orphans, and train what is not finished.

    `on_plan(to_run, total)` is called once the database says how many of the sweep's runs still
    need training (the rest finished earlier), before any starts: front ends count progress with it.

    Without an explicit `executor`, `sweep.executor` chooses: local worker processes, or a Ray
    cluster, which is joined and checked first (ClusterUnusable before anything is written)."""
    if executor is None and sweep.executor is ExecutorKind.RAY:
        try:
            from scaletui.services.ray_executor import RayCluster
        except ModuleNotFoundError as e:
            if e.name != "ray":
                raise
            raise ClusterUnusable(f"{sweep.source.name}: experiment.executor: \"ray\" needs Ray installed: "
                                  "pip install 'scaletui[ray]'") from None
        with RayCluster.join(sweep) as cluster:
            return _run_sweep(sweep, fresh, on_event, should_stop, cluster.executor, on_plan)
    local = executor or (lambda config: LocalProcessExecutor(sweep.workers, config))
    return _run_sweep(sweep, fresh, on_event, should_stop, local, on_plan)


def _run_sweep(
    sweep: Sweep,
    fresh: bool,
    on_event: Callable[[RunEvent], None],
    should_stop: Callable[[], bool],
    executor: Executor | Callable[[WorkerConfig], Executor],
    on_plan: Callable[[int, int], None],
) -> SweepResult:
    """run_sweep with its executor, or the function that makes one from the workers' config."""
    if sweep.entrypoint is None:
        prepare_datasets(sweep)  # may raise DatasetUnavailable before the database is touched
    from scaletui.store.writer import Store

    with Store(sweep.db) as store:
        store.reap_orphans(socket.gethostname(), pid_alive)
        if fresh and store.running_runs(sweep.name):
            raise SweepBusy(
                f"{sweep.db}: runs of {sweep.name!r} are still running in another process; "
                "stop it before starting over with --fresh"
            )
        experiment_id, tasks = _register(store, sweep, fresh)
        database_id = store.database_id()
    if fresh:
        for folder in _checkpoint_folders(sweep, database_id, tasks):
            shutil.rmtree(folder, ignore_errors=True)
    result = SweepResult()

    storage_failures: list[str] = []  # a worker found the database unwritable: the sweep stops

    def record(event: RunEvent) -> None:
        if event.kind is RunEventKind.STORAGE_FAILED:
            storage_failures.append(event.error or "")
        if event.kind is RunEventKind.FINISHED and event.status is not None:
            result.statuses[event.run_id] = event.status
            _score_ledger(sweep)
        on_event(event)

    todo = [member for task in tasks for member in task.members]
    tasks = ends_first(tasks)
    on_plan(len(todo), len(sweep.runs))
    if not isinstance(executor, Executor):
        executor = executor(worker_config(sweep, database_id))
    from scaletui.services.monitor import SweepMonitor

    with SweepMonitor(sweep, experiment_id, [run_id for run_id, _ in todo]):  # live alerts; never fails the sweep
        executor.run(tasks, record, lambda: should_stop() or bool(storage_failures))
    _score_ledger(sweep)  # what the monitor's final pass predicted after the last run's finish
    if storage_failures:
        from scaletui.store.errors import StoreWriteFailed

        raise StoreWriteFailed(sweep.db, storage_failures[0])
    result.interrupted = should_stop() or len(result.statuses) < len(todo)
    for run_id, _ in todo:
        result.statuses.setdefault(run_id, RunStatus.INTERRUPTED)
    return result


def _score_ledger(sweep: Sweep) -> None:
    """Score the recorded predictions this run may have settled (services.predictions); the ledger is
    a report on the sweep, never a reason to stop it: a failure is logged and the sweep goes on."""
    from scaletui.services.predictions import score_predictions

    try:
        score_predictions(sweep.db, sweep.name)
    except Exception:  # e.g. a database locked by hand: scored again at the next finish
        log.exception("scoring the predictions ledger failed; the sweep goes on")


def _register(store: Any, sweep: Sweep, fresh: bool) -> tuple[int, list[Task]]:
    """Register the sweep's runs; return the experiment's id and the tasks still to train."""
    if sweep.entrypoint is not None:
        from scaletui.services.entrypoint import LossConflict, register_entry_runs

        try:
            experiment_id, entries = register_entry_runs(store, sweep, fresh)
        except LossConflict as e:
            raise SweepBusy(str(e)) from None  # front ends report it as one line, like a busy sweep
        return experiment_id, [Task(run_id, spec, entry=entry) for run_id, spec, entry in entries]
    experiment_id = store.upsert_experiment(sweep.name, str(sweep.source), sweep.toml_text, sweep.loss_rule.value)
    todo = store.register_runs(experiment_id, sweep.runs, fresh)
    return experiment_id, plan_tasks(todo, sweep.workers, sweep.batch_runs)


def _checkpoint_folders(sweep: Sweep, database_id: str, tasks: Sequence[Task]) -> list[Path]:
    """What `--fresh` deletes: every run's checkpoint folder. An entrypoint run's is named by its own
    key, known once it is registered; with `--fresh` every run of the sweep is a task."""
    if sweep.entrypoint is None:
        return [checkpoint_dir_for(sweep.checkpoint_dir, database_id, spec) for spec in sweep.runs]
    from scaletui.services.entrypoint import checkpoint_folder

    return [checkpoint_folder(sweep.checkpoint_dir, database_id, task.entry.key) for task in tasks if task.entry]


# ---------------------------------------------------------------------------
# Bundles: same-shape runs trained together
# ---------------------------------------------------------------------------
BUNDLE_MAX_RUNS = 16  # members of one bundle at most (past ~8 the gain per member flattens)
BUNDLE_BUDGET_BYTES = 2 * 2**30  # estimated training memory of one bundle at most


def plan_tasks(todo: Sequence[tuple[int, RunSpec]], workers: int, batch_runs: bool) -> list[Task]:
    """The sweep's runs as tasks: with `batch_runs`, runs that share everything but seed, lr and weight
    decay (`engine.bundles.bundle_key`) become bundles where batching pays on their device
    (`engine.batched.worth_batching`), each no bigger than memory allows (`bundle_capacity`); bundles
    are split further while there are fewer tasks than workers, so no worker idles while another
    trains a big bundle. Other runs (and every run without `batch_runs`) are tasks of their own."""
    if not batch_runs:
        return [Task(run_id, spec) for run_id, spec in todo]
    from scaletui.engine.bundles import bundle_key

    groups: dict[str, list[tuple[int, RunSpec]]] = {}
    for run_id, spec in todo:
        key = bundle_key(spec)
        groups.setdefault(key if key is not None else f"alone:{run_id}", []).append((run_id, spec))
    chunks: list[list[tuple[int, RunSpec]]] = []
    for group in groups.values():
        if len(group) > 1 and _worth_batching(group[0][1]):
            chunks += _split(group, bundle_capacity(group[0][1], workers))
        else:
            chunks += [[run] for run in group]
    chunks = _fill_workers(chunks, workers)
    return [Task(chunk[0][0], chunk[0][1], tuple(chunk[1:])) for chunk in chunks]


def _worth_batching(spec: RunSpec) -> bool:
    # Imported only here: it builds the model (torch), and a sweep with no group to bundle never needs it.
    from scaletui.engine.batched import worth_batching

    return worth_batching(spec)


def _split(group: list[tuple[int, RunSpec]], capacity: int) -> list[list[tuple[int, RunSpec]]]:
    """`group` in the fewest chunks of at most `capacity` runs, their sizes as equal as can be."""
    n_chunks = -(-len(group) // capacity)
    return [group[i::n_chunks] for i in range(n_chunks)]


def _fill_workers(chunks: list[list[tuple[int, RunSpec]]], workers: int) -> list[list[tuple[int, RunSpec]]]:
    """Halve the biggest bundle while there are fewer tasks than workers (an idle worker costs more
    than a smaller bundle gains)."""
    chunks = sorted(chunks, key=len, reverse=True)
    while chunks and len(chunks) < workers and len(chunks[0]) > 1:
        biggest = chunks.pop(0)
        chunks = sorted(chunks + _split(biggest, -(-len(biggest) // 2)), key=len, reverse=True)
    return chunks


def bundle_capacity(spec: RunSpec, workers: int) -> int:
    """How many runs like `spec` one bundle may hold: its estimated training memory
    (`engine.models.training_memory_bytes`) times the members must fit in the smaller of a fixed
    budget and an even share of half the memory available now; at least 1, at most BUNDLE_MAX_RUNS."""
    from scaletui.core.datasets import DATASETS
    from scaletui.engine.models import training_memory_bytes

    info = DATASETS[spec.data.dataset]
    need = training_memory_bytes(spec.model, info.input_shape, info.num_classes, spec.train.optimizer,
                                 spec.train.batch_size)
    budget = min(BUNDLE_BUDGET_BYTES, available_memory_bytes() // (2 * max(1, workers)))
    return max(1, min(BUNDLE_MAX_RUNS, budget // max(1, need)))


def available_memory_bytes() -> int:
    """Memory the system can give without swapping (MemAvailable), or all of it where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return BUNDLE_BUDGET_BYTES * 2


def prepare_datasets(sweep: Sweep) -> None:
    """Generate or check every dataset once, in this process, before workers race for it."""
    from scaletui.engine.dataset_files import prepare_dataset

    for data in sweep.datasets:
        prepare_dataset(data, sweep.data_dir)


def worker_config(sweep: Sweep, database_id: str) -> WorkerConfig:
    return WorkerConfig(
        db=sweep.db.resolve(),
        data_dir=sweep.data_dir.resolve(),
        checkpoint_dir=sweep.checkpoint_dir.resolve(),
        database_id=database_id,
        threads=sweep.threads_per_worker,
        parent_pid=os.getpid(),
        memory_limit_mb=sweep.memory_limit_mb,
    )


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------------------
# Local process pool
# ---------------------------------------------------------------------------
@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    task: Task | None = None
    open_runs: dict[int, str] = field(default_factory=dict)  # run id -> label: the task's runs not yet finished
    # Its pipe reached EOF (it is exiting): only its death is left to wait for. An EOF pipe polls as readable
    # forever, so waiting on it as well would spin the runner until the process is gone.
    pipe_closed: bool = False

    def take(self, task: Task) -> None:
        self.task = task
        self.open_runs = {run_id: spec.label for run_id, spec in task.members}

    def finished(self, run_id: int) -> None:
        """One run of the task ended; the worker is free once every run of its task has."""
        self.open_runs.pop(run_id, None)
        if not self.open_runs:
            self.task = None


class LocalProcessExecutor:
    """N persistent spawn workers, one pipe each; a dead worker is replaced and its run interrupted."""

    def __init__(self, workers: int, config: WorkerConfig) -> None:
        self.n_workers = max(1, workers)
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._stop_flag = self._ctx.RawValue("b", 0)  # lock-free: a killed reader cannot hold it
        self._startup_deaths = 0

    def run(
        self, tasks: Sequence[Task], on_event: Callable[[RunEvent], None], should_stop: Callable[[], bool]
    ) -> None:
        pending: deque[Task] = deque(tasks)
        workers: list[_Worker] = []
        stopping_since: float | None = None
        try:
            while pending or any(w.task for w in workers):
                if stopping_since is None and should_stop():
                    stopping_since = self._begin_stop(pending)
                if stopping_since is None:
                    self._top_up(workers, len(pending))
                    self._dispatch(workers, pending)
                elif time.monotonic() - stopping_since > STOP_GRACE_S:
                    break
                self._pump(workers, on_event)
        finally:
            self._shutdown(workers, on_event)

    def _begin_stop(self, pending: deque[Task]) -> float:
        self._stop_flag.value = 1
        pending.clear()  # runs not started stay `queued` in the store
        return time.monotonic()

    def _top_up(self, workers: list[_Worker], n_pending: int) -> None:
        if self._startup_deaths > 2 * self.n_workers:
            raise RuntimeError("worker processes keep dying before taking a run; see the log above")
        busy = sum(1 for w in workers if w.task)
        while len(workers) < min(self.n_workers, busy + n_pending):
            workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_process, args=(self.config, child, self._stop_flag), daemon=True, name="scaletui-worker"
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    @staticmethod
    def _dispatch(workers: list[_Worker], pending: deque[Task]) -> None:
        for w in workers:
            if w.task is None and pending and w.process.is_alive():
                w.take(pending.popleft())
                w.conn.send(w.task)

    def _pump(self, workers: list[_Worker], on_event: Callable[[RunEvent], None]) -> None:
        """Wait up to 0.5 s for messages or deaths, and handle them."""
        ready = wait([w.conn for w in workers if not w.pipe_closed] + [w.process.sentinel for w in workers],
                     timeout=0.5)
        for w in list(workers):
            if w.conn in ready:
                self._receive(w, on_event)
            if not w.process.is_alive():
                # Read what it sent before dying, then bury it. Not `not conn.poll()`: a dead
                # worker's pipe polls as readable forever (EOF), which left its run unburied.
                self._receive(w, on_event)
                self._bury(w, workers, on_event)

    @staticmethod
    def _receive(w: _Worker, on_event: Callable[[RunEvent], None]) -> None:
        try:
            while w.conn.poll():
                event: RunEvent = w.conn.recv()
                if event.kind is RunEventKind.FINISHED:
                    w.finished(event.run_id)
                elif event.kind is RunEventKind.STORAGE_FAILED:  # the sweep stops; the rest of the task is moot
                    w.task, w.open_runs = None, {}
                on_event(event)
        except (EOFError, OSError):
            w.pipe_closed = True  # the worker exited or died (mid-message, maybe); _bury handles its run

    def _bury(self, w: _Worker, workers: list[_Worker], on_event: Callable[[RunEvent], None]) -> None:
        workers.remove(w)
        w.process.join(timeout=1)
        if w.task is None:
            self._startup_deaths += w.process.exitcode not in (0, None)
            return
        reason = f"worker process {w.process.pid} died (exit code {w.process.exitcode})"
        from scaletui.store.errors import StoreError
        from scaletui.store.writer import Store

        for run_id, label in list(w.open_runs.items()):  # every run of its task that had not finished
            try:
                with Store(self.config.db) as store:
                    store.mark_interrupted(run_id, reason)
            except StoreError:  # the database refuses writes; the next sweep reaps the run (its pid is gone)
                log.debug("could not mark run %s interrupted", run_id, exc_info=True)
            on_event(RunEvent(RunEventKind.FINISHED, run_id, label, status=RunStatus.INTERRUPTED, error=reason))
        w.task, w.open_runs = None, {}

    def _shutdown(self, workers: list[_Worker], on_event: Callable[[RunEvent], None]) -> None:
        """Ask idle workers to exit; kill any that overstay, marking their runs interrupted."""
        self._stop_flag.value = 1
        for w in workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 10
        while any(w.process.is_alive() for w in workers) and time.monotonic() < deadline:
            self._pump(workers, on_event)
        for w in list(workers):
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            self._bury(w, workers, on_event)


# ---------------------------------------------------------------------------
# Inside a worker process
# ---------------------------------------------------------------------------
class _WorkerStop:
    """Stop when the runner raises the shared flag, the runner process is gone, SIGTERM
    arrived (a service manager stopping the whole process group: stop like the sweep does), or
    SIGUSR1 asked this worker to stop one of its runs (how the app stops one run).

    SIGUSR1 only sets a flag; the next check reads the worker's stop requests
    (services/stop_requests.py): the runs they name stop, the others of a bundle go on. A bare
    SIGUSR1 with no request stops everything the worker trains, as before bundles existed. A request
    with a reason (the monitor's `train.stop_when_hopeless`) keeps it: `reason(run_id)`."""

    def __init__(self, flag: Any, parent_pid: int) -> None:
        self.flag = flag
        self.parent_pid = parent_pid
        self.run_stop = False  # stop every run of the current task
        self.terminated = False
        self.signalled = False  # SIGUSR1 arrived; its requests are not read yet
        self.requested: set[int] = set()  # runs of the current task asked to stop
        self.reasons: dict[int, str] = {}  # runs asked to stop with a reason: they end early_stopped
        self.current: set[int] = set()  # the current task's run ids

    def new_task(self, task: Task) -> None:
        """Forget stops meant for earlier tasks: the app asks only for runs it sees running, and the
        task's runs are marked running after this."""
        from scaletui.services.stop_requests import take_stop_requests

        self.run_stop, self.signalled = False, False
        self.requested.clear()
        self.reasons.clear()
        take_stop_requests(os.getpid())
        self.current = {run_id for run_id, _ in task.members}

    def is_set(self) -> bool:
        """Stop the current task's run (one run alone: the loop's StopSignal)."""
        self._read_requests()
        return self.run_stop or bool(self.requested & self.current) or self.sweep_stopping()

    def member(self, run_id: int) -> _RunStop:
        """The StopSignal of one run of a bundle."""
        return _RunStop(self, run_id)

    def run_stopping(self, run_id: int) -> bool:
        self._read_requests()
        return self.run_stop or run_id in self.requested or self.sweep_stopping()

    def sweep_stopping(self) -> bool:
        return self.terminated or bool(self.flag.value) or os.getppid() != self.parent_pid

    def reason(self, run_id: int) -> str | None:
        """Why run `run_id` was asked to stop, when its request said (else None: an interruption)."""
        return self.reasons.get(run_id)

    def stop_current_run(self, signum: int, frame: Any) -> None:
        self.signalled = True  # a signal handler does as little as possible: the files are read later

    def terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True  # the run checkpoints and becomes `interrupted`; then the worker exits

    def _read_requests(self) -> None:
        if not self.signalled:
            return
        self.signalled = False
        from scaletui.services.stop_requests import take_stop_requests_with_reasons

        named = take_stop_requests_with_reasons(os.getpid())
        if named:
            mine = named.keys() & self.current  # a request for a run that already ended is moot
            self.requested |= mine
            self.reasons.update({run_id: reason for run_id, reason in named.items() if run_id in mine and reason})
        else:
            self.run_stop = True


@dataclass(frozen=True)
class _RunStop:
    """One bundle member's stop signal: its own request, a stop of the whole task, or the sweep's."""

    worker: _WorkerStop
    run_id: int

    def is_set(self) -> bool:
        return self.worker.run_stopping(self.run_id)


class ReportingSink:
    """Forwards every record to the store's sink and tells the runner how the run is going."""

    def __init__(self, inner: Any, conn: EventPipe, run_id: int, spec: RunSpec) -> None:
        self.inner = inner
        self.conn = conn
        self.run_id = run_id
        self.spec = spec
        self._last_report = 0.0
        self.reported_step = 0
        self._rate_clock = time.monotonic()
        self.resumed_from = 0

    def started(self, info: ModelInfo, resumed_from: int) -> None:
        self.resumed_from = resumed_from
        self.reported_step = resumed_from
        self.inner.started(info, resumed_from)
        _send(self.conn, self._event(RunEventKind.STARTED, step=resumed_from, resumed_from=resumed_from))

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self.inner.metrics(rows)
        losses = [r for r in rows if r.key == TRAIN_LOSS_METRIC]
        now = time.monotonic()
        if losses and now - self._last_report >= PROGRESS_INTERVAL_S:
            step = losses[-1].step
            rate = (step - self.reported_step) / max(now - self._rate_clock, 1e-9)
            self._last_report, self.reported_step, self._rate_clock = now, step, now
            _send(self.conn, self._event(RunEventKind.PROGRESS, step=step, train_loss=losses[-1].value,
                                         steps_per_s=rate))

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self.inner.layer_stats(rows)

    def event(self, kind: str, message: str) -> None:
        self.inner.event(kind, message)

    def flush(self) -> None:
        self.inner.flush()

    def _event(self, kind: RunEventKind, **kw: Any) -> RunEvent:
        return RunEvent(kind, self.run_id, self.spec.label, steps=self.spec.train.steps, **kw)


def _send(conn: EventPipe, event: RunEvent) -> None:
    try:
        conn.send(event)
    except (BrokenPipeError, OSError):
        pass  # the runner is gone; the stop check ends the run


def worker_process(config: WorkerConfig, conn: Connection, stop_flag: Any) -> None:
    """The target of a local worker process: `worker_main`, then, when it trained only scaletui's own runs,
    an exit that skips the interpreter's teardown.

    Why: tearing down an interpreter that has imported torch (and torch._dynamo, which every torch.optim
    optimizer imports) takes ~1.5 s of CPU (2-3 s of wall) on these machines, paid by every worker after
    its last run, for nothing: everything the worker wrote is committed (SQLite) or renamed into place
    (checkpoints) before its run is reported finished. A worker that ran a researcher's own training
    function exits normally, so that function's atexit handlers and open files are finished as usual."""
    ran_user_code = worker_main(config, conn, stop_flag)
    if not ran_user_code:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def worker_main(config: WorkerConfig, conn: Connection, stop_flag: Any) -> bool:
    """A worker's loop: take tasks (a run, or a bundle of runs) from the pipe until told to exit. Returns
    whether it ran a researcher's training function (an entrypoint task)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runner, which raises the flag
    import torch

    from scaletui.services.stop_requests import clear_stop_requests
    from scaletui.store.errors import StoreWriteFailed

    torch.set_num_threads(config.threads)
    clear_stop_requests(os.getpid())  # left by an earlier process with this pid
    stop = _WorkerStop(stop_flag, config.parent_pid)
    ran_user_code = False
    signal.signal(signal.SIGUSR1, stop.stop_current_run)
    signal.signal(signal.SIGTERM, stop.terminate)  # not the default death: flush and checkpoint first
    try:
        while not stop.sweep_stopping():
            if not conn.poll(0.5):
                continue
            try:
                task = conn.recv()
            except (EOFError, OSError):
                break
            if task is None:
                break
            ran_user_code |= task.entry is not None
            stop.new_task(task)
            try:
                run_task(task, config, conn, stop)
            except StoreWriteFailed as exc:  # nothing can be recorded; the runner stops the sweep and says why
                _send(conn, RunEvent(RunEventKind.STORAGE_FAILED, task.run_id, task.spec.label, error=exc.reason))
    finally:
        clear_stop_requests(os.getpid())
    return ran_user_code


class EventPipe(Protocol):
    """How a worker tells the runner about its runs: its end of the pipe (a local worker), or the Ray
    executor's event channel (services/ray_executor.py)."""

    def send(self, obj: Any) -> None: ...


class TaskStop(Protocol):
    """A worker's stop signal for its current task (`_WorkerStop` here, the Ray executor's own there)."""

    def is_set(self) -> bool: ...

    def member(self, run_id: int) -> StopSignal: ...


def run_task(task: Task, config: WorkerConfig, conn: EventPipe, stop: TaskStop, *, store: Any = None,
             open_sink: Callable[[int], Sink] | None = None, ledger: RunLedger | None = None) -> list[RunOutcome]:
    """Train the task's run (or bundle), record how each run ended and tell the runner (FINISHED per
    run, as each ends); an exception fails the runs it interrupted, never the worker.

    Run states go to `store` and records to the sinks `open_sink(run_id)` makes: by default the
    database's `Store` and a `StoreSink` on its file; a Ray worker, which has no database, passes the
    executor's writer client for both (services/ray_executor.py), and its `ledger` for an entrypoint run."""
    from scaletui.store.writer import Store, StoreSink

    if task.entry is not None:
        return [_run_entry(task, task.entry, config, conn, stop, ledger)]
    store = store if store is not None else Store(config.db)
    sinks = open_sink or (lambda run_id: StoreSink(config.db, run_id))
    if task.others:
        return _run_bundle(task, config, conn, stop, store, sinks)
    outcome = _run_alone(task.run_id, task.spec, config, conn, stop, store, sinks)
    _report_finished(conn, task.run_id, task.spec, outcome)
    return [outcome]


def _run_alone(run_id: int, spec: RunSpec, config: WorkerConfig, conn: EventPipe, stop: TaskStop,
               store: Any, open_sink: Callable[[int], Sink]) -> RunOutcome:
    from scaletui.engine.loop import train_run

    sink = _start_sink(run_id, spec, conn, store, open_sink)
    try:
        outcome = train_run(
            spec,
            sink,
            stop,
            data_dir=config.data_dir,
            checkpoint_dir=checkpoint_dir_for(config.checkpoint_dir, config.database_id, spec),
            memory_limit_mb=config.memory_limit_mb,
            resume_at_most=store.recorded_step(run_id),  # no further than the records this database holds
        )
    except Exception as exc:
        return _failed(store, [(run_id, sink)], exc)[0]
    outcome = _with_stop_reason(outcome, stop, run_id)
    store.finish_run(run_id, outcome)
    return outcome


def _run_bundle(task: Task, config: WorkerConfig, conn: EventPipe, stop: TaskStop, store: Any,
                open_sink: Callable[[int], Sink]) -> list[RunOutcome]:
    """Train the task's runs as one batched model (engine/batched.py); each run is marked running, records
    through its own sink, and is finished in the store and reported the moment it ends."""
    from scaletui.engine.batched import Member, train_bundle

    runs = task.members
    sinks = [_start_sink(run_id, spec, conn, store, open_sink) for run_id, spec in runs]
    members = [Member(spec, sink, stop.member(run_id), checkpoint_dir_for(config.checkpoint_dir, config.database_id,
                                                                           spec), store.recorded_step(run_id))
               for (run_id, spec), sink in zip(runs, sinks, strict=True)]  # fmt: skip
    outcomes: dict[int, RunOutcome] = {}

    def finished(index: int, outcome: RunOutcome) -> None:
        run_id, spec = runs[index]
        outcome = _with_stop_reason(outcome, stop, run_id)
        store.finish_run(run_id, outcome)
        outcomes[index] = outcome
        _report_finished(conn, run_id, spec, outcome)

    try:
        train_bundle(members, data_dir=config.data_dir, memory_limit_mb=config.memory_limit_mb, on_finished=finished)
    except Exception as exc:
        unfinished = [i for i in range(len(runs)) if i not in outcomes]
        failures = _failed(store, [(runs[i][0], sinks[i]) for i in unfinished], exc)
        for i, outcome in zip(unfinished, failures, strict=True):
            outcomes[i] = outcome
            _report_finished(conn, runs[i][0], runs[i][1], outcome)
    return [outcomes[i] for i in range(len(runs))]


def _run_entry(task: Task, entry: EntryRun, config: WorkerConfig, conn: EventPipe, stop: TaskStop,
               ledger: RunLedger | None) -> RunOutcome:
    """Call the user's function on one run (services/entrypoint.py) and tell the runner how it goes."""
    from scaletui.services.entrypoint import LocalLedger, checkpoint_folder, run_entry, start_run

    ledger = ledger if ledger is not None else LocalLedger(config.db)

    steps = task.spec.train.steps
    clock = {"at": time.monotonic(), "step": 0}

    def progress(step: int, loss: float | None) -> None:
        now = time.monotonic()
        rate = (step - clock["step"]) / max(now - clock["at"], 1e-9)
        clock.update(at=now, step=step)
        if loss is not None:  # progress lines show a loss; a step without one waits for the next
            _send(conn, RunEvent(RunEventKind.PROGRESS, task.run_id, entry.label, step=step, steps=steps,
                                 train_loss=loss, steps_per_s=rate))

    folder = checkpoint_folder(config.checkpoint_dir, config.database_id, entry.key)
    handle = start_run(ledger, task.run_id, stop, folder, progress, entry.thresholds)
    resumed = handle.last_step or 0
    clock["step"] = resumed
    _send(conn, RunEvent(RunEventKind.STARTED, task.run_id, entry.label, step=resumed, steps=steps,
                         resumed_from=resumed))
    outcome = run_entry(handle, entry.entrypoint, ledger)
    _send(conn, RunEvent(RunEventKind.FINISHED, task.run_id, entry.label, step=outcome.step, steps=steps,
                         status=outcome.status, error=outcome.error, train_loss=outcome.final_train_loss))
    return outcome


def _start_sink(run_id: int, spec: RunSpec, conn: EventPipe, store: Any, open_sink: Callable[[int], Sink]
                ) -> ReportingSink:
    """Mark the run running in this process and give it its own sink (its records, its progress)."""
    store.mark_running(run_id, os.getpid(), socket.gethostname())
    return ReportingSink(open_sink(run_id), conn, run_id, spec)


def _with_stop_reason(outcome: RunOutcome, stop: TaskStop, run_id: int) -> RunOutcome:
    """A run stopped by a request with a reason (the monitor found it hopeless: services/monitor.py) ends
    `early_stopped` with that reason as its error, not `interrupted`: it is finished and never resumed.
    The loop stopped it as any stop does (its last losses sent, a checkpoint written); only the status
    differs. Only a local worker's stop carries reasons (`_WorkerStop`)."""
    reason = stop.reason(run_id) if isinstance(stop, _WorkerStop) else None
    if reason is None or outcome.status is not RunStatus.INTERRUPTED:
        return outcome  # ended on its own first (done, diverged), or interrupted for another cause
    return replace(outcome, status=RunStatus.EARLY_STOPPED, error=reason)


def _failed(store: Any, runs: list[tuple[int, ReportingSink]], exc: Exception) -> list[RunOutcome]:
    """Mark each run failed with the exception (a StoreWriteFailed from the store propagates)."""
    error = f"{type(exc).__name__}: {exc}"
    log.debug("runs %s failed:\n%s", [run_id for run_id, _ in runs], traceback.format_exc())
    outcomes = []
    for run_id, sink in runs:
        store.mark_failed(run_id, error)
        outcomes.append(RunOutcome(RunStatus.FAILED, step=sink.reported_step, error=error))
    return outcomes


def _report_finished(conn: EventPipe, run_id: int, spec: RunSpec, outcome: RunOutcome) -> None:
    _send(conn, RunEvent(RunEventKind.FINISHED, run_id, spec.label, step=outcome.step, steps=spec.train.steps,
                         status=outcome.status, error=outcome.error, train_loss=outcome.final_train_loss))
