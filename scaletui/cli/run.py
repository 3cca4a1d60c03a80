"""`scaletui run`: train a sweep headless (progress, then a summary and the fitted law) or in the app.

Heavy imports (the runner, hence torch in its workers; the store; rich) happen inside the functions
that need them, so `scaletui --help` never pays for them.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaletui.cli.common import (
    EXIT_STOPPED,
    EXIT_STORAGE,
    alert_badges,
    check_db_usable,
    console,
    fail,
    fmt,
    load_sweep_or_fail,
    print_group_alerts,
)
from scaletui.core.vocabulary import DEFAULT_SWEEP_FILE, ExecutorKind, RunEventKind

if TYPE_CHECKING:
    from scaletui.core.config import Sweep
    from scaletui.core.rows import RunSummary
    from scaletui.core.specs import RunSpec
    from scaletui.services.runner import RunEvent, SweepResult


@click.command(name="run")
@click.argument("file", default=DEFAULT_SWEEP_FILE, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--headless", is_flag=True, help="Train without the app: progress on the terminal, summary at the end.")
@click.option(
    "--db", "db", type=click.Path(dir_okay=False, path_type=Path), help="Database file (overrides experiment.db)."
)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (overrides experiment.workers).")
@click.option("--fresh", is_flag=True, help="Forget this sweep's earlier runs and checkpoints and start over.")
@click.option("--dry-run", is_flag=True, help="Validate FILE and print the expanded sweep without training.")
@click.option("--executor", type=click.Choice(ExecutorKind.choices()),
              help="Where runs train: local worker processes or a Ray cluster (overrides experiment.executor).")
@click.option("--ray-address", metavar="ADDR",
              help='Join the Ray cluster at ADDR ("auto" or host:port; implies --executor ray).')
def run_command(file: Path, headless: bool, db: Path | None, workers: int | None, fresh: bool, dry_run: bool,
                executor: str | None, ray_address: str | None) -> None:
    """Train the sweep in FILE (resuming what an earlier run left unfinished)."""
    if dry_run:  # a plan needs no data on disk: say what a real run needs instead of refusing
        print_dry_run(_with_executor(load_sweep_or_fail(file, db, workers, check_data=False), executor, ray_address))
        return
    sweep = _with_executor(load_sweep_or_fail(file, db, workers), executor, ray_address)
    if not headless:
        run_args = ((("--workers", str(workers)) if workers else ()) + (("--fresh",) if fresh else ())
                    + (("--executor", executor) if executor else ())
                    + (("--ray-address", ray_address) if ray_address else ()))
        from scaletui.cli.app import open_app

        open_app(sweep.db, sweep, start=True, run_args=run_args)
    check_db_usable(sweep.db, create=True)
    result = run_headless(sweep, fresh)
    print_summary(sweep)
    if not result.interrupted:
        from scaletui.cli.fit import print_sweep_fit

        print_sweep_fit(sweep.db, sweep.name)
    sys.exit(EXIT_STOPPED if result.interrupted else result.exit_code)


def _with_executor(sweep: Sweep, executor: str | None, ray_address: str | None) -> Sweep:
    """The sweep with --executor / --ray-address applied, or their one-line error and exit 2."""
    from scaletui.core.config import ConfigError, with_executor

    try:
        return with_executor(sweep, executor, ray_address)
    except ConfigError as e:
        fail(str(e))


def run_headless(sweep: Sweep, fresh: bool) -> SweepResult:
    from scaletui.core.datasets import DatasetUnavailable
    from scaletui.services.runner import ClusterUnusable, SweepBusy, run_sweep
    from scaletui.store.errors import StoreError, StoreWriteFailed

    stop = threading.Event()
    progress = _TtyProgress() if sys.stdout.isatty() else _PlainProgress()
    try:
        with _stop_on_signals(stop), progress:
            return run_sweep(
                sweep, fresh=fresh, on_event=progress.on_event, should_stop=stop.is_set, on_plan=progress.on_plan
            )
    except DatasetUnavailable as e:
        fail(f"{sweep.source.name}: data.dataset: {e}")
    except (SweepBusy, ClusterUnusable) as e:
        fail(str(e))
    except StoreWriteFailed as e:  # mid-sweep: one line, and a code of its own (runs may need a resume)
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_STORAGE)
    except StoreError as e:
        fail(str(e))


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: stop cleanly (flush, checkpoint, `interrupted`). Second: abort."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping: runs flush, checkpoint and become `interrupted` (Ctrl-C again to abort)", err=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _PlainProgress:
    """One line per event, for logs and pipes, each finished run counted against the plan (`[12/64]`)."""

    def __init__(self) -> None:
        self.to_run = 0
        self.finished = 0

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def on_plan(self, to_run: int, total: int) -> None:
        self.to_run = to_run
        earlier = f" ({total - to_run} finished earlier)" if total > to_run else ""
        click.echo(f"training {to_run} of {total} runs{earlier}")

    def on_event(self, event: RunEvent) -> None:
        if event.kind is RunEventKind.STARTED:
            resumed = f" (resumed at step {event.resumed_from})" if event.resumed_from else ""
            click.echo(f"started  {event.label} [run {event.run_id}]{resumed}")
        elif event.kind is RunEventKind.FINISHED:
            self.finished += 1
            loss = f" train_loss {event.train_loss:.4f}" if event.train_loss is not None else ""
            error = f" - {event.error}" if event.error else ""
            status = event.status.value if event.status else "?"
            click.echo(
                f"{status:<8} {event.label} [run {event.run_id}] step {event.step}{loss}{error} "
                f"[{self.finished}/{self.to_run}]"
            )


class _TtyProgress:
    """Overall progress plus one line per active run (step, loss, steps/s)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.overall = self.progress.add_task("sweep", total=None, info="")
        self.active: dict[int, Any] = {}

    def on_plan(self, to_run: int, total: int) -> None:
        info = f"{total - to_run} finished earlier" if total > to_run else ""
        self.progress.update(self.overall, total=to_run, info=info)

    def __enter__(self) -> _TtyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, event: RunEvent) -> None:
        if event.kind is RunEventKind.STARTED:
            self.active[event.run_id] = self.progress.add_task(
                event.label, total=event.steps, completed=event.step, info=""
            )
        elif event.kind is RunEventKind.PROGRESS and event.run_id in self.active:
            info = f"loss {event.train_loss:.4f}  {event.steps_per_s:.0f} steps/s"
            self.progress.update(self.active[event.run_id], completed=event.step, info=info)
        elif event.kind is RunEventKind.FINISHED:
            task = self.active.pop(event.run_id, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.overall)
            error = f" - {event.error}" if event.error else ""
            status = event.status.value if event.status else "?"
            self.progress.console.print(f"{status:<13} {event.label}{error}")


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def print_dry_run(sweep: Sweep) -> None:
    """How many runs, over which axes, and one row per run with the values that vary."""
    from rich.table import Table

    from scaletui.core.config import axis_value, unavailable_datasets

    out = console()
    axes = ", ".join(f"{k} ({len(v)})" for k, v in {**sweep.axes, **sweep.user_axes}.items())
    out.print(f"{sweep.source}: {sweep.name}: {len(sweep.runs)} runs over {axes}")
    if sweep.executor is ExecutorKind.RAY:
        cluster = f"the Ray cluster at {sweep.ray_address}" if sweep.ray_address else "a local Ray instance"
        out.print(f"database {sweep.db}, on {cluster}, threads per run: {sweep.threads_per_worker}")
    else:
        out.print(f"database {sweep.db}, {sweep.workers} workers x {sweep.threads_per_worker} threads")
    if sweep.entrypoint is not None:
        out.print(_entrypoint_plan(sweep))
        return
    table = Table("#", "key", *sweep.axes, "steps", box=None)
    for i, spec in enumerate(sweep.runs, 1):
        values = [
            f"{axis_value(spec, axis):g}" if isinstance(axis_value(spec, axis), float) else str(axis_value(spec, axis))
            for axis in sweep.axes
        ]
        table.add_row(str(i), spec.key, *values, str(spec.train.steps))
    out.print(table)
    for problem in unavailable_datasets(sweep.runs, sweep.data_dir):
        click.echo(f"warning: {sweep.source.name}: data.dataset: {problem}; a real run needs it", err=True)


