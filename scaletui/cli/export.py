"""`scaletui export`: runs, metrics, layer statistics or fits of a database as one CSV or Parquet file."""

from __future__ import annotations

from pathlib import Path

import click

from scaletui.cli.common import check_db_usable, fail, resolve_db
from scaletui.core.vocabulary import DEFAULT_DB, DEFAULT_SWEEP_FILE, ExportFormat, ExportWhat


@click.command(name="export")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Database (default: experiment.db of ./{DEFAULT_SWEEP_FILE}, else {DEFAULT_DB}).")
@click.option("--experiment", default=None, help="Only this experiment's rows (default: every experiment).")
@click.option("--format", "fmt", type=click.Choice(ExportFormat.choices()), default=None,
              help="csv or parquet (default: parquet when OUT ends in .parquet or .pq, else csv).")
@click.option("--what", type=click.Choice(ExportWhat.choices()), default=ExportWhat.RUNS.value, show_default=True,
              help="Which records: one row per run, per (run, step, metric), per (run, step, layer), per fit.")
@click.argument("out", type=click.Path(path_type=Path))
def export_command(db: Path | None, experiment: str | None, fmt: str | None, what: str, out: Path) -> None:
    """Write a database's runs, metrics, layer statistics or fits to OUT (CSV or Parquet)."""
    db = resolve_db(db)
    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    check_db_usable(db, create=False)
    from scaletui.services.export import ExportError, export, format_for

    try:
        result = export(db, out, what, format_for(out, fmt), experiment)
    except ExportError as e:
        fail(str(e))
    click.echo(f"wrote {result.rows:,} {result.what.value} rows ({result.columns} columns) to {result.path} "
               f"as {result.format.value}")
