"""Everything that writes to a scaletui database.

Two writers, two kinds of process:

* `Store` lives in the runner (the main process). It owns run *states*:
  registering a sweep, queued -> running -> done/failed/..., and reaping runs
  whose process is gone. Every state change appends an event row in the same
  transaction, so the app's event log and the runs table never disagree.
* `StoreSink` lives in a worker process and writes the records of ONE run. It
  buffers and flushes in batches, one `BEGIN IMMEDIATE` transaction per flush,
  so many workers can share the file without the lock becoming the
  bottleneck; a `kill -9` loses at most what was buffered since the last flush.
  Rows are written with INSERT OR REPLACE on their primary key, so replaying a
  step (after a resume) overwrites instead of duplicating.

Every change to a `runs` row sets `rev` to a new, database-wide maximum. Writes
are serialised by the write lock, so `rev` increases in commit order and a
reader that remembers the largest `rev` it saw can ask for exactly the runs
that changed since (`Reader.changed_runs_since`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from scaletui.core.records import (
    Alert,
    LayerStats,
    MetricRecord,
    ModelInfo,
    RunOutcome,
)
from scaletui.core.rows import ExperimentLoss
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import BEFORE_ANY_STEP, EventKind, LossRule, RunSource, RunStatus
from scaletui.store.alerts import alert_subject, group_by_subject, sync_alerts
from scaletui.store.codec import iso_ago, now_iso, to_real
from scaletui.store.errors import UnknownRun
from scaletui.store.fits import StorableFit, insert_fit
from scaletui.store.predictions import NewPrediction, PredictionScore, insert_prediction, score_prediction
from scaletui.store.schema import HYPERPARAMETERS, database_id, open_db
from scaletui.store.tx import retrying, write_transaction

DEFAULT_STALE_AFTER_S = 300.0  # a remote run with no heartbeat for this long is `stale`

# Outcome columns cleared when a run is reset to queued by a fresh start.
_RESET_COLUMNS = (
    "params", "flops_per_example", "lr_effective", "step", "started_at", "finished_at",
    "heartbeat_at", "host", "pid", "final_train_loss", "final_test_loss", "final_test_acc",
    "best_test_loss", "best_step", "smoothed_test_loss", "error",
)  # fmt: skip

_METRIC_COLUMNS = ("run_id", "step", "key", "value")
_LAYER_COLUMNS = (
    "run_id", "step", "layer", "name", "grad_norm", "weight_norm", "update_ratio", "nonfinite",
)  # fmt: skip
# A flush's rows go in through sqlite3's own executemany: sqlite-utils' insert_all builds each chunk's
# multi-row statement and parameters in Python, which was ~60% of a flush and 1.3% of a width-64 run
# (py-spy, benchmarks/overhead.py). INSERT OR REPLACE: a replayed step overwrites.
_INSERT_METRICS = f"INSERT OR REPLACE INTO metrics ({', '.join(_METRIC_COLUMNS)}) VALUES (?, ?, ?, ?)"
_INSERT_LAYERS = (f"INSERT OR REPLACE INTO layer_stats ({', '.join(_LAYER_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_LAYER_COLUMNS))})")

#: The `runs` columns a run of one's own loop may set after it started (`run.summary(...)`): the sizes
#: that fits read (x = params, width, depth; flops = flops_per_example x step x batch_size; examples).
SIZE_COLUMNS: tuple[str, ...] = ("params", "flops_per_example", "width", "depth", "batch_size", "train_size", "steps")


@dataclass(frozen=True)
class OwnRunRow:
    """What a run of a researcher's own loop (the Python API) is registered with."""

    experiment_id: int
    key: str  # stable hash of the experiment's name and the run's config
    point_key: str  # the same without the config's seed: seeds of one point share it
    label: str
    user_config_json: str  # the config the loop was given, as canonical JSON
    columns: Mapping[str, Any]  # hyperparameter columns (names of schema.HYPERPARAMETERS) filled from it
    source: RunSource = RunSource.API  # or ENTRYPOINT: a sweep's run of the researcher's function


