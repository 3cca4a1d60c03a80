"""Command line: `scaletui run --headless`, `scaletui ls`, and (later) the app.

The CLI parses and displays; it never trains or speaks SQL itself. Heavy
imports (torch via the runner, the store) happen inside the commands that need
them, so `scaletui --help` and `scaletui ls` start fast and never import torch.

Exit codes are an API: 0 every run done or early-stopped, 1 some run failed,
diverged or was interrupted, 2 bad input (sweep file, arguments, database),
130 stopped by Ctrl-C / SIGTERM (runs are `interrupted` and resumable).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from scaletui.config import Sweep
    from scaletui.runner import SweepResult

from scaletui.config import DEFAULT_DB, DEFAULT_SWEEP_FILE as DEFAULT_SWEEP  # torch-free, no heavy imports
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130
EXIT_STORAGE = 3  # the database could not be written mid-sweep (disk full, I/O error)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: how every bad input ends."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


class _Group(click.Group):
    """Turn click's usage errors into the same one-line, exit-2 shape as every other bad input."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> NoReturn:
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx else "scaletui"
            fail(f"{command}: {e.format_message()}")
        except click.ClickException as e:
            fail(e.format_message())
        except click.Abort:
            sys.exit(EXIT_STOPPED)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scaletui")
@click.option("--db", "app_db", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Database the app opens (default: experiment.db of ./{DEFAULT_SWEEP}, else {DEFAULT_DB}).")
@click.pass_context
def main(ctx: click.Context, app_db: Path | None) -> None:
    """scaletui: scaling-law sweeps in the terminal.

    \b
    scaletui [--db PATH]             open the app (watch the database; `r` starts ./experiments.toml)
    scaletui run [FILE]              open the app and start (or resume) the sweep in FILE
    scaletui run --headless [FILE]   train a sweep without the app (default: experiments.toml)
    scaletui run --dry-run [FILE]    validate and list the expanded sweep
    scaletui ls                      list the runs in the database
    scaletui fit                     fit the scaling law of a sweep (or a CSV file) and say how well it predicts
    scaletui suggest -w W -d D       propose the learning rate for a size not yet run

    The database is --db, else experiment.db of ./experiments.toml, else runs/scaletui.db.
    """
    if ctx.invoked_subcommand is None:
        sweep_file = Path(DEFAULT_SWEEP)
        sweep = _load_sweep(sweep_file, app_db, None) if sweep_file.is_file() else None
        db = sweep.db if sweep else (app_db or Path(DEFAULT_DB))
        _open_app(db, sweep, start=False)


def resolve_db(explicit: Path | None) -> Path:
    """The database of any command: `--db`, else `./experiments.toml`'s `experiment.db`, else the default
    (`scaletui.config.find_db`); a sweep file that is not TOML is one line and exit 2."""
    from scaletui.config import ConfigError, find_db

    try:
        return find_db(explicit)
    except ConfigError as e:
        fail(str(e))


def _open_app(db: Path, sweep: Sweep | None, *, start: bool, run_args: tuple[str, ...] = ()) -> None:
    """The Textual app, imported only here: `--help`, `ls` and the headless path never load textual."""
    if db.exists():
        _check_db_usable(db, create=False, may_wait=True)
    from scaletui.tui.app import ScaleApp

    app = ScaleApp(db, sweep.source if sweep else None, experiment=sweep.name if sweep else None, start=start,
                   run_args=run_args)
    sys.exit(app.run() or 0)


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------
@main.command()
@click.argument("file", default=DEFAULT_SWEEP, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--headless", is_flag=True, help="Train without the app: progress on the terminal, summary at the end.")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path), help="Database file (overrides experiment.db).")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (overrides experiment.workers).")
@click.option("--fresh", is_flag=True, help="Forget this sweep's earlier runs and checkpoints and start over.")
@click.option("--dry-run", is_flag=True, help="Validate FILE and print the expanded sweep without training.")
def run(file: Path, headless: bool, db: Path | None, workers: int | None, fresh: bool, dry_run: bool) -> None:
    """Train the sweep in FILE (resuming what an earlier run left unfinished)."""
    if dry_run:  # a plan needs no data on disk: say what a real run needs instead of refusing
        _print_dry_run(_load_sweep(file, db, workers, check_data=False))
        return
    sweep = _load_sweep(file, db, workers)
    if not headless:
        run_args = (("--workers", str(workers)) if workers else ()) + (("--fresh",) if fresh else ())
        _open_app(sweep.db, sweep, start=True, run_args=run_args)
    _check_db_usable(sweep.db, create=True)
    result = _run_headless(sweep, fresh)
    _print_summary(sweep)
    if not result.interrupted:
        from scaletui.cli_fit import print_sweep_fit

        print_sweep_fit(sweep.db, sweep.name)
    sys.exit(EXIT_STOPPED if result.interrupted else result.exit_code)


def _load_sweep(file: Path, db: Path | None, workers: int | None, *, check_data: bool = True) -> Sweep:
    from scaletui.config import ConfigError, load_sweep

    try:
        return load_sweep(file, db=db, workers=workers, check_data=check_data)
    except ConfigError as e:
        fail(str(e))


def _check_db_usable(path: Path, *, create: bool, may_wait: bool = False) -> None:
    """Refuse a file that is not a scaletui database (or is newer) before anything is written.

    A file without tables yet (another process is creating it, or it is empty) is fine for a writer,
    which fills it, and for the app (`may_wait`), which says it is waiting; `ls` and `fit` refuse it."""
    from scaletui.store.errors import DatabaseNotReady, SchemaTooOld, StoreError
    from scaletui.store.schema import open_db

    if create:
        _check_writable(path)
    if create and not path.exists():
        return
    try:
        open_db(path, create=False, readonly=True).close()
    except DatabaseNotReady as e:
        if not (create or may_wait):
            fail(str(e))
    except SchemaTooOld:
        if not create:  # a writer migrates it; a reader cannot
            fail(f"{path}: written by an older scaletui; run a sweep on it once to upgrade it")
    except (StoreError, FileNotFoundError, PermissionError) as e:
        fail(str(e))


def _check_writable(path: Path) -> None:
    """SQLite writes the file and creates `-wal`/`-shm` files beside it: refuse a read-only place up front."""
    folder = path.parent
    if not folder.is_dir():
        fail(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{path}: read-only (scaletui writes the database file and its -wal and -shm files in {folder})")


def _run_headless(sweep: Sweep, fresh: bool) -> SweepResult:
    from scaletui.engine.data import DatasetUnavailable
    from scaletui.runner import SweepBusy, run_sweep
    from scaletui.store.errors import StoreError, StoreWriteFailed

    stop = threading.Event()
    progress = _TtyProgress() if sys.stdout.isatty() else _PlainProgress()
    try:
        with _stop_on_signals(stop), progress:
            return run_sweep(sweep, fresh=fresh, on_event=progress.on_event, should_stop=stop.is_set,
                             on_plan=progress.on_plan)
    except DatasetUnavailable as e:
        fail(f"{sweep.source.name}: data.dataset: {e}")
    except SweepBusy as e:
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

    def on_event(self, event: Any) -> None:
        if event.kind == "started":
            resumed = f" (resumed at step {event.resumed_from})" if event.resumed_from else ""
            click.echo(f"started  {event.label} [run {event.run_id}]{resumed}")
        elif event.kind == "finished":
            self.finished += 1
            loss = f" train_loss {event.train_loss:.4f}" if event.train_loss is not None else ""
            error = f" - {event.error}" if event.error else ""
            click.echo(f"{event.status.value:<8} {event.label} [run {event.run_id}] step {event.step}{loss}{error} "
                       f"[{self.finished}/{self.to_run}]")


class _TtyProgress:
    """Overall progress plus one line per active run (step, loss, steps/s)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
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

    def on_event(self, event: Any) -> None:
        if event.kind == "started":
            self.active[event.run_id] = self.progress.add_task(
                event.label, total=event.steps, completed=event.step, info=""
            )
        elif event.kind == "progress" and event.run_id in self.active:
            info = f"loss {event.train_loss:.4f}  {event.steps_per_s:.0f} steps/s"
            self.progress.update(self.active[event.run_id], completed=event.step, info=info)
        elif event.kind == "finished":
            task = self.active.pop(event.run_id, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.overall)
            error = f" - {event.error}" if event.error else ""
            self.progress.console.print(f"{event.status.value:<13} {event.label}{error}")


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def _print_dry_run(sweep: Sweep) -> None:
    """How many runs, over which axes, and one row per run with the values that vary."""
    from rich.console import Console
    from rich.table import Table

    from scaletui.config import axis_value, unavailable_datasets

    console = _console()
    axes = ", ".join(f"{k} ({len(v)})" for k, v in sweep.axes.items())
    console.print(f"{sweep.source}: {sweep.name}: {len(sweep.runs)} runs over {axes}")
    console.print(f"database {sweep.db}, {sweep.workers} workers x {sweep.threads_per_worker} threads")
    table = Table("#", "key", *sweep.axes, "steps", box=None)
    for i, spec in enumerate(sweep.runs, 1):
        values = [f"{axis_value(spec, axis):g}" if isinstance(axis_value(spec, axis), float)
                  else str(axis_value(spec, axis)) for axis in sweep.axes]
        table.add_row(str(i), spec.key, *values, str(spec.train.steps))
    console.print(table)
    for problem in unavailable_datasets(sweep.runs, sweep.data_dir):
        click.echo(f"warning: {sweep.source.name}: data.dataset: {problem}; a real run needs it", err=True)


def _console() -> Any:
    """A rich console that does not squeeze tables when writing to a pipe or a file."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_summary(sweep: Sweep) -> None:
    """Runs grouped by width, ranked by depth, with the loss and the rule that picked it; then the mean
    and seed spread of each size, the numbers a trend is judged by."""
    from scaletui.store.reader import Reader

    with Reader(sweep.db) as reader:
        rows = [r for r in reader.runs() if r["experiment"] == sweep.name]
        rows.sort(key=lambda r: (r["arch"], r["width"], r["depth"], r["seed"]))
        alerts = reader.alerts(sweep.name)
        configs = {r["id"]: reader.run_config(r["id"]) for r in rows}
    _console().print(_runs_table(sweep, rows, _alert_badges(alerts)))
    _console().print(f"mean +- sd over seeds of the {sweep.loss_rule.label}, per size:", markup=False, highlight=False)
    _console().print(_size_means_table(sweep, rows, configs))
    _print_group_alerts(alerts)


def _runs_table(sweep: Sweep, rows: list[dict[str, Any]], badges: dict[int, str]) -> Any:
    from rich.table import Table

    table = Table(title=f"{sweep.name}: loss = {sweep.loss_rule.label}", box=None)
    for column in ("width", "depth", "seed", "status", "params", "step", sweep.loss_rule.label, "best", "test acc",
                   "alerts"):
        table.add_column(column, justify="left" if column in ("status", "alerts") else "right")
    last_width = None
    for r in rows:
        if last_width is not None and r["width"] != last_width:
            table.add_section()
        last_width = r["width"]
        table.add_row(str(r["width"]), str(r["depth"]), str(r["seed"]), r["status"], _fmt(r["params"], ","),
                      f"{r['step'] or 0}/{r['steps']}", _fmt(r["loss"]), _fmt(r["best_test_loss"]),
                      _fmt(r["final_test_acc"], ".3f"), badges.get(r["id"], ""))
    return table


def size_means(sweep: Sweep, rows: list[dict[str, Any]], configs: dict[int, str | None]
               ) -> dict[tuple[Any, ...], list[float]]:
    """Losses of the successful runs, keyed by (width, depth, every other axis but the seed), in row order."""
    from scaletui.config import axis_value
    from scaletui.records import RunSpec, RunStatus

    others = [a for a in sweep.axes if a not in ("model.width", "model.depth", "train.seeds")]
    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        config = configs.get(r["id"])
        if config is None:
            continue
        spec = RunSpec.from_dict(json.loads(config))
        key = (spec.model.width, spec.model.depth, *(axis_value(spec, a) for a in others))
        losses = groups.setdefault(key, [])
        if RunStatus(r["status"]).ok and r["loss"] is not None:
            losses.append(float(r["loss"]))
    return groups


def _size_means_table(sweep: Sweep, rows: list[dict[str, Any]], configs: dict[int, str | None]) -> Any:
    """Mean +- sample sd over seeds per size (and per setting of any other axis)."""
    from statistics import fmean, stdev

    from rich.table import Table

    others = [a.split(".")[-1] for a in sweep.axes if a not in ("model.width", "model.depth", "train.seeds")]
    table = Table(box=None)
    for column in ("width", "depth", *others, "seeds", "mean", "sd"):
        table.add_column(column, justify="right")
    for key, losses in size_means(sweep, rows, configs).items():
        mean = _fmt(fmean(losses)) if losses else "-"
        sd = _fmt(stdev(losses)) if len(losses) > 1 else "-"
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in key), str(len(losses)), mean, sd)
    return table


