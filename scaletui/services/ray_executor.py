"""Run a sweep's tasks on a Ray cluster (`experiment.executor = "ray"`): the second `Executor`.

Imported only when a sweep asks for Ray: `import scaletui` and the local executor never import ray.

Shape, and why:
- **One database, one writer.** Workers on other nodes cannot open the driver's SQLite file, so none
  does: a `RecordWriter` actor, pinned to the driver's node (where the file is), owns it. A worker's
  run states (`mark_running`, `finish_run`, ...) and records reach it through `WriterClient`, whose
  sinks buffer rows and ship them in batches (`SHIP_ROWS` rows or `SHIP_SECONDS`, and at every
  `flush`, the loop's durability point before a checkpoint). Each shipment waits for the writer's
  commit: that is the back-pressure (a slow disk slows the workers, never fills a queue), and it keeps
  the loop's promise that a checkpoint never refers to records that could still be lost. The writer
  writes with the store's own `StoreSink` and `Store`, so a cluster sweep's rows are a local sweep's.
- **Each task is a Ray task** with the CPUs of a worker (`threads_per_worker`) and one GPU when its
  device asks for cuda; `runner.run_task` trains it as a local worker would. Ray's own retries are off:
  a task lost with its worker or node is the executor's to retry (`experiment.max_retries`), as an
  `interrupted` run that resumes from its last checkpoint.
- **Fencing.** Every start of a task is an *attempt*; the writer refuses (and tells to stop) a worker
  whose attempt is no longer its run's current one, so a worker the driver gave up for lost (a network
  partition, not a death) can never write beside its replacement.
- **Checkpoints** stay where the loop writes them, `experiment.checkpoint_dir`: the default, and the
  one that resumes a lost run on another node, is a folder every node mounts (a shared filesystem).
  Without one a retried run still finishes correctly, from its node's newest checkpoint at or before
  the records the database holds, or from step 0 (`resume_at_most`: records past it are redone, never
  doubled, since a resumed run's sink deletes them first).
- **Stop.** The driver's stop (Ctrl-C) is a flag in the writer, answered with every shipment: runs
  flush, checkpoint and become `interrupted`, as with local workers. A killed driver takes its Ray job
  with it; the next sweep reaps its runs as today (dead pids on this host, no heartbeat elsewhere).
  The app's stop of one run (`k`) reaches a worker on the app's machine as a local worker's does (a
  request file, then SIGUSR1, which the worker handles); one on another machine, through the
  database: the app leaves a request in `stop_requests`, the writer reads it (at most every
  STOP_POLL_S) and names the run in its next answer to that run's worker, which stops exactly it.
- **Entrypoint runs** (`train.entrypoint`) run the user's function on the node with the same run
  handle as on a local worker, whose records, sizes, alerts and end go to the writer instead of the
  file (`ShippedLedger`), written there with the store's code (`OwnRunSink`, `record_end`).
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import scaletui
from scaletui.core.config import Sweep
from scaletui.core.records import Alert, LayerStats, MetricRecord, ModelInfo, RunOutcome, StopSignal
from scaletui.core.rows import ExperimentLoss
from scaletui.core.specs import RunSpec
from scaletui.core.thresholds import Thresholds
from scaletui.core.vocabulary import RAY_ADDRESS_AUTO, Device, RunEventKind, RunStatus
from scaletui.services.runner import STOP_GRACE_S, ClusterUnusable, RunEvent, Task, WorkerConfig, run_task
from scaletui.store.stop_requests import StopRequests

log = logging.getLogger(__name__)

SHIP_ROWS = 5000  # a worker's sink ships its buffer once this many rows wait (as StoreSink flushes)
SHIP_SECONDS = 1.0  # ... or once this long passed since its last shipment
POLL_S = 0.25  # how often the driver collects finished tasks and the writer's events
STOP_POLL_S = 0.1  # how often a worker asks the writer, without waiting, whether the sweep stops
ABANDON_WAIT_S = 5.0  # how long tasks get to end by themselves before the driver cancels them (_abandon)
CONNECT_TIMEOUT_S = 5.0  # to reach the head's address before asking Ray to join it
PROBE_TIMEOUT_S = 120.0  # for every node to answer which versions it runs
FENCED = -1  # a run's attempt once the driver gave its worker up: every write of it is refused
_RAY: Any = ray  # the few calls ray leaves untyped (nodes, cluster_resources)


# ---------------------------------------------------------------------------
# Joining and checking the cluster (driver)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeFacts:
    """What a node runs, as a probe task there reports it."""

    node_id: str
    address: str
    host: str
    scaletui: str
    ray: str
    python: str  # major.minor


def node_facts(node_id: str = "", address: str = "") -> NodeFacts:
    """This process's versions (on the driver, or in a probe task on a node)."""
    python = ".".join(platform.python_version_tuple()[:2])
    return NodeFacts(node_id, address, socket.gethostname(), scaletui.__version__, ray.__version__, python)