@dataclass(frozen=True)
class RunClaim:
    """How `Store.claim_own_run` went: the run's id and, when it resumed, the last step the database held
    for it. `held_by` ("pid 12 on host") says another live process is running it: nothing was changed."""

    run_id: int
    last_step: int | None
    held_by: str | None = None

# --------------------------------------------------------------------------- SQL helpers
# Column names below always come from the constants of this module, never from
# callers; values always travel as parameters.


def _next_rev(db: Database) -> int:
    """A `rev` larger than any existing one (call inside a write transaction)."""
    return int(db.execute("SELECT COALESCE(MAX(rev), 0) + 1 FROM runs").fetchone()[0])


def _update_run(db: Database, run_id: int, values: dict[str, Any]) -> None:
    """UPDATE one runs row (and bump its rev); UnknownRun if it does not exist."""
    values = {**values, "rev": _next_rev(db)}
    sets = ", ".join(f'"{column}" = ?' for column in values)
    cursor = db.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*values.values(), run_id])
    if cursor.rowcount != 1:
        raise UnknownRun(run_id)


def _insert_event(db: Database, run_id: int | None, kind: str, message: str) -> int:
    cursor = db.execute(
        "INSERT INTO events (run_id, at, kind, message) VALUES (?, ?, ?, ?)",
        [run_id, now_iso(), kind, message],
    )
    return int(cursor.lastrowid or 0)


def _delete_records(db: Database, run_id: int, after_step: int) -> None:
    """Delete a run's metrics and layer stats with step > after_step (PK range delete)."""
    for table in ("metrics", "layer_stats"):
        db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", [run_id, after_step])


def _one_line(text: str) -> str:
    """The last non-empty line of a message (a traceback's is the exception)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- run specs


def spec_columns(spec: RunSpec) -> dict[str, Any]:
    """The hyperparameter columns of `runs` for one spec (see schema.HYPERPARAMETERS)."""
    d, m, t = spec.data, spec.model, spec.train
    columns = {
        "dataset": d.dataset, "train_size": d.train_size, "label_noise": d.label_noise,
        "normalize": d.normalize, "arch": m.arch, "width": m.width, "depth": m.depth,
        "dropout": m.dropout, "init": m.init, "norm": m.norm, "optimizer": t.optimizer,
        "lr": t.lr, "lr_scaling": t.lr_scaling, "lr_ref_params": t.lr_ref_params,
        "momentum": t.momentum, "schedule": t.schedule, "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay, "batch_size": t.batch_size, "steps": t.steps,
        "grad_clip": t.grad_clip, "patience": t.early_stopping.patience,
        "es_metric": t.early_stopping.metric, "eval_every": t.eval_every, "seed": spec.seed,
        "device": t.device,
    }  # fmt: skip
    assert tuple(columns) == HYPERPARAMETERS
    return columns


def _spec_row(spec: RunSpec, experiment_id: int) -> dict[str, Any]:
    """Everything a registered run's row says about its config."""
    return {
        "experiment_id": experiment_id,
        "label": spec.label,
        "point_key": spec.point_key,
        **spec_columns(spec),
        "config_json": json.dumps(spec.to_dict(), sort_keys=True),
    }


def _dedupe(specs: Iterable[RunSpec]) -> dict[str, RunSpec]:
    """Specs by key, first occurrence wins (the key ignores device and experiment name)."""
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key, spec)
    return unique


def _own_row(row: OwnRunRow) -> dict[str, Any]:
    """The `runs` columns of a run of one's own loop (its config lives in user_config_json)."""
    unknown = set(row.columns) - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"not hyperparameter columns: {sorted(unknown)}")
    return {"key": row.key, "experiment_id": row.experiment_id, "label": row.label, "point_key": row.point_key,
            "source": RunSource(row.source).value, "config_json": None, "user_config_json": row.user_config_json,
            **row.columns}


def _outcome_message(outcome: RunOutcome) -> str:
    parts = [f"{outcome.status.value} at step {outcome.step}"]
    if outcome.final_test_loss is not None:
        parts.append(f"test loss {outcome.final_test_loss:.4g}")
    if outcome.error:
        parts.append(_one_line(outcome.error))
    return ", ".join(parts)


# --------------------------------------------------------------------------- Store