def _alert_badges(alerts: list[dict[str, Any]]) -> dict[int, str]:
    """Per run, the kinds of its active alerts (most severe first, as the reader orders them)."""
    kinds: dict[int, list[str]] = {}
    for a in alerts:
        if a["run_id"] is not None:
            kinds.setdefault(a["run_id"], []).append(a["kind"])
    return {run_id: ", ".join(k) for run_id, k in kinds.items()}


def _print_group_alerts(alerts: list[dict[str, Any]]) -> None:
    """Alerts about groups of runs (non-monotonic scaling, seed sensitivity): one line each."""
    group = [a for a in alerts if a["run_id"] is None]
    if group:
        click.echo(f"{len(group)} alert(s) about the sweep's trend:")
    for a in group:
        click.echo(f"  {a['kind']}: {a['message']}")


# ---------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------
@main.command(name="ls")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Database (default: experiment.db of ./{DEFAULT_SWEEP}, else {DEFAULT_DB}).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of run rows, for scripts.")
def ls_command(db: Path | None, as_json: bool) -> None:
    """List the runs in the database."""
    db = resolve_db(db)
    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    _check_db_usable(db, create=False)
    from scaletui.store.reader import Reader

    reader = Reader(db)
    rows, alerts = reader.runs(), reader.alerts()
    badges = _alert_badges(alerts)
    if as_json:
        rows = [{**r, "alerts": badges.get(r["id"], "")} for r in rows]
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "experiment", "run", "status", "step", "params", "loss", "rule", "alerts", "error", box=None)
    for r in rows:
        table.add_row(str(r["id"]), r["experiment"] or "", r["label"], r["status"], f"{r['step'] or 0}/{r['steps']}",
                      _fmt(r["params"], ","), _fmt(r["loss"]), r["loss_rule"] or "", badges.get(r["id"], ""),
                      (r["error"] or "")[:60])
    _console().print(table)
    _print_group_alerts(alerts)


from scaletui.cli_fit import fit_command  # noqa: E402 - registered last: it needs `main`'s helpers

main.add_command(fit_command, name="fit")

from scaletui.cli_suggest import suggest_command  # noqa: E402 - registered last, like fit

main.add_command(suggest_command, name="suggest")
