"""`scaletui fit`: fit the scaling law of a sweep (or of any CSV file) from the terminal.

A separate module from cli.py so the fit command's options, tables and JSON live together;
cli.py registers it. Like the rest of the CLI it parses and displays only: the fitting is
`scaletui.fitting`, the storage `scaletui.store`, the figure `scaletui.plotting`. Nothing here
imports torch, and matplotlib is only imported when `--png` asks for a figure.

Also home of `print_sweep_fit`, the law printed at the end of `scaletui run --headless`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
              help="Database to read runs from and store fits in [default: runs/scaletui.db].")
@click.option("--experiment", help="Experiment name (default: the only, or most recently updated, one).")
@click.option("--x", "x", type=click.Choice(X_CHOICES), default="params", show_default=True,
              help="What the law is fitted against (flops = forward FLOPs/example x steps x batch size).")
@click.option("--group-by", help="One curve per value of this config key (e.g. depth when --x width).")
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
@click.option("--drop-highest", type=click.IntRange(min=0), default=0, show_default=True,
              help="CSV: drop this many highest-loss rows (the Chinchilla replication drops 5).")
@click.option("--no-save", is_flag=True, help="Do not store the fit in the fits table.")
def fit_command(db: Path | None, experiment: str | None, x: str, group_by: str | None, loss_rule: str | None, form: str,
                n_bootstrap: int, level: float, seed: int, as_json: bool, png: Path | None, csv_path: Path | None,
                csv_x: str | None, csv_d: str | None, csv_compute: str | None, csv_y: str | None,
                drop_highest: int, no_save: bool) -> None:
    """Fit a scaling law with intervals, held-out error and stability, and store it."""
    from scaletui.fitting import FORMS, FitInputError, FitSpec
    from scaletui.records import LossRule

    db = db if db is not None else Path(_cli().DEFAULT_DB)
    spec = FitSpec(x=x, group_by=group_by, loss_rule=LossRule(loss_rule) if loss_rule else None, form=FORMS[form],
                   n_bootstrap=n_bootstrap, level=level, seed=seed)
    try:
        if csv_path is not None:
            reports, skipped = [_fit_csv(csv_path, csv_x, csv_d, csv_compute, csv_y, drop_highest, spec)], ()
        else:
            reports, skipped = _fit_db(db, experiment, spec)
    except FitInputError as exc:
        fail(str(exc))
    if not no_save:
        reports = _save(db, reports, create=csv_path is not None)
    if png is not None:
        _write_png(reports, png)
    if as_json:
        click.echo(json.dumps({"fits": [r.to_json() for r in reports], "skipped": list(skipped)}, indent=2))
    else:
        _print_reports(reports, skipped, png)


def _fit_db(db: Path, experiment: str | None, spec: FitSpec) -> tuple[list[FitReport], Sequence[str]]:
    from scaletui.fitting import fit_experiment

    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    _check_db_usable(db, create=False)
    result = fit_experiment(db, experiment, spec)
    return list(result.reports), result.skipped


def _fit_csv(path: Path, x: str | None, d: str | None, compute: str | None, y: str | None, drop: int,
             spec: FitSpec) -> FitReport:
    from scaletui.fitting import fit_csv

    if x is None or y is None:
        fail(f"{path}: --csv needs --csv-x COLUMN and --csv-y COLUMN")
    if d is not None and compute is not None:
        fail(f"{path}: give one of --csv-d and --csv-compute, not both")
    if not path.is_file():
        fail(f"{path}: no such file")
    return fit_csv(path, x=x, y=y, d=d, compute=compute, drop_highest=drop, spec=spec)


def _save(db: Path, reports: list[FitReport], *, create: bool) -> list[FitReport]:
    """Store the fits; a CSV fit may create the database (and its folder)."""
    from scaletui.fitting import save_reports

    if create:
        _check_db_usable(db, create=True)
        db.parent.mkdir(parents=True, exist_ok=True)
    return save_reports(db, reports)


def _write_png(reports: list[FitReport], png: Path) -> None:
    from scaletui.plotting import write_png

    try:
        write_png(reports, png)
    except OSError as exc:
        fail(f"{png}: cannot write the plot ({exc.strerror or exc})")


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
    unit = "runs" if r.run_ids else "rows"
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


def _print_reports(reports: Sequence[FitReport], skipped: Sequence[str], png: Path | None) -> None:
    console = _console()
    for r in reports:
        console.print(_heading(r), markup=False, highlight=False)
        console.print(_params_table(r))
        for line in report_lines(r):
            console.print(line, markup=False, highlight=False)
        console.print()
    for line in skipped:
        console.print(f"skipped: {line}", markup=False, highlight=False)
    if png is not None:
        console.print(f"plot written to {png}", markup=False, highlight=False)


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
        _print_reports(save_reports(db, result.reports), result.skipped, None)
    except Exception as exc:  # noqa: BLE001 - a fit must never change a finished sweep's exit code
        click.echo(f"warning: fit skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
