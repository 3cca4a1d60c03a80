"""The `scaletui` command group: the app when no command is given, and every command registered once.

The commands live one per module (run, ls, fit, suggest) and share `scaletui.cli.common`; this module
only assembles them, so nothing imports back up into it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from scaletui.cli.common import EXIT_STOPPED, fail, load_sweep_or_fail, resolve_db
from scaletui.cli.export import export_command
from scaletui.cli.fit import fit_command
from scaletui.cli.ls import ls_command
from scaletui.cli.predict import predict_command
from scaletui.cli.run import run_command
from scaletui.cli.suggest import suggest_command
from scaletui.core.vocabulary import DEFAULT_DB, DEFAULT_SWEEP_FILE


class _Group(click.Group):
    """Turn click's usage errors into the same one-line, exit-2 shape as every other bad input."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **kwargs: Any) -> NoReturn:  # always exits, with the documented codes
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
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
              help=f"Database the app opens (default: experiment.db of ./{DEFAULT_SWEEP_FILE}, else {DEFAULT_DB}).")
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
    scaletui predict -w W -d D       record the law's prediction for a size not yet run; scored when it is
    scaletui suggest -w W -d D       propose the learning rate for a size not yet run
    scaletui export OUT              write runs, metrics, layer stats or fits to CSV or Parquet

    The database is --db, else experiment.db of ./experiments.toml, else runs/scaletui.db.
    """
    if ctx.invoked_subcommand is None:
        from scaletui.cli.app import open_app

        sweep_file = Path(DEFAULT_SWEEP_FILE)
        sweep = load_sweep_or_fail(sweep_file, app_db) if sweep_file.is_file() else None
        open_app(sweep.db if sweep else resolve_db(app_db), sweep, start=False)


for command in (run_command, ls_command, fit_command, predict_command, suggest_command, export_command):
    main.add_command(command)