def version_problem(driver: NodeFacts, nodes: Sequence[NodeFacts]) -> str | None:
    """The first node whose scaletui, Ray or Python differs from the driver's, said in one line."""
    for node in nodes:
        for what in ("scaletui", "ray", "python"):
            theirs, ours = getattr(node, what), getattr(driver, what)
            if theirs != ours:
                return (f"version mismatch: node {node.address} ({node.host}) runs {what} {theirs}, "
                        f"this driver {what} {ours}; install the same versions on every node")
    return None


def task_resources(threads: int, device: str) -> dict[str, float]:
    """What one task asks Ray for: a worker's threads as CPUs, and a GPU when its device is cuda."""
    gpus = 1.0 if device.startswith(Device.CUDA.value) else 0.0
    return {"CPU": float(threads), "GPU": gpus}


def resource_problem(sweep: Sweep, nodes: Sequence[dict[str, Any]]) -> str | None:
    """Why no node of the cluster could ever run one of the sweep's tasks, or None."""
    where = sweep.source.name
    for device in sorted({spec.train.device for spec in sweep.runs}):
        need = task_resources(sweep.threads_per_worker, device)
        if not any(all(node["Resources"].get(k, 0.0) >= v for k, v in need.items() if v) for node in nodes):
            most_cpus = max((node["Resources"].get("CPU", 0.0) for node in nodes), default=0.0)
            if need["GPU"] and not any(node["Resources"].get("GPU", 0.0) for node in nodes):
                return f'{where}: train.device: "{device}" asks for a GPU, but no node of the Ray cluster has one'
            return (f"{where}: experiment.threads_per_worker: a run needs {need['CPU']:g} CPUs on one node "
                    f"(with {need['GPU']:g} GPU), but the Ray cluster's largest node has {most_cpus:g}")
    return None


class RayCluster:
    """The Ray cluster one sweep runs on, joined and checked; `executor` makes the sweep's executor."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.driver_node = ray.get_runtime_context().get_node_id()

    @classmethod
    @contextmanager
    def join(cls, sweep: Sweep) -> Iterator[RayCluster]:
        """Join (or start) the sweep's cluster and check it can run the sweep, before anything is
        written; leave it (never stop it) at the end. Problems raise ClusterUnusable."""
        _init(sweep)
        try:
            cluster = cls(sweep)
            cluster.check()
            yield cluster
        finally:
            ray.shutdown()

    def check(self) -> None:
        """Every live node runs our versions, and one of them at least can hold each task."""
        nodes = [node for node in _RAY.nodes() if node.get("Alive")]
        problem = resource_problem(self.sweep, nodes) or version_problem(node_facts(), self._probe(nodes))
        if problem:
            raise ClusterUnusable(problem)

    def _probe(self, nodes: Sequence[dict[str, Any]]) -> list[NodeFacts]:
        probe: Any = ray.remote(num_cpus=0, max_retries=0)(node_facts)
        refs = {node["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(node["NodeID"], node["NodeManagerAddress"]) for node in nodes}  # fmt: skip
        facts = []
        for address, ref in refs.items():
            try:
                facts.append(ray.get(ref, timeout=PROBE_TIMEOUT_S))
            except ray.exceptions.GetTimeoutError:
                raise ClusterUnusable(f"Ray node {address} did not answer within {PROBE_TIMEOUT_S:g} s") from None
            except ray.exceptions.RayError as e:  # e.g. scaletui is not installed there
                raise ClusterUnusable(f"Ray node {address} cannot run scaletui: {_last_line(e)}") from None
        return facts

    def executor(self, config: WorkerConfig) -> RayExecutor:
        """The sweep's executor; its writer starts now, on this (the database's) node."""
        writer = ray.remote(RecordWriter).options(
            num_cpus=0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.driver_node, soft=False),
        ).remote(str(config.db))  # fmt: skip
        return RayExecutor(config, writer, self.sweep.max_retries)


def _init(sweep: Sweep) -> None:
    """ray.init for the sweep: join `ray_address`, or start a Ray of this machine alone (the sweep's
    workers x threads CPUs). Unreachable, refused or mismatched: ClusterUnusable, one line."""
    address = sweep.ray_address
    if address not in (None, RAY_ADDRESS_AUTO):
        _reachable(address)
    options: dict[str, Any] = {"address": address} if address else {
        "num_cpus": sweep.workers * sweep.threads_per_worker, "include_dashboard": False}
    try:
        ray.init(**options, namespace="scaletui", logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # ConnectionError, RuntimeError("Version mismatch ..."), ValueError, ...
        ray.shutdown()
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterUnusable(f"cannot use {where} (experiment.ray_address): {_last_line(e)}") from None


def _reachable(address: str) -> None:
    """Fail in seconds, not after Ray's long connection retries, when nothing listens at the address."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ClusterUnusable(f"no Ray cluster answers at {address} (experiment.ray_address): {reason}") from None


