"""Run a sweep on worker processes: the one place that wires the engine to the store.

Shape of a sweep run:
- the runner (this process) validates nothing (config.py did), prepares the
  datasets, registers runs in the store, reaps rows left `running` by dead
  processes, then hands runs to an *executor*;
- the executor here is `LocalProcessExecutor`: N persistent spawn-started worker
  processes, each single-threaded by default (measured: two single-threaded
  workers beat one two-threaded process by 1.3-1.85x). A worker trains one run
  at a time and writes that run's records to SQLite itself through `StoreSink`;
- a later executor (Ray, a cluster queue) only has to honour `Executor.run`:
  the engine and the store do not change.

Robustness choices, each because of a way real sweeps die:
- every worker talks to the runner over its own pipe, never a shared queue, so
  a worker killed with SIGKILL cannot leave a shared lock held and hang the rest;
- the stop flag is a lock-free shared byte, read every step;
- workers ignore SIGINT (the terminal sends it to the whole process group) and
  stop through the flag, so Ctrl-C gives every run a flush and a checkpoint;
- a worker whose parent died stops its run and marks it `interrupted` itself;
- a worker that dies is replaced, and its run becomes `interrupted`.

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
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from scaletui.config import Sweep
from scaletui.records import LayerStats, MetricRecord, ModelInfo, RunOutcome, RunSpec, RunStatus

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # how often a worker reports a run's progress to the runner
STOP_GRACE_S = 60.0  # how long stopping workers get to flush and checkpoint before they are killed


@dataclass(frozen=True)
class Task:
    """One run handed to an executor."""

    run_id: int
    spec: RunSpec


@dataclass(frozen=True)
class RunEvent:
    """What the runner tells its front end: started, progress, finished, worker_died (and, from a worker
    whose database refuses writes, storage_failed: the sweep stops)."""

    kind: str
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
    need training (the rest finished earlier), before any starts: front ends count progress with it."""
    prepare_datasets(sweep)  # may raise DatasetUnavailable before the database is touched
    from scaletui.store.writer import Store

    with Store(sweep.db) as store:
        store.reap_orphans(socket.gethostname(), pid_alive)
        if fresh and store.running_runs(sweep.name):
            raise SweepBusy(
                f"{sweep.db}: runs of {sweep.name!r} are still running in another process; "
                "stop it before starting over with --fresh"
            )
        experiment_id = store.upsert_experiment(
            sweep.name, str(sweep.source), sweep.toml_text, sweep.loss_rule.value
        )
        todo = store.register_runs(experiment_id, sweep.runs, fresh)
        database_id = store.database_id()
    if fresh:
        for spec in sweep.runs:
            shutil.rmtree(checkpoint_dir_for(sweep.checkpoint_dir, database_id, spec), ignore_errors=True)
    result = SweepResult()

    storage_failures: list[str] = []  # a worker found the database unwritable: the sweep stops

    def record(event: RunEvent) -> None:
        if event.kind == "storage_failed":
            storage_failures.append(event.error or "")
        if event.kind == "finished" and event.status is not None:
            result.statuses[event.run_id] = event.status
        on_event(event)

    tasks = longest_first([Task(run_id, spec) for run_id, spec in todo])
    on_plan(len(tasks), len(sweep.runs))
    executor = executor or LocalProcessExecutor(sweep.workers, worker_config(sweep, database_id))
    from scaletui.monitor import SweepMonitor

    with SweepMonitor(sweep, experiment_id, [task.run_id for task in tasks]):  # live alerts; never fails the sweep
        executor.run(tasks, record, lambda: should_stop() or bool(storage_failures))
    if storage_failures:
        from scaletui.store.errors import StoreWriteFailed

        raise StoreWriteFailed(sweep.db, storage_failures[0])
    result.interrupted = should_stop() or len(result.statuses) < len(tasks)
    for task in tasks:
        result.statuses.setdefault(task.run_id, RunStatus.INTERRUPTED)
    return result


def estimated_cost(spec: RunSpec) -> float:
    """A relative training cost for ordering runs: examples seen x width^2 x depth (no torch needed).

    Dense layers cost ~width^2 per example and residual/conv stages scale the same way in width
    and depth, so this ranks runs of one sweep correctly enough for scheduling.
    """
    return float(spec.train.steps) * spec.train.batch_size * spec.model.width**2 * spec.model.depth


def longest_first(tasks: Sequence[Task]) -> list[Task]:
    """Largest runs first (LPT scheduling): the big ones no longer start last and leave a worker idle
    while one straggler finishes, which cost ~40% of a 2-worker sweep's throughput in
    benchmarks/throughput.py. Ties keep the sweep file's order."""
    return sorted(tasks, key=lambda task: -estimated_cost(task.spec))


