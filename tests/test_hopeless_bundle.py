"""A member of a batched bundle stopped as hopeless (a stop request with a reason, as the sweep's monitor leaves
it: services.stop_requests) ends `early_stopped` alone, with the reason; the other members train to their end.

The worker's own code runs here, in this process: `run_task` on a real bundle, a real database, the worker's
`_WorkerStop` with its SIGUSR1 handler installed, and the request sent to this process the moment the member's
evaluation at step 10 reaches its sink (so the step it stops at does not depend on the machine's speed)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.config import load_sweep
from scaletui.core.records import MetricRecord
from scaletui.services.runner import RunEvent, _WorkerStop, plan_tasks, prepare_datasets, run_task, worker_config
from scaletui.services.stop_requests import request_run_stop, take_stop_requests
from scaletui.store.writer import Store, StoreSink

REASON = "hopeless: pred. final test loss >= 2.5 (90%), 4x1 got 1.8 (mean of 2 seeds)"
ASKED_AT = 10


class _Flag:
    value = 0


class _Events:
    def __init__(self) -> None:
        self.sent: list[RunEvent] = []

    def send(self, event: Any) -> None:
        self.sent.append(event)


@pytest.fixture
def worker_signals() -> Iterator[None]:
    """This process as a worker: its SIGUSR1 handler is restored and its request folder emptied afterwards."""
    previous = signal.getsignal(signal.SIGUSR1)
    take_stop_requests(os.getpid())
    yield
    signal.signal(signal.SIGUSR1, previous)
    take_stop_requests(os.getpid())


def test_one_member_stopped_as_hopeless_ends_early_stopped_alone(make_sweep: Callable[..., Path],
                                                                 worker_signals: None) -> None:
    sweep = load_sweep(make_sweep(experiment={"workers": 1, "threads_per_worker": 1}, model={"width": 8, "depth": 1},
                                  train={"seeds": [0, 1, 2], "steps": 40, "eval_every": 10}))
    prepare_datasets(sweep)
    with Store(sweep.db) as store:
        experiment = store.upsert_experiment(sweep.name, str(sweep.source), sweep.toml_text, sweep.loss_rule.value)
        todo = store.register_runs(experiment, sweep.runs, fresh=False)
        database_id = store.database_id()
    [task] = plan_tasks(todo, workers=1, batch_runs=True)
    assert len(task.members) == 3, "the three seeds train as one bundle"
    target = task.members[1][0]

    class AskingSink(StoreSink):
        """The target's sink: its evaluation at step 10 is when the monitor would have asked."""

        def metrics(self, rows: Any) -> None:
            super().metrics(rows)
            if self.run_id == target and any(r.key == "test_loss" and r.step == ASKED_AT for r in rows
                                              if isinstance(r, MetricRecord)):
                request_run_stop(os.getpid(), target, REASON)

    stop = _WorkerStop(_Flag(), os.getppid())
    signal.signal(signal.SIGUSR1, stop.stop_current_run)  # as worker_main installs it
    stop.new_task(task)
    outcomes = run_task(task, worker_config(sweep, database_id), _Events(), stop,
                        open_sink=lambda run_id: AskingSink(sweep.db, run_id))

    by_run = {run_id: outcome for (run_id, _), outcome in zip(task.members, outcomes, strict=True)}
    assert (by_run[target].status, by_run[target].step, by_run[target].error) == ("early_stopped", ASKED_AT, REASON)
    assert all((o.status, o.step, o.error) == ("done", 40, None) for run_id, o in by_run.items() if run_id != target)
    with sqlite3.connect(sweep.db) as conn:
        stored = dict(conn.execute("SELECT id, status || ' ' || step || ' ' || coalesce(error, '') FROM runs"))
        query = "SELECT message FROM events WHERE run_id = ? AND kind = 'early_stopped'"
        [message] = [m for (m,) in conn.execute(query, [target])]
    assert stored[target] == f"early_stopped {ASKED_AT} {REASON}"
    assert sorted(v for k, v in stored.items() if k != target) == ["done 40 ", "done 40 "]
    assert message.endswith(REASON)