def _last_line(e: BaseException) -> str:
    """The line of an exception's message that says what went wrong (Ray's span several)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
    return lines[0] if lines else type(e).__name__


# ---------------------------------------------------------------------------
# The writer: one actor on the driver's node owns the database file
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Shipment:
    """A batch of one run's records, from a worker's sink to the writer."""

    metrics: tuple[MetricRecord, ...] = ()
    layers: tuple[LayerStats, ...] = ()
    events: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OwnShipment:
    """A batch of one entrypoint run's records (what its handle's writer thread flushes at once), to be
    written in one transaction by the writer's `OwnRunSink`, as a local run's `LocalRunSink` would."""

    metrics: tuple[MetricRecord, ...] = ()
    layers: tuple[LayerStats, ...] = ()
    events: tuple[tuple[str, str], ...] = ()
    replace_from: int | None = None  # a resumed loop restarted here: the run's records from it on go first


@dataclass(frozen=True)
class StopNews:
    """The writer's answer to a worker's shipment or stop question: stop everything (the sweep stops,
    or the attempt is no longer current), and which of the attempt's runs the app asked to stop."""

    everything: bool = False
    runs: frozenset[int] = frozenset()


class Superseded(RuntimeError):
    """The writer refused a worker: the driver gave its attempt up (and may have started another)."""


