"""`scaletui ls`: the runs of a database, their status, loss and alerts (`--json` for scripts)."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaletui.cli.common import alert_badges, check_db_usable, console, fail, fmt, print_group_alerts, resolve_db
from scaletui.core.vocabulary import DEFAULT_DB, DEFAULT_SWEEP_FILE

if TYPE_CHECKING:
    from scaletui.core.rows import RunSummary


@click.command(name="ls")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Database (default: experiment.db of ./{DEFAULT_SWEEP_FILE}, else {DEFAULT_DB}).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of run rows, for scripts.")
def ls_command(db: Path | None, as_json: bool) -> None:
    """List the runs in the database."""
    db = resolve_db(db)
    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    check_db_usable(db, create=False)
    from scaletui.store.reader import Reader

    with Reader(db) as reader:
        rows, alerts = reader.runs(), reader.alerts()
    badges = alert_badges(alerts)
    if as_json:
        click.echo(json.dumps([{**run_json(r), "alerts": badges.get(r.id, "")} for r in rows], indent=2))
        return
    from rich.table import Table

    table = Table("id", "experiment", "run", "status", "step", "params", "loss", "rule", "alerts", "error", box=None)
    for r in rows:
        table.add_row(str(r.id), r.experiment or "", r.label, r.status.value, f"{r.step or 0}/{r.steps}",
                      fmt(r.params, ","), fmt(r.loss), r.loss_rule.value if r.loss_rule else "",
                      badges.get(r.id, ""), (r.error or "")[:60])
    console().print(table)
    print_group_alerts(alerts)


def run_json(row: RunSummary) -> dict[str, Any]:
    """A run row as plain JSON values (the `--json` output is an API: one object per `run_summary` row)."""
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(row).items()}