def _entrypoint_plan(sweep: Sweep) -> Any:
    """One row per run of an entrypoint sweep: the key its row will have and the config its function
    gets, column by column (the varying keys, [user] ones included)."""
    from rich.table import Table

    from scaletui.services.own_records import canonical_config, own_run_key

    configs = [canonical_config(c) for c in sweep.entry_configs]
    names = [k for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1] if configs else []
    table = Table("#", "key", *names, "steps", box=None)
    for i, config in enumerate(configs, 1):
        values = [f"{v:g}" if isinstance(v, float) else str(v) for v in (config.get(k) for k in names)]
        table.add_row(str(i), own_run_key(sweep.name, config), *values, str(config.get("steps")))
    return table


def print_summary(sweep: Sweep) -> None:
    """Runs grouped by width, ranked by depth, with the loss and the rule that picked it; then the mean
    and seed spread of each size, the numbers a trend is judged by."""
    from scaletui.store.reader import Reader

    with Reader(sweep.db) as reader:
        rows = sorted(reader.runs(sweep.name), key=lambda r: (r.arch, r.width, r.depth, r.seed))
        alerts = reader.alerts(sweep.name)
        specs = {r.id: reader.run_spec(r.id) for r in rows}
    out = console()
    out.print(_runs_table(sweep, rows, alert_badges(alerts)))
    label = sweep.loss_rule.label_for(sweep.loss_metric)
    out.print(f"mean +- sd over seeds of the {label}, per size:", markup=False, highlight=False)
    out.print(_size_means_table(sweep, rows, specs))
    print_group_alerts(alerts)