class RecordWriter:
    """The Ray actor that writes a cluster sweep's run states and records, with the store's code.

    Its methods run one at a time, each worker's in the order it called them (a Ray actor's rule),
    so a run's records, its finish and the events about it reach the file in the order they happened.
    """

    def __init__(self, db: str) -> None:
        from scaletui.store.writer import Store

        self.db = Path(db)
        self.store = Store(self.db)
        self.sinks: dict[int, Any] = {}  # run id -> its StoreSink, while its current attempt runs
        self.attempts: dict[int, int] = {}  # run id -> the attempt allowed to write it
        self.events: list[RunEvent] = []
        self.stopping = False
        self.requests = StopRequests(self.db)  # the app's `k` on runs it cannot signal
        self.requested: set[int] = set()  # runs with a stop request, as last read
        self._requests_read_at = -float("inf")
        self.expected: set[int] = set()  # runs this writer has seen started

    # --- the driver's side
    def expect(self, run_ids: Sequence[int], attempt: int) -> None:
        """`attempt` is about to start these runs: from now on only it may write them. A stop request
        left before this sweep first started a run is moot (the run was not running then); one made
        since stays, so a retried run is stopped too."""
        first = [run_id for run_id in run_ids if run_id not in self.expected]
        self.expected.update(first)
        self._answered(first)
        for run_id in run_ids:
            self._close(run_id)
            self.attempts[run_id] = attempt

    def settle(self, run_ids: Sequence[int], status: RunStatus, reason: str) -> None:
        """The driver gave these runs' worker up: fence it, and mark them `interrupted` (or `failed`)."""
        for run_id in run_ids:
            self._close(run_id)
            self.attempts[run_id] = FENCED
            if status is RunStatus.FAILED:
                self.store.mark_failed(run_id, reason)
            else:
                self.store.mark_interrupted(run_id, reason)

    def stop_all(self) -> None:
        self.stopping = True

    def take_events(self) -> list[RunEvent]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        for run_id in list(self.sinks):
            self._close(run_id)
        self.store.close()
        self.requests.close()

    # --- the workers' side
    def mark_running(self, run_id: int, attempt: int, pid: int, host: str) -> None:
        self._allowed(run_id, attempt)
        self.store.mark_running(run_id, pid, host)

    def recorded_step(self, run_id: int, attempt: int) -> int:
        self._allowed(run_id, attempt)
        return self.store.recorded_step(run_id)

    def started(self, run_id: int, attempt: int, info: ModelInfo, resumed_from: int) -> StopNews:
        self._sink(run_id, attempt).started(info, resumed_from)
        return self.stop_news(attempt)

    def stop_news(self, attempt: int) -> StopNews:
        """What the worker of `attempt` must stop: everything when the sweep stops, and its runs the
        app asked to stop (the requests table is read at most every STOP_POLL_S)."""
        if time.monotonic() - self._requests_read_at >= STOP_POLL_S:
            self._requests_read_at = time.monotonic()
            self.requested = self.requests.pending()
        runs = frozenset(run_id for run_id in self.requested if self.attempts.get(run_id) == attempt)
        return StopNews(self.stopping, runs)

    def write(self, run_id: int, attempt: int, shipment: Shipment) -> StopNews:
        """Write a batch in one transaction; the answer says what to stop (everything when its attempt
        is no longer current: then nothing is written)."""
        if self.attempts.get(run_id) != attempt:
            return StopNews(everything=True)
        sink = self._sink(run_id, attempt)
        sink.metrics(shipment.metrics)  # buffered: this sink flushes only when told
        sink.layer_stats(shipment.layers)
        for kind, message in shipment.events:
            sink.event(kind, message)  # flushes the rows with it
        if not shipment.events:
            sink.flush()
        return self.stop_news(attempt)

    def finish_run(self, run_id: int, attempt: int, outcome: RunOutcome) -> None:
        self._allowed(run_id, attempt)
        self._close(run_id)
        self.store.finish_run(run_id, outcome)
        self._answered([run_id])

    def mark_failed(self, run_id: int, attempt: int, error: str) -> None:
        self._allowed(run_id, attempt)
        self._close(run_id)
        self.store.mark_failed(run_id, error)
        self._answered([run_id])

    # --- the workers' side, for an entrypoint run (its handle's store, sink and end)
    def own_run(self, run_id: int, attempt: int) -> Any:
        """What the run's handle starts from (`own_run.AttachedRun`), as a local worker reads it."""
        from scaletui.services.own_run import attached_run

        self._allowed(run_id, attempt)
        return attached_run(self.db, run_id)

    def set_sizes(self, run_id: int, attempt: int, sizes: dict[str, int]) -> None:
        self._allowed(run_id, attempt)
        self.store.set_sizes(run_id, sizes)

    def sync_alerts(self, run_id: int, attempt: int, experiment_id: int, alerts: Sequence[Alert],
                    subjects: Sequence[str]) -> int:
        self._allowed(run_id, attempt)
        return self.store.sync_alerts(experiment_id, alerts, subjects)

    def write_own(self, run_id: int, attempt: int, shipment: OwnShipment) -> StopNews:
        """`write` for an entrypoint run: one transaction of its `OwnRunSink` (which replaces the
        records of a resumed run from where it restarted, in that same transaction)."""
        if self.attempts.get(run_id) != attempt:
            return StopNews(everything=True)
        sink = self._sink(run_id, attempt, own=True)
        if shipment.replace_from is not None:
            sink.replace_from(shipment.replace_from)
        sink.metrics(shipment.metrics)
        sink.layer_stats(shipment.layers)
        for kind, message in shipment.events:
            sink.queue_event(kind, message)
        sink.flush()
        return self.stop_news(attempt)

    def end_own_run(self, run_id: int, attempt: int, loss: ExperimentLoss, status: RunStatus, error: str | None
                    ) -> RunOutcome:
        """Record how an entrypoint run ended, as `entrypoint.LocalLedger.end` does on a local worker."""
        from scaletui.services.entrypoint import record_end

        self._allowed(run_id, attempt)
        self._close(run_id)
        outcome = record_end(self.store, run_id, loss, status, error)
        self._answered([run_id])
        return outcome

    def post(self, attempt: int, event: RunEvent) -> None:
        """An event for the driver's front end (started, progress, finished), unless its attempt is over."""
        if self.attempts.get(event.run_id) == attempt:
            self.events.append(event)

    def ping(self) -> None:
        """Returns once everything a caller sent before it has been handled."""

    # --- internals
    def _allowed(self, run_id: int, attempt: int) -> None:
        if self.attempts.get(run_id) != attempt:
            raise Superseded(f"run {run_id}: attempt {attempt} is no longer current")

    def _sink(self, run_id: int, attempt: int, own: bool = False) -> Any:
        from scaletui.store.writer import OwnRunSink, StoreSink

        self._allowed(run_id, attempt)
        if run_id not in self.sinks:  # it flushes only when told: one transaction per shipment
            self.sinks[run_id] = (OwnRunSink(self.db, run_id) if own
                                  else StoreSink(self.db, run_id, flush_rows=2**62, flush_seconds=float("inf")))
        return self.sinks[run_id]

    def _close(self, run_id: int) -> None:
        sink = self.sinks.pop(run_id, None)
        if sink is not None:
            sink.close()

    def _answered(self, run_ids: Sequence[int]) -> None:
        """These runs ended (or start afresh): their stop requests, if any, are answered or moot."""
        asked = self.requests.pending() & set(run_ids)  # a small table, read only when runs end
        if asked:
            self.requests.drop(asked)
            self.requested -= asked


