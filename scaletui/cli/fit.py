"""`scaletui fit`: fit the scaling law of a sweep (or of any CSV file) from the terminal.

A separate module from cli.py so the fit command's options, tables and JSON live together;
cli.py registers it. Like the rest of the CLI it parses and displays only: the fitting is
`scaletui.fitting`, the storage `scaletui.store`, the figure `scaletui.plotting`. Nothing here
imports torch, and matplotlib is only imported when `--png` asks for a figure.

Also home of `print_sweep_fit`, the law printed at the end of `scaletui run --headless`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from scaletui.fitting import FitReport, FitSpec

# The choices, spelled out so that registering the command (at every `scaletui` start) does not
# import numpy and scipy; tests check they equal scaletui.fitting.X_CHOICES / FORMS / LossRule.
X_CHOICES = ("params", "width", "depth", "flops", "examples", "steps")
FORM_CHOICES = ("offset", "power")
LOSS_RULES = ("final", "best", "smoothed")
HEADLESS_BOOTSTRAP = 200  # the closing fit of a headless run: quick, still an honest interval
MIN_SIZES_FOR_SWEEP_FIT = 3


def _cli() -> Any:
    """scaletui.cli, imported when first needed: it registers this module's command at import
    time, so importing it here at module level would be circular."""
    import scaletui.cli

    return scaletui.cli


def fail(message: str) -> NoReturn:
    _cli().fail(message)
    raise AssertionError("unreachable")  # fail() exits


def _check_db_usable(path: Path, *, create: bool) -> None:
    _cli()._check_db_usable(path, create=create)


def _console() -> Any:
    return _cli()._console()


@click.command(name="fit")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help="Database to read runs from and store fits in (default: experiment.db of ./experiments.toml, "
                   "else runs/scaletui.db).")
@click.option("--experiment", help="Experiment name (default: the only, or most recently updated, one).")
@click.option("--x", "x", type=click.Choice(X_CHOICES), default="params", show_default=True,
              help="What the law is fitted against (flops = forward FLOPs/example x steps x batch size).")
@click.option("--group-by", help="One curve per value of this config key (e.g. depth when --x width); with --csv, "
                                 "of this column, or of several joined by commas (Task,Model).")
@click.option("--loss-rule", type=click.Choice(LOSS_RULES),
              help="Which number is the loss of a run (default: the experiment's rule).")
@click.option("--form", type=click.Choice(FORM_CHOICES), default="offset", show_default=True,
              help="offset: E + A*x^-alpha; power: A*x^-alpha.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples over runs (0: no intervals).")
@click.option("--level", type=click.FloatRange(0.5, 0.999), default=0.9, show_default=True,
              help="Confidence level of intervals and band.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (list of fits) for scripts.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write a log-log plot to this PNG file.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Fit columns of this CSV file instead of a sweep.")
@click.option("--csv-x", help="CSV column for x (N for the two-variable law).")
@click.option("--csv-d", help="CSV column for D: fits L(N, D) = E + A/N^alpha + B/D^beta.")
@click.option("--csv-compute", help="CSV column for compute C: D = C / (6N), two-variable law.")
@click.option("--csv-y", help="CSV column for the loss.")
@click.option("--csv-group", help="CSV column whose values the bootstrap resamples (a run or seed column: its rows "
                                  "are drawn together) [default: each row].")
@click.option("--drop-highest", type=click.IntRange(min=0), default=0, show_default=True,
              help="CSV: drop this many highest-loss rows (the Chinchilla replication drops 5).")
@click.option("--no-save", is_flag=True, help="Do not store the fit in the fits table.")
def fit_command(db: Path | None, experiment: str | None, x: str, group_by: str | None, loss_rule: str | None, form: str,
                n_bootstrap: int, level: float, seed: int, as_json: bool, png: Path | None, csv_path: Path | None,
                csv_x: str | None, csv_d: str | None, csv_compute: str | None, csv_y: str | None,
                csv_group: str | None, drop_highest: int, no_save: bool) -> None:
    """Fit a scaling law with intervals, held-out error and stability, and store it."""
    from scaletui.fitting import FORMS, FitInputError, FitSpec
    from scaletui.records import LossRule

    csv_only = {"--csv-x": csv_x, "--csv-y": csv_y, "--csv-d": csv_d, "--csv-compute": csv_compute,
                "--csv-group": csv_group, "--drop-highest": drop_highest or None}
    given = [flag for flag, value in csv_only.items() if value is not None]
    if csv_path is None and given:  # a sweep's fit would silently ignore them
        fail(f"{', '.join(given)}: only with --csv FILE")
    db = _cli().resolve_db(db)
    spec = FitSpec(x=x, group_by=group_by, loss_rule=LossRule(loss_rule) if loss_rule else None, form=FORMS[form],
                   n_bootstrap=n_bootstrap, level=level, seed=seed)
    try:
        if csv_path is not None:
            columns = CsvColumns(csv_x, csv_y, csv_d, csv_compute, csv_group)
            reports, skipped = _fit_csv(csv_path, columns, drop_highest, spec, db=None if no_save else db)
        else:
            reports, skipped = _fit_db(db, experiment, spec)
    except FitInputError as exc:
        fail(str(exc))
    not_stored = None
    if not no_save:
        reports, not_stored = _save(db, reports)
    _show(reports, skipped, as_json)
    if png is not None:
        _write_png(reports, png, announce=not as_json)
    if not_stored is not None:  # after the result: the law was fitted and shown, only keeping it failed
        hint = "; --db PATH stores it elsewhere" if csv_path is not None else ""
        click.echo(f"note: fit not stored: {not_stored}{hint}", err=True)


def _show(reports: list[FitReport], skipped: Sequence[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"fits": [r.to_json() for r in reports], "skipped": list(skipped)}, indent=2))
    else:
        _print_reports(reports, skipped)


def _fit_db(db: Path, experiment: str | None, spec: FitSpec) -> tuple[list[FitReport], Sequence[str]]:
    from scaletui.fitting import fit_experiment

    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    _check_db_usable(db, create=False)
    result = fit_experiment(db, experiment, spec)
    return list(result.reports), result.skipped


@dataclass(frozen=True)
class CsvColumns:
    """The --csv-* options: which columns are x (or N), the loss, D or compute, the resampling unit."""

    x: str | None
    y: str | None
    d: str | None
    compute: str | None
    unit: str | None


def _fit_csv(path: Path, columns: CsvColumns, drop: int, spec: FitSpec,
             db: Path | None) -> tuple[list[FitReport], Sequence[str]]:
    """Check the options (and that `db`, where the fit will be stored, is no foreign file), then fit."""
    from scaletui.fitting import FORMS, fit_csv

    c = columns
    if c.x is None or c.y is None:
        fail(f"{path}: --csv needs --csv-x COLUMN and --csv-y COLUMN")
    if c.d is not None and c.compute is not None:
        fail(f"{path}: give one of --csv-d and --csv-compute, not both")
    if spec.form is FORMS["power"] and (c.d is not None or c.compute is not None):
        two = "--csv-d" if c.d is not None else "--csv-compute"
        fail(f"{path}: --form power fits one variable; with {two} the law is E + A/N^alpha + B/D^beta "
             "(drop --form)")
    if not path.is_file():
        fail(f"{path}: no such file")
    if db is not None:
        _refuse_foreign_db(db)
    result = fit_csv(path, x=c.x, y=c.y, d=c.d, compute=c.compute, unit=c.unit, drop_highest=drop, spec=spec)
    return list(result.reports), result.skipped


def _refuse_foreign_db(db: Path) -> None:
    """A --db that names some other file is bad input: said before the fit, not after it. A database
    that merely cannot be written is noted after the fit instead (see `_save`)."""
    from scaletui.store.errors import NotAScaletuiDatabase, SchemaTooNew, StoreError
    from scaletui.store.schema import open_db

    if not db.is_file() or db.stat().st_size == 0:  # missing or empty: storing creates it
        return
    try:
        open_db(db, create=False, readonly=True).close()
    except (NotAScaletuiDatabase, SchemaTooNew) as exc:
        fail(str(exc))
    except (StoreError, OSError, sqlite3.Error):  # older schema (the writer upgrades it), unreadable: `_save`
        pass


def _save(db: Path, reports: list[FitReport]) -> tuple[list[FitReport], str | None]:
    """Store the fits, creating the database and its folder when they do not exist.

    Returns the reports with their fit ids, or unchanged with one line saying why they could not be
    stored (a folder that cannot be created, a read-only place, a busy or broken database): the fit
    itself succeeded, so that is a note, not a failure.
    """
    from scaletui.fitting import save_reports
    from scaletui.store.errors import StoreError, StoreWriteFailed

    folder = db.parent
    if folder.exists() and not folder.is_dir():
        return reports, f"{db}: {folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return save_reports(db, reports), None
    except StoreWriteFailed as exc:
        return reports, f"{db}: cannot write the database ({exc.reason})"
    except (StoreError, OSError, sqlite3.Error) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return reports, text if str(db) in text else f"{db}: {text}"


def _write_png(reports: list[FitReport], png: Path, *, announce: bool) -> None:
    from scaletui.plotting import write_png

    try:
        write_png(reports, png)
    except OSError as exc:
        fail(f"{png}: cannot write the plot ({exc.strerror or exc})")
    if announce:
        _console().print(f"plot written to {png}", markup=False, highlight=False)


# ----------------------------------------------------------------------------- tables


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.4g}"  # NaN != NaN


def _params_table(report: FitReport) -> Any:
    from rich.table import Table

    from scaletui.plotting import law_text

    boot = report.boot
    level = f"{boot.level:.0%} interval" if boot else "interval"
    table = Table("parameter", "value", level, "std err", title=law_text(report), title_justify="left", box=None)
    for name, value in report.fit.params.items():
        lo, hi = boot.intervals[name] if boot else (float("nan"), float("nan"))
        se = boot.std_errors[name] if boot else float("nan")
        table.add_row(name, _num(value), f"[{_num(lo)}, {_num(hi)}]" if boot else "-", _num(se))
    return table


def _heading(r: FitReport) -> str:
    what = f"{r.source}" + (f" ({r.group})" if r.group else "")
    rule = f"loss = {r.loss_label}" if r.loss_label else "loss from CSV"
    diverged = f", {r.n_diverged} diverged excluded" if r.n_diverged else ""
    unit = r.resample_unit or ("runs" if r.run_ids else "rows")
    boot = f", {r.boot.n_done} bootstrap resamples over {unit}" if r.boot else ""
    return f"{what}: L({r.x_name}) = {r.form.value}; {rule}; {r.fit.n_points} points, {r.n_sizes} sizes{diverged}{boot}"


def report_lines(r: FitReport) -> list[str]:
    """Held-out errors, alpha stability, warnings and where the fit was stored, as plain lines."""
    from scaletui.fitting import describe_heldout, describe_stability

    lines = [f"held-out: {line}" for line in describe_heldout(r.check)]
    if r.form.n_vars == 1 and r.loss_rule is not None:
        lines.append(f"alpha stability: {describe_stability(r.stability)}")
    lines += [f"warning: {w}" for w in r.warnings]
    if r.fit_id is not None:
        lines.append(f"stored as fit #{r.fit_id}")
    return lines


def _print_reports(reports: Sequence[FitReport], skipped: Sequence[str]) -> None:
    console = _console()
    for r in reports:
        console.print(_heading(r), markup=False, highlight=False)
        console.print(_params_table(r))
        for line in report_lines(r):
            console.print(line, markup=False, highlight=False)
        console.print()
    for line in skipped:
        console.print(f"skipped: {line}", markup=False, highlight=False)


# ----------------------------------------------------------------------------- after a headless run


def _finished_sizes(db: Path, experiment: str) -> int:
    from scaletui.store.reader import Reader

    with Reader(db) as reader:
        rows = reader.runs(experiment)
    return len({r["params"] for r in rows if r["status"] in ("done", "early_stopped") and r["params"]})


def print_sweep_fit(db: Path, experiment: str) -> None:
    """The sweep's law against params, after the summary table of `scaletui run --headless`.

    Only when at least 3 sizes finished; stored in the fits table like any other fit. A fit
    that fails prints one warning line: the run's exit code describes the runs, not the fit.
    """
    from scaletui.fitting import FitSpec, fit_experiment, save_reports

    try:
        if _finished_sizes(db, experiment) < MIN_SIZES_FOR_SWEEP_FIT:
            return
        result = fit_experiment(db, experiment, FitSpec(x="params", n_bootstrap=HEADLESS_BOOTSTRAP))
        _print_reports(save_reports(db, result.reports), result.skipped)
    except Exception as exc:  # noqa: BLE001 - a fit must never change a finished sweep's exit code
        click.echo(f"warning: fit skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