def _runs_table(sweep: Sweep, rows: list[RunSummary], badges: dict[int, str]) -> Any:
    from rich.table import Table

    label = sweep.loss_rule.label_for(sweep.loss_metric)
    table = Table(title=f"{sweep.name}: loss = {label}", box=None)
    for column in (
        "width",
        "depth",
        "seed",
        "status",
        "params",
        "step",
        label,
        "best",
        "test acc",
        "alerts",
    ):
        table.add_column(column, justify="left" if column in ("status", "alerts") else "right")
    last_width = None
    for r in rows:
        if last_width is not None and r.width != last_width:
            table.add_section()
        last_width = r.width
        table.add_row(
            str(r.width),
            str(r.depth),
            str(r.seed),
            r.status.value,
            fmt(r.params, ","),
            f"{r.step or 0}/{r.steps}",
            fmt(r.loss),
            fmt(r.best_test_loss),
            fmt(r.final_test_acc, ".3f"),
            badges.get(r.id, ""),
        )
    return table


def _other_axes(sweep: Sweep) -> list[str]:
    """The sweep's axes besides width, depth and the seed: each setting gets its own row of means."""
    return [a for a in sweep.axes if a not in ("model.width", "model.depth", "train.seeds")]


def size_means(
    sweep: Sweep, rows: list[RunSummary], specs: dict[int, RunSpec | None]
) -> dict[tuple[Any, ...], list[float]]:
    """Losses of the successful runs, keyed by (width, depth, every other axis but the seed), in row order."""
    from scaletui.core.config import axis_value

    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        spec = specs.get(r.id)
        if spec is not None:
            key = (spec.model.width, spec.model.depth, *(axis_value(spec, a) for a in _other_axes(sweep)))
        else:  # a run of one's own code (train.entrypoint): its size and axes are columns of its row
            key = (r.width, r.depth, *(_row_axis_value(r, a) for a in _other_axes(sweep)))
        losses = groups.setdefault(key, [])
        if r.ok and r.loss is not None:
            losses.append(r.loss)
    return groups


def _row_axis_value(row: RunSummary, axis: str) -> Any:
    """An axis value of a run without a built-in spec, from the hyperparameter columns of its row."""
    from dataclasses import fields

    column = axis.split(".")[-1]
    return getattr(row, column) if column in {f.name for f in fields(row)} else None


def _size_means_table(sweep: Sweep, rows: list[RunSummary], specs: dict[int, RunSpec | None]) -> Any:
    """Mean +- sample sd over seeds per size (and per setting of any other axis)."""
    from statistics import fmean, stdev

    from rich.table import Table

    table = Table(box=None)
    for column in ("width", "depth", *(a.split(".")[-1] for a in _other_axes(sweep)), "seeds", "mean", "sd"):
        table.add_column(column, justify="right")
    for key, losses in size_means(sweep, rows, specs).items():
        mean = fmt(fmean(losses)) if losses else "-"
        sd = fmt(stdev(losses)) if len(losses) > 1 else "-"
        cells = ("-" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in key)
        table.add_row(*cells, str(len(losses)), mean, sd)
    return table