# ---------------------------------------------------------------------------
# Inside a Ray worker
# ---------------------------------------------------------------------------
class WriterClient:
    """A Ray worker's line to the writer, for one attempt of one task: the `store` and the sinks
    `runner.run_task` records through, the pipe its events go through, and the stop its runs watch.

    A run stops when the sweep stops (Ctrl-C on the driver) or its attempt is fenced, both said by the
    writer's answers; or when the app asked to stop it: through the writer (a request in the
    database, for a run on another machine) or, on the app's own machine, with a request file and
    SIGUSR1 to this process, taken as a local worker takes them (services/stop_requests.py)."""

    def __init__(self, writer: Any, attempt: int, run_ids: Iterable[int] = ()) -> None:
        self.writer = writer
        self.attempt = attempt
        self.current = frozenset(run_ids)  # the task's runs
        self.stopping = False  # stop everything: set by the writer's answers
        self.requested: set[int] = set()  # runs of the task the app asked to stop
        self.signalled = False  # SIGUSR1 arrived; its request files are not read yet
        self._stop_question: Any = None  # a `stop_news` call not yet answered
        self._next_question = 0.0

    def listen_for_signals(self) -> None:
        """Take the app's SIGUSR1 as a local worker does (never Python's default for it: death). Ray
        runs a task on its worker's main thread, where a handler can be installed."""
        import signal
        import threading

        from scaletui.services.stop_requests import take_stop_requests

        take_stop_requests(os.getpid())  # left for an earlier task of this process: moot
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True  # a signal handler does as little as possible: the files are read later

    # the store's part
    def mark_running(self, run_id: int, pid: int, host: str) -> None:
        self.call("mark_running", run_id, self.attempt, pid, host)

    def recorded_step(self, run_id: int) -> int:
        return int(self.call("recorded_step", run_id, self.attempt))

    def finish_run(self, run_id: int, outcome: RunOutcome) -> None:
        self.call("finish_run", run_id, self.attempt, outcome)

    def mark_failed(self, run_id: int, error: str) -> None:
        self.call("mark_failed", run_id, self.attempt, error)

    def open_sink(self, run_id: int) -> ShippingSink:
        return ShippingSink(self, run_id)

    # the pipe's part: events need no answer, and reach the writer in order with the rest
    def send(self, obj: Any) -> None:
        self.writer.post.remote(self.attempt, obj)

    # the stop's part: checked every step, so it never waits for the writer
    def is_set(self) -> bool:
        """Stop the task's run (a task of one run: the loop's StopSignal)."""
        self._poll()
        return self.stopping or bool(self.requested)

    def run_stopping(self, run_id: int) -> bool:
        self._poll()
        return self.stopping or run_id in self.requested

    def member(self, run_id: int) -> StopSignal:
        """The StopSignal of one run of a bundle: its own request, or everything's stop."""
        return _MemberStop(self, run_id)

    def hear(self, news: StopNews) -> None:
        self.stopping |= news.everything
        self.requested |= news.runs & self.current

    def _poll(self) -> None:
        if self.signalled:
            self._read_signal_requests()
        if not self.stopping and time.monotonic() >= self._next_question:
            self._ask_stop()

    def _read_signal_requests(self) -> None:
        from scaletui.services.stop_requests import take_stop_requests

        self.signalled = False
        named = take_stop_requests(os.getpid())
        self.requested |= (named & self.current) if named else self.current  # a bare SIGUSR1 stops the task

    def _ask_stop(self) -> None:
        """Read the answer to the last question if it came, and ask again: a stop reaches a run within
        ~STOP_POLL_S, not only at its next shipment."""
        self._next_question = time.monotonic() + STOP_POLL_S
        if self._stop_question is not None:
            ready, _ = ray.wait([self._stop_question], timeout=0)
            if not ready:
                return
            self.hear(ray.get(self._stop_question))
        self._stop_question = self.writer.stop_news.remote(self.attempt)

    def call(self, method: str, *args: Any) -> Any:
        """A writer method, waited for; an exception there is raised here as itself (StoreWriteFailed)."""
        try:
            return ray.get(getattr(self.writer, method).remote(*args))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, Exception) else e
            raise cause from None


@dataclass(frozen=True)
class _MemberStop:
    """One bundle member's stop signal on a Ray worker."""

    client: WriterClient
    run_id: int

    def is_set(self) -> bool:
        return self.client.run_stopping(self.run_id)


