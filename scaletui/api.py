"""The Python API: scaletui for your own training loop.

    import scaletui
    with scaletui.init(db="runs/scaletui.db", experiment="ppo-width", config={"width": 256}) as run:
        run.watch(model, every=25)
        for step in range(steps):
            ...
            run.log({"train_loss": loss, "cost": cost}, step=step)
        run.summary(params=n_params)

Why it looks like this. A researcher's own loop gets what a built-in sweep gets, in the same database:
an `experiments` row and a `runs` row per run (its key a stable hash of the experiment's name and the
config), its records in `metrics` and `layer_stats`, events, live alerts, the app, `ls`, `fit` and
`export`. The handle itself (`RunHandle`: log, watch, summary, flush) lives in
`scaletui.services.own_run`, shared with the runner's entrypoint sweeps; this module adds what only a
script's own process can do: registering the run, and making its status follow the `with` block:

* `running` from `init` on; `done` when the block ends (`diverged` if the loss's final value is not
  finite); `failed` with the exception's first line when it raises; `interrupted` on Ctrl-C, on
  SIGTERM (turned into `RunTerminated`, a SystemExit with code 143, while the run is active: the
  handler is installed in the main thread only, and the previous one is restored after), or when the
  process exits without finishing the run. A process killed outright stays `running` until the next
  `init` or sweep on the database reaps it (host and pid are recorded): then it is `interrupted`.
* The loss rule of an experiment is stated once (`loss`, `higher_is_better`, `loss_rule`): the first
  `init` of an experiment sets it, later ones may leave it out, and one that states something else
  raises `LossRuleConflict`.
* `resume=True` with the same experiment and config continues the same run row (its records stay;
  `run.last_step` says how far they go, and the first step the loop logs says where it restarted).
  Without it, a config that ran before starts that run over.

Importing this module imports the store (sqlite-utils), never torch, textual or scipy: `watch`
imports torch when it is called, and the detectors load numpy in the writer thread.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from scaletui.core.rows import ExperimentLoss
from scaletui.core.vocabulary import DEFAULT_DB, DEFAULT_LOSS_METRIC, LossRule, RunStatus
from scaletui.services.own_records import (
    InvalidConfig,
    RunStorageError,
    canonical_config,
    check_experiment_name,
    own_outcome,
    own_run_row,
)
from scaletui.services.own_run import (
    RESERVED_METRIC_KEYS,
    InvalidMetric,
    InvalidSize,
    NotANumber,
    ReservedMetricKey,
    RunClosed,
    RunHandle,
    StepWentBackwards,
)
from scaletui.store.errors import StoreError
from scaletui.store.reader import Reader
from scaletui.store.writer import Store, default_host

__all__ = [
    "InvalidConfig",
    "InvalidMetric",
    "InvalidSize",
    "LossRuleConflict",
    "NotANumber",
    "ReservedMetricKey",
    "Run",
    "RunClosed",
    "RunInUse",
    "RunStorageError",
    "RunTerminated",
    "StepWentBackwards",
    "init",
]


class LossRuleConflict(ValueError):
    """`init` stated a loss rule other than the one the experiment already has."""


class RunInUse(RuntimeError):
    """Another live process is running the run with this experiment and config."""


class RunTerminated(SystemExit):
    """SIGTERM arrived while a run was active: the block unwinds, the run becomes `interrupted`, and the
    process exits with 128 + SIGTERM (143), as a service manager expects."""


class _ExitedUnfinished(Exception):
    """The interpreter exited while the run was still active (no with-block, no `finish()`)."""


def init(*, experiment: str, db: str | os.PathLike[str] = DEFAULT_DB, config: Mapping[str, Any] | None = None,
         loss: str | None = None, higher_is_better: bool | None = None, loss_rule: str | LossRule | None = None,
         resume: bool = False, name: str | None = None) -> Run:
    """Register and start one run of your own loop; use the result as a context manager (or call
    `finish()`). See the module docstring for statuses, the loss rule and resuming.

    experiment: the experiment's name (created when new). db: the database file (its folder is made).
    config: the run's configuration (JSON values); with the experiment it identifies the run, and its
    width/depth/lr/seed/... keys fill the matching `runs` columns. loss: the metric that is "the loss"
    of the experiment's runs (default test_loss); higher_is_better: which way it improves (default
    False); loss_rule: final | best | smoothed (default final). name: the run's label.
    """
    experiment = check_experiment_name(experiment)
    clean = canonical_config(config)
    stated = _stated_loss(loss, higher_is_better, loss_rule)
    label = _label(name)
    path = Path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(path)
    try:
        return _start(store, experiment, clean, stated, label, resume)
    except BaseException:
        store.close()
        raise


def _start(store: Store, experiment: str, config: dict[str, Any], stated: dict[str, Any], label: str | None,
           resume: bool) -> Run:
    from scaletui.services.runner import pid_alive

    host = default_host()
    store.reap_orphans(host, pid_alive)  # a run left `running` by a dead process here becomes interrupted
    experiment_id, loss = store.own_experiment(experiment, ExperimentLoss(**stated))
    _check_same_loss(experiment, loss, stated)
    row = own_run_row(experiment_id, experiment, config, label, store.run_column_types())
    claim = store.claim_own_run(row, resume=resume, pid=os.getpid(), host=host)
    if claim.held_by is not None:
        raise RunInUse(f"{store.path}: run {claim.run_id} ({row.label}) of experiment {experiment!r} is running in "
                       f"{claim.held_by}; wait for it, or change the config")
    try:
        run = Run(store, claim.run_id, experiment=experiment, experiment_id=experiment_id, key=row.key,
                  label=row.label, config=config, loss=loss, last_step=claim.last_step)
    except BaseException as exc:
        store.mark_failed(claim.run_id, f"{type(exc).__name__}: {_first_line(exc)}")
        raise
    run._activate()
    return run


def _stated_loss(loss: str | None, higher_is_better: bool | None, rule: str | LossRule | None) -> dict[str, Any]:
    """The parts of the loss rule this call states, checked (ExperimentLoss keyword arguments)."""
    stated: dict[str, Any] = {}
    if loss is not None:
        if not isinstance(loss, str) or not loss or loss != loss.strip() or not loss.isprintable() \
                or loss in RESERVED_METRIC_KEYS:
            raise InvalidConfig(f"loss: {loss!r} is not a metric name (one line of text, not "
                                f"{', '.join(sorted(RESERVED_METRIC_KEYS))})")
        stated["metric"] = loss
    if higher_is_better is not None:
        if not isinstance(higher_is_better, bool):
            raise InvalidConfig(f"higher_is_better: {higher_is_better!r} is not True or False")
        stated["higher_is_better"] = higher_is_better
    if rule is not None:
        if str(rule) not in LossRule.choices():
            raise InvalidConfig(f"loss_rule: {rule!r} is not one of {', '.join(LossRule.choices())}")
        stated["rule"] = LossRule(str(rule))
    return stated


_PARAMETERS = {"metric": "loss", "higher_is_better": "higher_is_better", "rule": "loss_rule"}  # field -> init's name


def _check_same_loss(experiment: str, loss: ExperimentLoss, stated: dict[str, Any]) -> None:
    differs = [f"{_PARAMETERS[key]}={value if isinstance(value, bool) else str(value)!r}"
               for key, value in stated.items() if getattr(loss, key) != value]
    if differs:
        raise LossRuleConflict(f"experiment {experiment!r}: its loss is the {loss.describe()}, stated once; "
                               f"this init says {', '.join(differs)} (state the same, or use another experiment)")


def _label(name: str | None) -> str | None:
    if name is not None and (not isinstance(name, str) or not name.strip() or not name.isprintable()):
        raise InvalidConfig(f"name: {name!r} is not one line of printable text")
    return name


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _describe(exc: BaseException) -> str:
    """`ValueError: the first line of its message` (the type alone when there is no message)."""
    first = _first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Run(RunHandle):
    """What `scaletui.init` returns: a `RunHandle` (log, watch, summary, flush) whose status follows
    the `with` block (or `finish()`). `id`, `key`, `label`, `experiment`, `config`, `loss` and
    `last_step` describe the run."""

    def _activate(self) -> None:
        self._ended = False
        self._previous_sigterm: Any = None
        self._sigterm_installed = False
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        atexit.register(self._at_exit)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._end(exc)

    def finish(self) -> None:
        """End the run as `done` (or `diverged`): what leaving the `with` block normally does."""
        self._end(None)

    # ----------------------------------------------------------------- the end

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._deactivate()
        failure: BaseException | None = None
        try:
            self.close()
        except RunStorageError as storage:
            failure = storage
        try:
            self._record_end(exc if exc is not None else failure)
        except StoreError as storage:
            failure = failure or storage
        finally:
            self.store.close()
        if failure is not None and exc is None:
            raise failure

    def _record_end(self, exc: BaseException | None) -> None:
        where = f"at step {self.step}" if self.step is not None else "before any step"
        if exc is None:
            with Reader(self.store.path) as reader:
                outcome = own_outcome(reader, self.id, self.loss, RunStatus.DONE)
            self.store.finish_own_run(self.id, outcome, self.loss.metric)
            self._warn_without_loss(outcome.final_test_loss)
        elif isinstance(exc, KeyboardInterrupt):
            self.store.mark_interrupted(self.id, f"Ctrl-C {where}")
        elif isinstance(exc, RunTerminated):
            self.store.mark_interrupted(self.id, f"SIGTERM {where}")
        elif isinstance(exc, _ExitedUnfinished):
            self.store.mark_interrupted(self.id, f"the process exited {where} without finishing the run "
                                                 "(use `with scaletui.init(...)` or call run.finish())")
        elif isinstance(exc, SystemExit | GeneratorExit):
            self.store.mark_interrupted(self.id, f"{_describe(exc)} {where}")
        else:
            self.store.mark_failed(self.id, _describe(exc))

    def _warn_without_loss(self, final: float | None) -> None:
        if final is None:
            hint = "" if self.loss.metric != DEFAULT_LOSS_METRIC else " (state it once: scaletui.init(..., loss=...))"
            warnings.warn(f"scaletui: run {self.id} ({self.label}) never logged {self.loss.metric!r}, the loss of "
                          f"experiment {self.experiment!r}: it has no loss for fits and rankings{hint}", stacklevel=5)

    # ----------------------------------------------------------------- signals and exit

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        raise RunTerminated(128 + signum)

    def _deactivate(self) -> None:
        """Put back the SIGTERM handler (unless someone replaced ours meanwhile) and forget the exit hook."""
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                previous = self._previous_sigterm
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._sigterm_installed = False
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self._end(_ExitedUnfinished())