class Store:
    """The runner's handle on the database: experiments, run registration and run states.

    Thread-safe (one lock around the connection). Use as a context manager or call `close()`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = open_db(self.path, create=True)
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, body: Callable[[Database], Any]) -> Any:
        with self._lock:
            return write_transaction(self.db, body, self.path)

    # ----------------------------------------------------------------- experiments

    def upsert_experiment(
        self, name: str, config_path: str | None, config_toml: str | None, loss_rule: LossRule | str
    ) -> int:
        """Create or update the experiment called `name`; returns its id.

        Changing the loss rule bumps `rev` on its runs: their `loss` changed.
        """
        rule = LossRule(loss_rule).value

        def body(db: Database) -> int:
            now = now_iso()
            old = db.execute("SELECT id, loss_rule FROM experiments WHERE name = ?", [name]).fetchone()
            if old is None:
                cursor = db.execute(
                    "INSERT INTO experiments (name, config_path, config_toml, loss_rule, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [name, config_path, config_toml, rule, now, now],
                )
                return int(cursor.lastrowid or 0)
            db.execute(
                "UPDATE experiments SET config_path = ?, config_toml = ?, loss_rule = ?, updated_at = ? WHERE id = ?",
                [config_path, config_toml, rule, now, old[0]],
            )
            if old[1] != rule:
                db.execute("UPDATE runs SET rev = ? WHERE experiment_id = ?", [_next_rev(db), old[0]])
            return int(old[0])

        return int(self._write(body))

    # ----------------------------------------------------------------- registration

    def register_runs(self, experiment_id: int, specs: Sequence[RunSpec], fresh: bool) -> list[tuple[int, RunSpec]]:
        """Make sure every spec has a row; return (run_id, spec) for those that still need running.

        New specs are inserted as `queued`. Existing rows move to `experiment_id`
        (a run's key ignores the experiment name, so the sweep that lists it last
        owns it). Without `fresh`, finished runs (done, early_stopped, diverged)
        are skipped and rows `running` are left to their owner (call
        `reap_orphans` first); queued, interrupted, failed and stale come back.
        With `fresh`, existing rows lose their metrics, layer stats and events
        and are reset to `queued`. One transaction for the whole sweep.
        """
        unique = _dedupe(specs)

        def body(db: Database) -> list[tuple[int, RunSpec]]:
            todo: list[tuple[int, RunSpec]] = []
            for key, spec in unique.items():
                row = db.execute(
                    "SELECT id, status, experiment_id, config_json FROM runs WHERE key = ?", [key]
                ).fetchone()
                if row is None:
                    todo.append((self._insert_run(db, experiment_id, spec), spec))
                elif fresh:
                    self._reset_run(db, int(row[0]), experiment_id, spec)
                    todo.append((int(row[0]), spec))
                else:
                    self._adopt_run(db, row, experiment_id, spec)
                    if not RunStatus(row[1]).finished and row[1] != RunStatus.RUNNING:
                        todo.append((int(row[0]), spec))
            return todo

        result: list[tuple[int, RunSpec]] = self._write(body)
        return result

    @staticmethod
    def _insert_run(db: Database, experiment_id: int, spec: RunSpec) -> int:
        row = {
            "key": spec.key,
            "status": RunStatus.QUEUED.value,
            **_spec_row(spec, experiment_id),
            "created_at": now_iso(),
            "rev": _next_rev(db),
        }
        columns = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        cursor = db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(row.values()))
        run_id = int(cursor.lastrowid or 0)
        _insert_event(db, run_id, RunStatus.QUEUED, spec.label)
        return run_id

    @staticmethod
    def _reset_run(db: Database, run_id: int, experiment_id: int, spec: RunSpec) -> None:
        _delete_records(db, run_id, after_step=BEFORE_ANY_STEP)
        db.execute("DELETE FROM events WHERE run_id = ?", [run_id])
        values: dict[str, Any] = dict.fromkeys(_RESET_COLUMNS)
        values.update(_spec_row(spec, experiment_id), status=RunStatus.QUEUED.value, created_at=now_iso())
        _update_run(db, run_id, values)
        _insert_event(db, run_id, RunStatus.QUEUED, f"{spec.label} (fresh start)")

    @staticmethod
    def _adopt_run(db: Database, row: tuple[Any, ...], experiment_id: int, spec: RunSpec) -> None:
        """Move an existing run to this experiment; an unfinished one also takes the new spec (e.g. device).

        Writes (and bumps `rev`) only when something differs, so re-running a sweep does not
        make every run look changed to the app.
        """
        run_id, status, old_experiment, old_config = row
        if RunStatus(status).finished:
            if old_experiment != experiment_id:
                _update_run(db, run_id, {"experiment_id": experiment_id})
            return
        values = _spec_row(spec, experiment_id)
        if old_experiment != experiment_id or old_config != values["config_json"]:
            _update_run(db, run_id, values)

    # ----------------------------------------------------------------- state changes

    def mark_queued(self, run_ids: Iterable[int]) -> None:
        """Put runs (back) in the queue; clears a previous error and finish time."""
        ids = list(run_ids)

        def body(db: Database) -> None:
            for run_id in ids:
                _update_run(db, run_id, {"status": RunStatus.QUEUED.value, "error": None, "finished_at": None})
                _insert_event(db, run_id, RunStatus.QUEUED, "queued again")

        self._write(body)

    def mark_running(self, run_id: int, pid: int, host: str) -> None:
        """The run's worker process `pid` on `host` has started it."""
        now = now_iso()
        values = {
            "status": RunStatus.RUNNING.value, "pid": pid, "host": host, "started_at": now,
            "heartbeat_at": now, "finished_at": None, "error": None,
        }  # fmt: skip
        self._change(run_id, values, EventKind.STARTED, f"pid {pid} on {host}")

    def finish_run(self, run_id: int, outcome: RunOutcome) -> None:
        """Record how a run ended: status, last step and its losses (NaN stored as NULL)."""
        values: dict[str, Any] = {
            "status": outcome.status.value,
            "step": outcome.step,
            "finished_at": now_iso(),
            "error": outcome.error,
            "best_step": outcome.best_step,
        }
        for column in (
            "final_train_loss", "final_test_loss", "final_test_acc", "best_test_loss", "smoothed_test_loss",
        ):  # fmt: skip
            values[column] = to_real(getattr(outcome, column))
        self._change(run_id, values, outcome.status.value, _outcome_message(outcome))

    def mark_interrupted(self, run_id: int, reason: str) -> None:
        """The run stopped before finishing (signal, cancel, dead worker); it can be resumed."""
        self._change(run_id, {"status": RunStatus.INTERRUPTED.value}, RunStatus.INTERRUPTED, reason)

    def mark_failed(self, run_id: int, error: str) -> None:
        """The run raised; `error` (possibly a traceback) is kept whole, its last line goes to the event."""
        values = {"status": RunStatus.FAILED.value, "error": error, "finished_at": now_iso()}
        self._change(run_id, values, RunStatus.FAILED, _one_line(error))

    def add_event(self, run_id: int | None, kind: str, message: str) -> int:
        """Append a free-form event (run_id None for sweep-level events); returns its id."""
        return int(self._write(lambda db: _insert_event(db, run_id, kind, message)))

    # ----------------------------------------------------------------- findings

    def sync_alerts(self, experiment_id: int, alerts: Sequence[Alert], subjects: Iterable[str] = ()) -> int:
        """Make the active alerts of every subject in `alerts` (plus `subjects`, which may now have
        none) exactly these; returns the number of rows changed. See `scaletui.store.alerts`."""
        by_subject: dict[str, list[Alert]] = {subject: [] for subject in subjects}
        by_subject.update(group_by_subject(alerts))
        return int(self._write(lambda db: sync_alerts(db, experiment_id, by_subject)))

    def add_fit(self, fit: StorableFit) -> int:
        """Store one fitted law with its evidence and inputs (see `scaletui.store.fits`); returns its id."""
        return int(self._write(lambda db: insert_fit(db, fit)))

    def add_prediction(self, prediction: NewPrediction) -> int | None:
        """Record one open prediction (see `scaletui.store.predictions`); returns its id (None: a curve
        prediction of that run and step was recorded before)."""
        result = self._write(lambda db: insert_prediction(db, prediction))
        return None if result is None else int(result)

    def score_prediction(self, prediction_id: int, score: PredictionScore) -> bool:
        """Close an open prediction with its outcome; False when it was already closed."""
        return bool(self._write(lambda db: score_prediction(db, prediction_id, score)))

    def running_runs(self, experiment: str) -> list[int]:
        """Ids of the experiment's runs whose status is `running` (call after `reap_orphans`)."""
        rows = self.db.execute(
            "SELECT r.id FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE e.name = ? AND r.status = ?",
            [experiment, RunStatus.RUNNING.value],
        ).fetchall()
        return [int(row[0]) for row in rows]

    def database_id(self) -> str:
        """This database's identity (a UUID made with it): what its runs' checkpoints are filed under."""
        with self._lock:
            return retrying(lambda: database_id(self.db), self.path)

    def recorded_step(self, run_id: int) -> int:
        """The last step whose records the run's worker has flushed (`runs.step`; 0 when none).

        A run may resume only from a checkpoint at or before this step: past it, the records
        the checkpoint's progress stands for are not in this database."""
        with self._lock:
            row = retrying(lambda: self.db.execute("SELECT step FROM runs WHERE id = ?", [run_id]).fetchone(),
                           self.path)
        if row is None:
            raise UnknownRun(run_id)
        return int(row[0] or 0)

    def experiment_id(self, name: str) -> int | None:
        """The id of the experiment called `name`, or None."""
        row = self.db.execute("SELECT id FROM experiments WHERE name = ?", [name]).fetchone()
        return None if row is None else int(row[0])

    def _change(self, run_id: int, values: dict[str, Any], kind: str, message: str) -> None:
        def body(db: Database) -> None:
            _update_run(db, run_id, values)
            _insert_event(db, run_id, kind, message)

        self._write(body)

    # ----------------------------------------------------------------- runs of one's own loop (the Python API)

    def own_experiment(self, name: str, wanted: ExperimentLoss | None) -> tuple[int, ExperimentLoss]:
        """The id and loss definition of the experiment called `name`, creating it with `wanted` (or the
        default) when it does not exist. An existing experiment keeps its definition: the caller compares."""

        def body(db: Database) -> tuple[int, ExperimentLoss]:
            row = db.execute("SELECT id, loss_metric, higher_is_better, loss_rule FROM experiments WHERE name = ?",
                             [name]).fetchone()
            if row is not None:
                return int(row[0]), ExperimentLoss(str(row[1]), bool(row[2]), LossRule(row[3]))
            loss, now = wanted or ExperimentLoss(), now_iso()
            cursor = db.execute(
                "INSERT INTO experiments (name, loss_rule, loss_metric, higher_is_better, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [name, loss.rule.value, loss.metric, int(loss.higher_is_better), now, now])
            return int(cursor.lastrowid or 0), loss

        result: tuple[int, ExperimentLoss] = self._write(body)
        return result

    def claim_own_run(self, row: OwnRunRow, *, resume: bool, pid: int, host: str, queue: bool = False) -> RunClaim:
        """Register the run with `row.key` (or take it up again) and mark it running by `pid` on `host`, in
        one transaction, so two processes given the same config cannot both run it. With `queue` (a sweep
        registering its `train.entrypoint` runs) it is marked `queued` instead: a worker starts it later.

        A new key is inserted. An existing row that is `running` is left alone (`held_by`; call
        `reap_orphans` first, so that only a live process holds it). With `resume` the row keeps its
        records and its last recorded step comes back in `last_step`; without it the run starts over:
        its metrics, layer stats and events are deleted, its alerts deactivated, its outcome cleared."""

        def body(db: Database) -> RunClaim:
            old = db.execute("SELECT id, status, pid, host, step FROM runs WHERE key = ?", [row.key]).fetchone()
            now = now_iso()
            running = ({"status": RunStatus.QUEUED.value, "finished_at": None, "error": None} if queue else
                       {"status": RunStatus.RUNNING.value, "pid": pid, "host": host, "started_at": now,
                        "heartbeat_at": now, "finished_at": None, "error": None})
            if old is None:
                claim = RunClaim(self._insert_own_run(db, row, running), None)
            elif old[1] == RunStatus.RUNNING:
                return RunClaim(int(old[0]), None, held_by=f"pid {old[2]} on {old[3]}")
            elif resume:
                claim = RunClaim(int(old[0]), None if old[4] is None else int(old[4]))
                _update_run(db, claim.run_id, {**_own_row(row), **running})
                _insert_event(db, claim.run_id, EventKind.RESUMED,
                              "with no records yet" if old[4] is None else f"after step {old[4]}")
            else:
                claim = RunClaim(int(old[0]), None)
                self._restart_own_run(db, claim.run_id, row, running)
            if queue:
                _insert_event(db, claim.run_id, RunStatus.QUEUED, "registered by the sweep")
            else:
                _insert_event(db, claim.run_id, EventKind.STARTED, f"pid {pid} on {host}")
            return claim

        result: RunClaim = self._write(body)
        return result

    @staticmethod
    def _insert_own_run(db: Database, row: OwnRunRow, running: dict[str, Any]) -> int:
        values = {**_own_row(row), **running, "created_at": now_iso(), "rev": _next_rev(db)}
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        cursor = db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(values.values()))
        return int(cursor.lastrowid or 0)

    @staticmethod
    def _restart_own_run(db: Database, run_id: int, row: OwnRunRow, running: dict[str, Any]) -> None:
        """Start a run of one's own loop over: nothing of its earlier attempt stays visible as current."""
        _delete_records(db, run_id, after_step=BEFORE_ANY_STEP)
        db.execute("DELETE FROM events WHERE run_id = ?", [run_id])
        subject = alert_subject(Alert("", "", None, "", "", run_id=run_id))
        sync_alerts(db, row.experiment_id, {subject: []})
        values: dict[str, Any] = dict.fromkeys(_RESET_COLUMNS)
        values.update(_own_row(row), **running)
        _update_run(db, run_id, values)

    def run_column_types(self) -> dict[str, str]:
        """The declared type (INTEGER, REAL, TEXT) of every `runs` column, by name."""
        with self._lock:
            rows = retrying(lambda: self.db.execute("SELECT name, type FROM pragma_table_info('runs')").fetchall(),
                            self.path)
        return {str(name): str(sql_type).upper() for name, sql_type in rows}

    def set_sizes(self, run_id: int, sizes: Mapping[str, int]) -> None:
        """Set size columns of a run (names from SIZE_COLUMNS; anything else raises ValueError)."""
        unknown = sorted(set(sizes) - set(SIZE_COLUMNS))
        if unknown:
            raise ValueError(f"not size columns of a run: {', '.join(unknown)} (choose from {', '.join(SIZE_COLUMNS)})")
        if sizes:
            self._write(lambda db: _update_run(db, run_id, dict(sizes)))

    def finish_own_run(self, run_id: int, outcome: RunOutcome, loss_metric: str) -> None:
        """Like `finish_run`, for a run of one's own loop: its final_/best_/smoothed_test_loss hold the
        experiment's loss metric, which the event names."""
        values: dict[str, Any] = {"status": outcome.status.value, "step": outcome.step, "finished_at": now_iso(),
                                  "error": outcome.error, "best_step": outcome.best_step}
        for column in ("final_train_loss", "final_test_loss", "final_test_acc", "best_test_loss",
                       "smoothed_test_loss"):
            values[column] = to_real(getattr(outcome, column))
        parts = [f"{outcome.status.value} at step {outcome.step}"]
        if outcome.final_test_loss is not None:
            parts.append(f"{loss_metric} {outcome.final_test_loss:.4g}")
        if outcome.error:
            parts.append(_one_line(outcome.error))
        self._change(run_id, values, outcome.status.value, ", ".join(parts))

    # ----------------------------------------------------------------- orphans

    def reap_orphans(
        self, host: str, is_alive: Callable[[int], bool], *, stale_after_s: float = DEFAULT_STALE_AFTER_S
    ) -> list[int]:
        """Make sure nothing stays `running` after its process is gone; returns the ids changed.

        On `host`, a running row whose pid is not alive becomes `interrupted`.
        On other hosts (where pids mean nothing to us) a running row whose
        heartbeat is older than `stale_after_s` becomes `stale`. Each gets an
        event. Liveness is checked outside the transaction; the update only
        applies if the row is still running with the same pid.
        """
        with self._lock:
            running = retrying(
                lambda: self.db.execute(
                    "SELECT id, host, pid, heartbeat_at FROM runs WHERE status = ?", [RunStatus.RUNNING.value]
                ).fetchall(),
                self.path,
            )
        cutoff = iso_ago(stale_after_s)
        dead = [(r[0], r[2]) for r in running if r[1] == host and (r[2] is None or not is_alive(int(r[2])))]
        silent = [(r[0], r[1]) for r in running if r[1] != host and (r[3] is None or r[3] < cutoff)]

        def body(db: Database) -> list[int]:
            changed = [run_id for run_id, pid in dead if self._reap_dead(db, run_id, pid, host)]
            changed += [run_id for run_id, other in silent if self._reap_silent(db, run_id, other, cutoff)]
            return changed

        result: list[int] = self._write(body)
        return result

    @staticmethod
    def _reap_dead(db: Database, run_id: int, pid: int | None, host: str) -> bool:
        cursor = db.execute(
            "UPDATE runs SET status = ?, rev = ? WHERE id = ? AND status = ? AND pid IS ?",
            [RunStatus.INTERRUPTED.value, _next_rev(db), run_id, RunStatus.RUNNING.value, pid],
        )
        if cursor.rowcount:
            _insert_event(db, run_id, RunStatus.INTERRUPTED, f"process {pid} on {host} is gone")
        return cursor.rowcount == 1

    @staticmethod
    def _reap_silent(db: Database, run_id: int, host: str | None, cutoff: str) -> bool:
        cursor = db.execute(
            "UPDATE runs SET status = ?, rev = ? WHERE id = ? AND status = ?"
            " AND (heartbeat_at IS NULL OR heartbeat_at < ?)",
            [RunStatus.STALE.value, _next_rev(db), run_id, RunStatus.RUNNING.value, cutoff],
        )
        if cursor.rowcount:
            _insert_event(db, run_id, RunStatus.STALE, f"no heartbeat from {host} since before {cutoff}")
        return cursor.rowcount == 1


