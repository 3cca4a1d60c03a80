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

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from scaletui.records import Alert, FitResult, LayerStats, LossRule, MetricRecord, ModelInfo, RunOutcome, RunSpec, RunStatus
from scaletui.store.alerts import group_by_subject, sync_alerts
from scaletui.store.codec import iso_ago, now_iso, to_real
from scaletui.store.fits import FitInputs, insert_fit
from scaletui.store.errors import UnknownRun
from scaletui.store.schema import FINISHED_STATUSES, HYPERPARAMETERS, database_id, open_db
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


def point_key(spec: RunSpec) -> str:
    """Like RunSpec.key but without the seed: the runs that are seeds of one sweep point share it."""
    d = spec.to_dict()
    for drop in ("experiment", "seed"):
        d.pop(drop)
    d["train"].pop("device")
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _spec_row(spec: RunSpec, experiment_id: int) -> dict[str, Any]:
    """Everything a registered run's row says about its config."""
    return {
        "experiment_id": experiment_id,
        "label": spec.label,
        "point_key": point_key(spec),
        **spec_columns(spec),
        "config_json": json.dumps(spec.to_dict(), sort_keys=True),
    }


def _dedupe(specs: Iterable[RunSpec]) -> dict[str, RunSpec]:
    """Specs by key, first occurrence wins (the key ignores device and experiment name)."""
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key, spec)
    return unique


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
                    if row[1] not in FINISHED_STATUSES and row[1] != RunStatus.RUNNING.value:
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
        _insert_event(db, run_id, "queued", spec.label)
        return run_id

    @staticmethod
    def _reset_run(db: Database, run_id: int, experiment_id: int, spec: RunSpec) -> None:
        _delete_records(db, run_id, after_step=-(2**63))
        db.execute("DELETE FROM events WHERE run_id = ?", [run_id])
        values: dict[str, Any] = dict.fromkeys(_RESET_COLUMNS)
        values.update(_spec_row(spec, experiment_id), status=RunStatus.QUEUED.value, created_at=now_iso())
        _update_run(db, run_id, values)
        _insert_event(db, run_id, "queued", f"{spec.label} (fresh start)")

    @staticmethod
    def _adopt_run(db: Database, row: tuple[Any, ...], experiment_id: int, spec: RunSpec) -> None:
        """Move an existing run to this experiment; an unfinished one also takes the new spec (e.g. device).

        Writes (and bumps `rev`) only when something differs, so re-running a sweep does not
        make every run look changed to the app.
        """
        run_id, status, old_experiment, old_config = row
        if status in FINISHED_STATUSES:
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
                _insert_event(db, run_id, "queued", "queued again")

        self._write(body)

    def mark_running(self, run_id: int, pid: int, host: str) -> None:
        """The run's worker process `pid` on `host` has started it."""
        now = now_iso()
        values = {
            "status": RunStatus.RUNNING.value, "pid": pid, "host": host, "started_at": now,
            "heartbeat_at": now, "finished_at": None, "error": None,
        }  # fmt: skip
        self._change(run_id, values, "started", f"pid {pid} on {host}")

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
        self._change(run_id, {"status": RunStatus.INTERRUPTED.value}, "interrupted", reason)

    def mark_failed(self, run_id: int, error: str) -> None:
        """The run raised; `error` (possibly a traceback) is kept whole, its last line goes to the event."""
        values = {"status": RunStatus.FAILED.value, "error": error, "finished_at": now_iso()}
        self._change(run_id, values, "failed", _one_line(error))

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

    def add_fit(self, result: FitResult, inputs: FitInputs) -> int:
        """Store one fitted law with its inputs; returns the fit's id."""
        return int(self._write(lambda db: insert_fit(db, result, inputs)))

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
            _insert_event(db, run_id, "interrupted", f"process {pid} on {host} is gone")
        return cursor.rowcount == 1

    @staticmethod
    def _reap_silent(db: Database, run_id: int, host: str | None, cutoff: str) -> bool:
        cursor = db.execute(
            "UPDATE runs SET status = ?, rev = ? WHERE id = ? AND status = ?"
            " AND (heartbeat_at IS NULL OR heartbeat_at < ?)",
            [RunStatus.STALE.value, _next_rev(db), run_id, RunStatus.RUNNING.value, cutoff],
        )
        if cursor.rowcount:
            _insert_event(db, run_id, "stale", f"no heartbeat from {host} since before {cutoff}")
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
        kind, message = ("model", size) if resumed_from <= 0 else ("resumed", f"from step {resumed_from}; {size}")

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
            db.table("metrics").insert_all([_METRIC_COLUMNS, *self._metrics], replace=True, batch_size=1000)
        if self._layers:
            db.table("layer_stats").insert_all([_LAYER_COLUMNS, *self._layers], replace=True, batch_size=1000)
        for kind, message in self._events:
            _insert_event(db, self.run_id, kind, message)
        top = max([row[1] for row in self._metrics] + [row[1] for row in self._layers], default=None)
        db.execute(
            "UPDATE runs SET heartbeat_at = :now, rev = :rev,"
            " step = CASE WHEN :top IS NULL OR step >= :top THEN step ELSE :top END,"
            " status = CASE WHEN status = :stale THEN :running ELSE status END"
            " WHERE id = :id",
            {
                "now": now_iso(), "rev": _next_rev(db), "top": top, "id": self.run_id,
                "stale": RunStatus.STALE.value, "running": RunStatus.RUNNING.value,
            },
        )  # fmt: skip


def default_host() -> str:
    """The host name to record with running runs and to pass to `reap_orphans`."""
    return socket.gethostname()