class ShippingSink:
    """A `records.Sink` for a worker with no database: buffers a run's records and ships them to the
    writer in batches, each waited for (back-pressure; `flush` returns once they are stored)."""

    def __init__(self, client: WriterClient, run_id: int) -> None:
        self.client = client
        self.run_id = run_id
        self._metrics: list[MetricRecord] = []
        self._layers: list[LayerStats] = []
        self._events: list[tuple[str, str]] = []
        self._shipped_at = time.monotonic()

    def started(self, info: ModelInfo, resumed_from: int) -> None:
        self.flush()
        self.client.hear(self.client.call("started", self.run_id, self.client.attempt, info, resumed_from))

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self._metrics.extend(rows)
        self._maybe_ship()

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self._layers.extend(rows)
        self._maybe_ship()

    def event(self, kind: str, message: str) -> None:
        self._events.append((kind, message))
        self.flush()

    def flush(self) -> None:
        shipment = Shipment(tuple(self._metrics), tuple(self._layers), tuple(self._events))
        self._metrics, self._layers, self._events = [], [], []
        self._shipped_at = time.monotonic()
        self.client.hear(self.client.call("write", self.run_id, self.client.attempt, shipment))

    def _maybe_ship(self) -> None:
        if len(self._metrics) + len(self._layers) >= SHIP_ROWS or time.monotonic() - self._shipped_at >= SHIP_SECONDS:
            self.flush()


class ShippedRunStore:
    """An entrypoint run's `own_records.RunStore` on a Ray node: its sizes and alerts go to the writer,
    which takes them while this attempt is the run's current one."""

    def __init__(self, client: WriterClient, db: Path, run_id: int) -> None:
        self.client = client
        self.path = db  # the driver's database: named in messages, never opened here
        self.run_id = run_id

    def set_sizes(self, run_id: int, sizes: Mapping[str, int]) -> None:
        self.client.call("set_sizes", run_id, self.client.attempt, dict(sizes))

    def sync_alerts(self, experiment_id: int, alerts: Sequence[Alert], subjects: Iterable[str] = ()) -> int:
        return int(self.client.call("sync_alerts", self.run_id, self.client.attempt, experiment_id, list(alerts),
                                    list(subjects)))


class ShippedRunSink:
    """An entrypoint run's `own_records.RunSink` on a Ray node: what its handle's writer thread flushes
    at once travels to the writer as one `OwnShipment`, waited for (back-pressure: the handle's bounded
    queue then holds the training thread), and is written there in one transaction."""

    def __init__(self, client: WriterClient, run_id: int) -> None:
        self.client = client
        self.run_id = run_id
        self._metrics: list[MetricRecord] = []
        self._layers: list[LayerStats] = []
        self._events: list[tuple[str, str]] = []
        self._replace_from: int | None = None

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self._metrics.extend(rows)

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self._layers.extend(rows)

    def queue_event(self, kind: str, message: str) -> None:
        self._events.append((kind, message))

    def replace_from(self, step: int) -> None:
        self._replace_from = step

    def flush(self) -> None:
        shipment = OwnShipment(tuple(self._metrics), tuple(self._layers), tuple(self._events), self._replace_from)
        self._metrics, self._layers, self._events, self._replace_from = [], [], [], None
        self.client.hear(self.client.call("write_own", self.run_id, self.client.attempt, shipment))

    def release(self) -> None:
        """Nothing to let go of: the writer closes the run's sink when the run ends."""


class ShippedLedger:
    """An entrypoint run's `entrypoint.RunLedger` on a Ray node: its state, records and end go to the
    writer, which writes them with the same store code as a local worker's `LocalLedger`."""

    def __init__(self, client: WriterClient, db: Path) -> None:
        self.client = client
        self.db = db

    def mark_running(self, run_id: int, pid: int, host: str) -> None:
        self.client.mark_running(run_id, pid, host)

    def attach(self, run_id: int, stop: StopSignal, folder: Path, thresholds: Thresholds | None) -> Any:
        from scaletui.services.entrypoint import ReportingHandle

        run = self.client.call("own_run", run_id, self.client.attempt)
        return ReportingHandle.on(ShippedRunStore(self.client, self.db, run_id), run, stop=stop, checkpoint_dir=folder,
                                  thresholds=thresholds, sink=ShippedRunSink(self.client, run_id))

    def end(self, handle: Any, status: RunStatus, error: str | None) -> RunOutcome:
        outcome: RunOutcome = self.client.call("end_own_run", handle.id, self.client.attempt, handle.loss, status,
                                               error)
        return outcome