# --------------------------------------------------------------------------- StoreSink


class StoreSink:
    """A `records.Sink` that writes one run's records from inside its worker process.

    Records are buffered and written when `flush_rows` are waiting or
    `flush_seconds` have passed since the last flush (checked when records
    arrive), on `event`, and on `flush`/`close`. Each flush is one transaction
    that also advances `runs.step` and `runs.heartbeat_at`, and turns a `stale`
    row back into `running` (its worker is evidently alive).
    """

    def __init__(self, db_path: str | Path, run_id: int, *, flush_rows: int = 5000, flush_seconds: float = 1.0) -> None:
        self.path = Path(db_path)
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.db = open_db(self.path, create=False)
        self._metrics: list[tuple[int, int, str, float | None]] = []
        self._layers: list[tuple[Any, ...]] = []
        self._events: list[tuple[str, str]] = []
        self._last_flush = time.monotonic()

    # ----------------------------------------------------------------- Sink protocol

    def started(self, info: ModelInfo, resumed_from: int) -> None:
        """Record the model's size; forget records after `resumed_from` (the resumed run redoes them)."""
        self.flush()
        size = f"{info.params:,} params, {info.flops_per_example:,} FLOPs/example, lr {info.lr:.3g}"
        kind, message = ((EventKind.MODEL, size) if resumed_from <= 0
                         else (EventKind.RESUMED, f"from step {resumed_from}; {size}"))

        def body(db: Database) -> None:
            _delete_records(db, self.run_id, after_step=resumed_from)
            step = db.execute("SELECT step FROM runs WHERE id = ?", [self.run_id]).fetchone()
            values = {
                "params": info.params,
                "flops_per_example": info.flops_per_example,
                "lr_effective": to_real(info.lr),
                "heartbeat_at": now_iso(),
                "step": None if step is None or step[0] is None else min(int(step[0]), resumed_from),
            }
            _update_run(db, self.run_id, values)
            _insert_event(db, self.run_id, kind, message)

        write_transaction(self.db, body, self.path)

    def metrics(self, rows: Sequence[MetricRecord]) -> None:
        self._metrics.extend((self.run_id, r.step, r.key, to_real(r.value)) for r in rows)
        self._maybe_flush()

    def layer_stats(self, rows: Sequence[LayerStats]) -> None:
        self._layers.extend(
            (self.run_id, r.step, r.layer, r.name, to_real(r.grad_norm), to_real(r.weight_norm),
             to_real(r.update_ratio), int(r.nonfinite))
            for r in rows
        )  # fmt: skip
        self._maybe_flush()

    def event(self, kind: str, message: str) -> None:
        """Events are rare and worth seeing at once: buffered, then flushed immediately."""
        self._events.append((kind, message))
        self.flush()

    def flush(self) -> None:
        """Write everything buffered, plus step and heartbeat, in one transaction."""
        write_transaction(self.db, self._flush_body, self.path)
        self._metrics.clear()
        self._layers.clear()
        self._events.clear()
        self._last_flush = time.monotonic()

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Flush what is left and close the connection."""
        try:
            self.flush()
        finally:
            self.db.close()

    def __enter__(self) -> StoreSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    @property
    def pending(self) -> int:
        """Rows waiting in the buffer."""
        return len(self._metrics) + len(self._layers) + len(self._events)

    def _maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if len(self._metrics) + len(self._layers) >= self.flush_rows or due:
            self.flush()

    def _flush_body(self, db: Database) -> None:
        """Inserts are INSERT OR REPLACE on the primary key: a replayed step overwrites."""
        if self._metrics:
            db.conn.executemany(_INSERT_METRICS, self._metrics)
        if self._layers:
            db.conn.executemany(_INSERT_LAYERS, self._layers)
        for kind, message in self._events:
            _insert_event(db, self.run_id, kind, message)
        top = max([row[1] for row in self._metrics] + [row[1] for row in self._layers], default=None)
        db.execute(
            "UPDATE runs SET heartbeat_at = :now, rev = :rev,"
            " step = CASE WHEN :top IS NULL OR step >= :top THEN step ELSE :top END,"
            " status = CASE WHEN status = :stale_status THEN :running_status ELSE status END"
            " WHERE id = :id",
            {
                "now": now_iso(), "rev": _next_rev(db), "top": top, "id": self.run_id,
                "stale_status": RunStatus.STALE.value, "running_status": RunStatus.RUNNING.value,
            },
        )  # fmt: skip


class OwnRunSink(StoreSink):
    """The StoreSink of a run of one's own loop, which can be told where a resumed loop restarted.

    `replace_from(step)`: the records the run holds from `step` on belong to the attempt before the
    resume and are replaced by what the loop logs now. They are deleted in the same transaction as the
    next flush writes the new ones, so a reader never sees the run without either."""

    def __init__(self, db_path: str | Path, run_id: int) -> None:
        # The owner decides when to flush (one transaction per flush); records never trigger one.
        super().__init__(db_path, run_id, flush_rows=2**62, flush_seconds=float("inf"))
        self._replace_from: int | None = None

    def replace_from(self, step: int) -> None:
        """At the next flush, delete this run's records with step >= `step` before writing the new ones."""
        self._replace_from = step

    def queue_event(self, kind: str, message: str) -> None:
        """An event written with the next flush, in its transaction (`event` flushes at once)."""
        self._events.append((kind, message))

    def flush(self) -> None:
        super().flush()
        self._replace_from = None

    def _flush_body(self, db: Database) -> None:
        if self._replace_from is not None:
            kept = self._replace_from - 1
            _delete_records(db, self.run_id, after_step=kept)
            db.execute("UPDATE runs SET step = CASE WHEN step IS NULL OR step <= :kept THEN step"
                       " WHEN :kept < 0 THEN NULL ELSE :kept END WHERE id = :id", {"kept": kept, "id": self.run_id})
        super()._flush_body(db)


def default_host() -> str:
    """The host name to record with running runs and to pass to `reap_orphans`."""
    return socket.gethostname()
