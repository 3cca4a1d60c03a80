"""`scaletui suggest --width W --depth D`: the learning rate for a size not yet run, and a sweep to run it.

A separate module from cli.py, registered there; it parses and prints only (the work is in
`scaletui.suggest`). Registering it at every `scaletui` start imports only click: numpy, the store
and the configurator are imported when the command runs, and torch never is.

`--append FILE` writes FILE as a complete one-size sweep (the config of the experiment's best run, at the
target width and depth, with the proposed lr and lr_scaling = "none", over every seed the experiment ran),
in the same database, as its own experiment `<experiment>-suggested`. `scaletui run FILE` trains it. FILE must not exist:
TOML cannot hold a second [model] table, so appending to a sweep file would only produce an invalid one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

RULE_CHOICES = ("auto", "power_law", "sqrt_params", "width")  # = configurator.RULES (checked by a test)


def _cli() -> Any:
    """scaletui.cli, imported when first needed (it imports this module to register the command)."""
    import scaletui.cli

    return scaletui.cli


def fail(message: str) -> NoReturn:
    _cli().fail(message)
    raise AssertionError("unreachable")  # fail() exits


@click.command(name="suggest")
@click.option("--width", "-w", type=click.IntRange(min=1), required=True, help="Width of the model to propose for.")
@click.option("--depth", "-d", type=click.IntRange(min=1), required=True, help="Depth of the model to propose for.")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help="Database with the finished runs to learn from (default: experiment.db of ./experiments.toml, "
                   "else runs/scaletui.db).")
@click.option("--experiment", help="Experiment to learn from (default: the latest one with finished runs).")
@click.option("--rule", type=click.Choice(RULE_CHOICES), default="auto", show_default=True,
              help="auto = power-law fit with >= 3 lr-swept sizes, else the sqrt-params rule.")
@click.option("--append", "append_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a runnable sweep file for the proposed size, with the experiment's seeds (must not exist yet).")
def suggest_command(width: int, depth: int, db: Path | None, experiment: str | None, rule: str,
                    append_to: Path | None) -> None:
    """Propose the learning rate for a WIDTH x DEPTH model from the lr sweeps already run."""
    db = _cli().resolve_db(db)
    if append_to is not None and append_to.exists():
        fail(f"{append_to}: already exists; --append writes a new sweep file (a TOML file cannot take a "
             "second [model] table)")
    if db.exists():
        _cli()._check_db_usable(db, create=False)
    s = _suggestion(db, experiment, width, depth, rule)
    _print(s)
    if append_to is not None:
        _write_sweep(s, db, append_to)


def _suggestion(db: Path, experiment: str | None, width: int, depth: int, rule: str) -> Any:
    from scaletui.suggest import SuggestError, suggestion

    try:
        return suggestion(db, experiment, width, depth, rule=rule)
    except (SuggestError, ValueError) as e:
        fail(str(e))


def _print(s: Any) -> None:
    p = s.proposal
    source = f"experiment {s.experiment!r} ({s.context})" if s.experiment else f"{s.context}"
    click.echo(f"method:       {p.rule}")
    click.echo(f"confidence:   {p.confidence}")
    click.echo(f"predicted lr: {p.lr:.3g} for w{s.width} d{s.depth} ({p.target_params:,} params)")
    click.echo(f"from:         {source}")
    click.echo(f"why:          {p.note}")
    for b in p.best_lrs:
        edge = " (at the edge of its sweep)" if b.at_edge else ""
        click.echo(f"  swept w{b.width} d{b.depth}: {b.params:,} params, best lr {b.lr:.3g} over {b.n_lrs} rates, "
                   f"loss {b.loss:.4g}{edge}")
    click.echo("")
    click.echo(p.toml_fragment(s.width, s.depth, arch=s.base.model.arch), nl=False)


def _write_sweep(s: Any, db: Path, path: Path) -> None:
    from scaletui.suggest import sweep_file_text

    name = f"{s.experiment or 'suggested'}-suggested"
    try:
        path.write_text(sweep_file_text(s, name=name, db=db.resolve()), encoding="utf-8")
    except OSError as e:
        fail(f"{path}: cannot write: {e}")
    click.echo(f"\nwrote {path}: `scaletui run --headless {path}` trains this run as experiment {name!r}")