def train_task(task: Task, config: WorkerConfig, writer: Any, attempt: int) -> str | None:
    """A Ray task: train one task (a run or a bundle) as a local worker would, recording through the
    writer. Returns why the database refused a write (the sweep stops), or None."""
    import torch

    from scaletui.engine.dataset_files import prepare_dataset
    from scaletui.store.errors import StoreWriteFailed

    torch.set_num_threads(config.threads)
    if task.entry is None:  # the user's function brings its own data
        for data in dict.fromkeys(replace(spec.data, label_noise=0.0) for _, spec in task.members):
            prepare_dataset(data, config.data_dir)  # generated here when the data folder is not shared
    client = WriterClient(writer, attempt, [run_id for run_id, _ in task.members])
    client.listen_for_signals()
    try:
        run_task(_on_assigned_gpu(task), config, client, client, store=client, open_sink=client.open_sink,
                 ledger=ShippedLedger(client, config.db))
    except StoreWriteFailed as e:
        return e.reason
    finally:
        client.call("ping")  # every event this task posted is with the writer before the driver hears it ended
    return None


def _on_assigned_gpu(task: Task) -> Task:
    """Ray shows a task only the GPU it was given, as cuda:0: "cuda:N" means that one here."""

    def local(spec: RunSpec) -> RunSpec:
        if not spec.train.device.startswith(f"{Device.CUDA.value}:"):
            return spec
        return replace(spec, train=replace(spec.train, device=Device.CUDA.value))

    return replace(task, spec=local(task.spec), others=tuple((run_id, local(spec)) for run_id, spec in task.others))


# ---------------------------------------------------------------------------
# The executor (driver)
# ---------------------------------------------------------------------------
@dataclass
class _Flight:
    """One attempt of a task on the cluster, and which of its runs have not finished yet."""

    task: Task
    attempt: int
    tries: int  # starts of these runs so far, this one included
    open_runs: dict[int, str] = field(init=False)  # run id -> label

    def __post_init__(self) -> None:
        self.open_runs = {run_id: spec.label for run_id, spec in self.task.members}

    def unfinished(self) -> Task:
        """The task again, with only its runs still open (a bundle that lost some members keeps the rest)."""
        members = [(run_id, spec) for run_id, spec in self.task.members if run_id in self.open_runs]
        return replace(self.task, run_id=members[0][0], spec=members[0][1], others=tuple(members[1:]))


