"""What every command shares: how bad input ends, where the database is, how tables are printed.

Exit codes are an API (documented in the README): 0 every run done or early-stopped; 1 some run failed,
diverged or was interrupted; 2 bad input, always one line on stderr naming the file and key; 3 the
database could not be written mid-sweep; 130 stopped by Ctrl-C or SIGTERM (runs are resumable).
Nothing here imports torch, textual, numpy or the store at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from scaletui.core.config import Sweep
    from scaletui.core.rows import AlertRow

EXIT_OK = 0
EXIT_RUNS_NOT_OK = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3  # the database could not be written mid-sweep (disk full, I/O error)
EXIT_STOPPED = 130


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: how every bad input ends."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def resolve_db(explicit: Path | None) -> Path:
    """The database of any command: `--db`, else `./experiments.toml`'s `experiment.db`, else the default
    (`scaletui.core.config.find_db`); a sweep file that is not TOML is one line and exit 2."""
    from scaletui.core.config import ConfigError, find_db

    try:
        return find_db(explicit)
    except ConfigError as e:
        fail(str(e))


def check_db_usable(path: Path, *, create: bool, may_wait: bool = False) -> None:
    """Refuse a file that is not a scaletui database (or is newer) before anything is written.

    A file without tables yet (another process is creating it, or it is empty) is fine for a writer,
    which fills it, and for the app (`may_wait`), which says it is waiting; `ls` and `fit` refuse it."""
    from scaletui.store.errors import DatabaseNotReady, SchemaTooOld, StoreError
    from scaletui.store.schema import open_db

    if create:
        check_writable(path)
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


def check_writable(path: Path) -> None:
    """SQLite writes the file and creates `-wal`/`-shm` files beside it: refuse a read-only place up front."""
    folder = path.parent
    if not folder.is_dir():
        fail(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{path}: read-only (scaletui writes the database file and its -wal and -shm files in {folder})")


def console() -> Any:
    """A rich console that does not squeeze tables when writing to a pipe or a file."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def load_sweep_or_fail(file: Path, db: Path | None = None, workers: int | None = None, *,
                       check_data: bool = True) -> Sweep:
    """The validated sweep in `file`, or its one-line error and exit 2."""
    from scaletui.core.config import ConfigError, load_sweep

    try:
        return load_sweep(file, db=db, workers=workers, check_data=check_data)
    except ConfigError as e:
        fail(str(e))


def alert_badges(alerts: Sequence[AlertRow]) -> dict[int, str]:
    """Per run, the kinds of its active alerts (most severe first, as the reader orders them)."""
    kinds: dict[int, list[str]] = {}
    for a in alerts:
        if a.run_id is not None:
            kinds.setdefault(a.run_id, []).append(a.kind)
    return {run_id: ", ".join(k) for run_id, k in kinds.items()}


def print_group_alerts(alerts: Sequence[AlertRow]) -> None:
    """Alerts about groups of runs (non-monotonic scaling, seed sensitivity): one line each."""
    group = [a for a in alerts if a.run_id is None]
    if group:
        click.echo(f"{len(group)} alert(s) about the sweep's trend:")
    for a in group:
        click.echo(f"  {a.kind}: {a.message}")