def prepare_datasets(sweep: Sweep) -> None:
    """Generate or check every dataset once, in this process, before workers race for it."""
    from scaletui.engine.data import prepare_dataset

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
            target=worker_main, args=(self.config, child, self._stop_flag), daemon=True, name="scaletui-worker"
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    @staticmethod
    def _dispatch(workers: list[_Worker], pending: deque[Task]) -> None:
        for w in workers:
            if w.task is None and pending and w.process.is_alive():
                w.task = pending.popleft()
                w.conn.send(w.task)

    def _pump(self, workers: list[_Worker], on_event: Callable[[RunEvent], None]) -> None:
        """Wait up to 0.5 s for messages or deaths, and handle them."""
        ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers], timeout=0.5)
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
                if event.kind in ("finished", "storage_failed"):
                    w.task = None
                on_event(event)
        except (EOFError, OSError):
            pass  # the worker died mid-message; _bury handles its run

    def _bury(self, w: _Worker, workers: list[_Worker], on_event: Callable[[RunEvent], None]) -> None:
        workers.remove(w)
        w.process.join(timeout=1)
        if w.task is None:
            self._startup_deaths += w.process.exitcode not in (0, None)
            return
        reason = f"worker process {w.process.pid} died (exit code {w.process.exitcode})"
        from scaletui.store.errors import StoreError
        from scaletui.store.writer import Store

        try:
            with Store(self.config.db) as store:
                store.mark_interrupted(w.task.run_id, reason)
        except StoreError:  # the database refuses writes; the next sweep reaps the run (its pid is gone)
            log.debug("could not mark run %s interrupted", w.task.run_id, exc_info=True)
        on_event(
            RunEvent("finished", w.task.run_id, w.task.spec.label, status=RunStatus.INTERRUPTED, error=reason)
        )

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
    SIGUSR1 asked this worker to stop its current run (how the app stops one run)."""

    def __init__(self, flag: Any, parent_pid: int) -> None:
        self.flag = flag
        self.parent_pid = parent_pid
        self.run_stop = False
        self.terminated = False

    def is_set(self) -> bool:
        return self.run_stop or self.sweep_stopping()

    def sweep_stopping(self) -> bool:
        return self.terminated or bool(self.flag.value) or os.getppid() != self.parent_pid

    def stop_current_run(self, signum: int, frame: Any) -> None:
        self.run_stop = True

    def terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True  # the run checkpoints and becomes `interrupted`; then the worker exits


class ReportingSink:
    """Forwards every record to the store's sink and tells the runner how the run is going."""

    def __init__(self, inner: Any, conn: Connection, task: Task) -> None:
        self.inner = inner
        self.conn = conn
        self.task = task
        self._last_report = 0.0
        self._last_step = 0
        self._rate_clock = time.monotonic()
        self.resumed_from = 0

    def started(self, info: ModelInfo, resumed_from: int) -> None:
        self.resumed_from = resumed_from
        self._last_step = resumed_from
        self.inner.started(info, resumed_from)
        _send(self.conn, self._event("started", step=resumed_from, resumed_from=resumed_from))

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self.inner.metrics(rows)
        losses = [r for r in rows if r.key == "train_loss"]
        now = time.monotonic()
        if losses and now - self._last_report >= PROGRESS_INTERVAL_S:
            step = losses[-1].step
            rate = (step - self._last_step) / max(now - self._rate_clock, 1e-9)
            self._last_report, self._last_step, self._rate_clock = now, step, now
            _send(self.conn, self._event("progress", step=step, train_loss=losses[-1].value, steps_per_s=rate))

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self.inner.layer_stats(rows)

    def event(self, kind: str, message: str) -> None:
        self.inner.event(kind, message)

    def flush(self) -> None:
        self.inner.flush()

    def _event(self, kind: str, **kw: Any) -> RunEvent:
        return RunEvent(kind, self.task.run_id, self.task.spec.label, steps=self.task.spec.train.steps, **kw)


def _send(conn: Connection, event: RunEvent) -> None:
    try:
        conn.send(event)
    except (BrokenPipeError, OSError):
        pass  # the runner is gone; the stop check ends the run


def worker_main(config: WorkerConfig, conn: Connection, stop_flag: Any) -> None:
    """Entry point of a worker process: take runs from the pipe until told to exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runner, which raises the flag
    import torch

    from scaletui.store.errors import StoreWriteFailed

    torch.set_num_threads(config.threads)
    stop = _WorkerStop(stop_flag, config.parent_pid)
    signal.signal(signal.SIGUSR1, stop.stop_current_run)
    signal.signal(signal.SIGTERM, stop.terminate)  # not the default death: flush and checkpoint first
    while not stop.sweep_stopping():
        if not conn.poll(0.5):
            continue
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        stop.run_stop = False
        try:
            outcome = run_task(task, config, conn, stop)
        except StoreWriteFailed as exc:  # nothing can be recorded; the runner stops the sweep and says why
            _send(conn, RunEvent("storage_failed", task.run_id, task.spec.label, error=exc.reason))
            continue
        _send(conn, RunEvent("finished", task.run_id, task.spec.label, step=outcome.step,
                             steps=task.spec.train.steps, status=outcome.status, error=outcome.error,
                             train_loss=outcome.final_train_loss))


def run_task(task: Task, config: WorkerConfig, conn: Connection, stop: _WorkerStop) -> RunOutcome:
    """Train one run and record how it ended; an exception fails this run only."""
    from scaletui.engine.loop import train_run
    from scaletui.store.writer import Store, StoreSink

    store = Store(config.db)
    store.mark_running(task.run_id, os.getpid(), socket.gethostname())
    recorded = store.recorded_step(task.run_id)  # resume no further than the records this database holds
    sink = ReportingSink(StoreSink(config.db, task.run_id), conn, task)
    try:
        outcome = train_run(
            task.spec,
            sink,
            stop,
            data_dir=config.data_dir,
            checkpoint_dir=checkpoint_dir_for(config.checkpoint_dir, config.database_id, task.spec),
            memory_limit_mb=config.memory_limit_mb,
            resume_at_most=recorded,
        )
    except Exception as exc:  # noqa: BLE001 - one run's failure must not end the sweep
        error = f"{type(exc).__name__}: {exc}"
        log.debug("run %s failed:\n%s", task.run_id, traceback.format_exc())
        store.mark_failed(task.run_id, error)
        return RunOutcome(RunStatus.FAILED, step=sink._last_step, error=error)
    store.finish_run(task.run_id, outcome)
    return outcome