class RayExecutor:
    """Tasks as Ray tasks (as many at once as the cluster's CPUs hold), records through the writer;
    a task lost with its worker or node is retried up to `max_retries` times, resuming its runs."""

    def __init__(self, config: WorkerConfig, writer: Any, max_retries: int) -> None:
        self.config = config
        self.writer = writer
        self.max_retries = max_retries
        self._remote = ray.remote(train_task)
        self._attempts = 0

    def run(self, tasks: Sequence[Task], on_event: Callable[[RunEvent], None], should_stop: Callable[[], bool]) -> None:
        pending: deque[tuple[Task, int]] = deque((task, 0) for task in tasks)  # (task, starts so far)
        flights: dict[Any, _Flight] = {}
        stopping_since: float | None = None
        try:
            while pending or flights:
                if stopping_since is None and should_stop():
                    stopping_since = self._begin_stop(pending)
                if stopping_since is None:
                    self._submit(pending, flights)
                elif time.monotonic() - stopping_since > STOP_GRACE_S:
                    break
                self._pump(flights, pending, on_event, stopping=stopping_since is not None)
        except ray.exceptions.RayActorError as e:  # the writer is the only actor: nothing can be recorded now
            from scaletui.store.errors import StoreWriteFailed

            raise StoreWriteFailed(self.config.db, f"its writer, a Ray actor on this node, died: {_last_line(e)}"
                                   ) from None
        finally:
            self._abandon(flights, on_event)

    # --- submitting
    def _submit(self, pending: deque[tuple[Task, int]], flights: dict[Any, _Flight]) -> None:
        while pending and len(flights) < self._capacity(pending[0][0]):
            task, tries = pending.popleft()
            self._attempts += 1
            flight = _Flight(task, self._attempts, tries + 1)
            ray.get(self.writer.expect.remote(list(flight.open_runs), flight.attempt))
            resources = task_resources(self.config.threads, task.spec.train.device)
            ref = self._remote.options(num_cpus=resources["CPU"], num_gpus=resources["GPU"], max_retries=0,
                                       retry_exceptions=False).remote(task, self.config, self.writer, flight.attempt)
            flights[ref] = flight

    def _capacity(self, task: Task) -> int:
        """How many tasks like `task` the cluster's live nodes hold at once (at least 1: Ray queues the rest)."""
        total = _RAY.cluster_resources()
        need = task_resources(self.config.threads, task.spec.train.device)
        fits = [int(total.get(k, 0.0) // v) for k, v in need.items() if v]
        return max(1, min(fits))

    def _begin_stop(self, pending: deque[tuple[Task, int]]) -> float:
        ray.get(self.writer.stop_all.remote())
        pending.clear()  # runs not started stay `queued` in the store
        return time.monotonic()

    # --- hearing back
    def _pump(self, flights: dict[Any, _Flight], pending: deque[tuple[Task, int]],
              on_event: Callable[[RunEvent], None], stopping: bool) -> None:
        if flights:
            ready, _ = ray.wait(list(flights), num_returns=len(flights), timeout=POLL_S)
        else:
            ready = []
            time.sleep(POLL_S)
        by_run = {run_id: flight for flight in flights.values() for run_id in flight.open_runs}
        for event in ray.get(self.writer.take_events.remote()):
            if event.kind is RunEventKind.FINISHED and event.run_id in by_run:
                by_run[event.run_id].open_runs.pop(event.run_id, None)
            on_event(event)
        for ref in ready:
            self._landed(ref, flights.pop(ref), pending, on_event, stopping)

    def _landed(self, ref: Any, flight: _Flight, pending: deque[tuple[Task, int]],
                on_event: Callable[[RunEvent], None], stopping: bool) -> None:
        """A task ended: done, refused by the database, failed in our code, or lost (then retried)."""
        try:
            storage_failure = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # an exception our code raised: retrying would repeat it
            self._settle(flight, RunStatus.FAILED, f"worker failed: {_last_line(e)}", on_event)
            return
        except ray.exceptions.RayError as e:  # the worker process or its node is gone
            reason = f"lost its Ray worker ({type(e).__name__}): {_last_line(e)}"
            if flight.open_runs and flight.tries <= self.max_retries and not stopping:
                log.warning("runs %s %s; retrying (try %d of %d)", sorted(flight.open_runs), reason,
                            flight.tries + 1, self.max_retries + 1)
                retry = flight.unfinished()
                self._settle(flight, RunStatus.INTERRUPTED, reason, None)
                pending.appendleft((retry, flight.tries))
                return
            self._settle(flight, RunStatus.INTERRUPTED, reason, on_event)
            return
        if storage_failure is not None:
            on_event(RunEvent(RunEventKind.STORAGE_FAILED, flight.task.run_id, flight.task.spec.label,
                              error=storage_failure))
        self._settle(flight, RunStatus.INTERRUPTED, "its Ray task ended before the run did", on_event)

    def _settle(self, flight: _Flight, status: RunStatus, reason: str,
                on_event: Callable[[RunEvent], None] | None) -> None:
        """Fence the flight's open runs and mark them; tell the front end unless they will be retried."""
        if not flight.open_runs:
            return
        ray.get(self.writer.settle.remote(list(flight.open_runs), status, reason))
        if on_event is not None:
            for run_id, label in flight.open_runs.items():
                on_event(RunEvent(RunEventKind.FINISHED, run_id, label, status=status, error=reason))
        flight.open_runs.clear()

    def _abandon(self, flights: dict[Any, _Flight], on_event: Callable[[RunEvent], None]) -> None:
        """At the end (normal, past the stop's grace, or aborted): cancel what still runs, mark it
        interrupted, and close the writer.

        Tasks get ABANDON_WAIT_S to end by themselves first: a task whose writer died ends within a stop
        poll (its next question to the writer fails), which is the very moment the driver gets here, and
        a force-cancel racing a task's own completion aborts the driver inside Ray (Ray 2.60: "Check
        failed: it != submissible_tasks_.end() Tried to complete task that was not pending", seen in
        tests/ray/test_ray_cluster.py's dead-writer test; ray-project/ray#54527 fixed the retry path of
        the same race)."""
        running = set(flights)
        if running:
            _, still = ray.wait(list(running), num_returns=len(running), timeout=ABANDON_WAIT_S)
            running = set(still)
        for ref, flight in flights.items():
            if ref in running:
                ray.cancel(ref, force=True)
            try:
                self._settle(flight, RunStatus.INTERRUPTED, "the sweep stopped before the run did", on_event)
            except ray.exceptions.RayError:  # the writer is gone too; the next sweep reaps the run
                log.debug("could not mark runs %s interrupted", sorted(flight.open_runs), exc_info=True)
        try:
            ray.get(self.writer.close.remote())
        except ray.exceptions.RayError:
            log.debug("the record writer could not close", exc_info=True)
        ray.kill(self.writer)
