"""`scaletui fit`: fit the scaling law of a sweep (or of any CSV file) from the terminal.

A separate module from cli.py so the fit command's options, tables and JSON live together;
cli.py registers it. Like the rest of the CLI it parses and displays only: the fitting is
`scaletui.services.fitting`, the storage `scaletui.store`, the figure `scaletui.services.plotting`. Nothing here
imports torch, and matplotlib is only imported when `--png` asks for a figure.

Also home of `print_sweep_fit`, the law printed at the end of `scaletui run --headless`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scaletui.cli.common import check_db_usable, console, fail, resolve_db

if TYPE_CHECKING:
    from scaletui.services.fitting import FitReport, FitSpec

# The choices, spelled out so that registering the command (at every `scaletui` start) does not
# import numpy and scipy; tests check they equal scaletui.services.fitting.X_CHOICES / FORMS / LossRule
# and the loss spaces of scaletui.analysis.solve.
X_CHOICES = ("params", "width", "depth", "flops", "examples", "steps")
FORM_CHOICES = ("auto", "M1", "M2", "M3", "M4", "BNSL1", "BNSL2", "CHINCHILLA", "offset", "power")
LOSS_RULES = ("final", "best", "smoothed")
LOSS_SPACES = ("auto", "log", "log1p", "log_excess")
HEADLESS_BOOTSTRAP = 200  # the closing fit of a headless run: quick, still an honest interval
MIN_SIZES_FOR_SWEEP_FIT = 3


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
@click.option("--form", type=click.Choice(FORM_CHOICES, case_sensitive=False), default="auto", show_default=True,
              help="auto: fit every form and keep the best predictor of held-out sizes; or force one: M1 A*x^-alpha, "
                   "M2 E + A*x^-alpha, M3, M4, BNSL1, BNSL2, CHINCHILLA (N and D; offset = M2, power = M1).")
@click.option("--predict", "predict_at", multiple=True, metavar="X|N,D",
              help="Predict the loss, with its band, at this size (N,D for the two-variable law); repeatable.")
@click.option("--upper-bound", type=click.FloatRange(min=0, min_open=True),
              help="The metric's known maximum (an error rate: 1): only forms that stay below it (M4) are fitted.")
@click.option("--loss-space", type=click.Choice(LOSS_SPACES), default="auto", show_default=True,
              help="Residuals minimised: log loss; log(1 + loss) (BNSL's own code); log of the loss above the "
                   "floor (M2/M4's own code); auto: log, and the chosen form also on log(1 + loss) if that "
                   "predicts the held-out sizes better.")
@click.option("--delta", type=click.FloatRange(min=0, min_open=True),
              help="Huber threshold on the residuals (inf: least squares) [default: 0.01; 1e-3 for N and D].")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples, each drawing whole sizes (all seeds of a size together; 0: no intervals).")
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
@click.option("--strategies", is_flag=True,
              help="Compare scaling strategies of a width x depth sweep (width at each depth, depth at each width, "
                   "both along the diagonal or --path): the law along each against params and FLOPs, and which "
                   "reaches --target-loss for the fewest FLOPs (not stored).")
@click.option("--target-loss", type=click.FloatRange(min=0, min_open=True),
              help="With --strategies: the loss to reach [default: the lowest loss every strategy reached].")
@click.option("--path", "path_text", metavar="W,D;W,D;...",
              help="With --strategies: grow both along these sizes (width,depth pairs) instead of the diagonal.")
@click.option("--regimes", is_flag=True,
              help="Fit the law at every training length (each shared evaluation step, or each value of a swept "
                   "`steps`): how alpha and the ranking of sizes move, and which sizes cross (not stored).")
@click.option("--frontier", is_flag=True,
              help="The compute-optimal frontier of a sweep with a data axis (train.steps): fit L(N, D) = "
                   "E + A/N^alpha + B/D^beta (N = params, D = examples seen) and report N_opt(C), D_opt(C) with "
                   "intervals (Hoffmann et al. 2022, C = k N D), the run closest to optimal, and a terminal plot "
                   "(not stored).")
@click.option("--budget", "budgets", multiple=True, type=click.FloatRange(min=0, min_open=True), metavar="C",
              help="With --frontier: a compute budget in training FLOPs; repeatable [default: the smallest, middle "
                   "and largest run's compute, and 10x the largest].")
def fit_command(db: Path | None, experiment: str | None, x: str, group_by: str | None, loss_rule: str | None, form: str,
                predict_at: tuple[str, ...], upper_bound: float | None, loss_space: str, delta: float | None,
                n_bootstrap: int, level: float, seed: int, as_json: bool, png: Path | None, csv_path: Path | None,
                csv_x: str | None, csv_d: str | None, csv_compute: str | None, csv_y: str | None,
                csv_group: str | None, drop_highest: int, no_save: bool, strategies: bool, target_loss: float | None,
                path_text: str | None, regimes: bool, frontier: bool, budgets: tuple[float, ...]) -> None:
    """Fit a scaling law (choosing its form by held-out error), with intervals, band and checks, and store it."""
    from scaletui.core.vocabulary import LossRule
    from scaletui.services.fitting import FitInputError, FitSpec

    compare = Compare(strategies, regimes, target_loss, path_text)
    _check_frontier(frontier, budgets, compare, {
        "--csv": csv_path, "--group-by": group_by, "--predict": predict_at or None, "--upper-bound": upper_bound,
        "--x": None if x == "params" else x, "--csv-x": csv_x, "--csv-y": csv_y, "--csv-d": csv_d,
        "--csv-compute": csv_compute, "--csv-group": csv_group, "--drop-highest": drop_highest or None})
    if not frontier:
        compare.check(csv_path=csv_path, group_by=group_by, predict_at=predict_at, png=png)
    csv_only = {"--csv-x": csv_x, "--csv-y": csv_y, "--csv-d": csv_d, "--csv-compute": csv_compute,
                "--csv-group": csv_group, "--drop-highest": drop_highest or None}
    given = [flag for flag, value in csv_only.items() if value is not None]
    if csv_path is None and given:  # a sweep's fit would silently ignore them
        fail(f"{', '.join(given)}: only with --csv FILE")
    db = resolve_db(db)
    spec = FitSpec(x=x, group_by=group_by, loss_rule=LossRule(loss_rule) if loss_rule else None, form=form,
                   n_bootstrap=n_bootstrap, level=level, seed=seed, loss_space=loss_space, delta=delta,
                   upper_bound=upper_bound, predict=tuple(_predict_point(p) for p in predict_at))
    if frontier:
        _frontier(db, experiment, spec, budgets, png, as_json)
        return
    if compare.asked:
        _compare(db, experiment, spec, compare, as_json)
        return
    try:
        if csv_path is not None:
            columns = CsvColumns(csv_x, csv_y, csv_d, csv_compute, csv_group)
            reports, skipped = _fit_csv(csv_path, columns, drop_highest, spec, db=None if no_save else db)
        else:
            reports, skipped = _fit_db(db, experiment, spec, upgrade=not no_save)
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


@dataclass(frozen=True)
class Compare:
    """--strategies and --regimes, with --target-loss and --path: analyses of a sweep printed, not stored."""

    strategies: bool
    regimes: bool
    target_loss: float | None
    path: str | None

    @property
    def asked(self) -> bool:
        return self.strategies or self.regimes

    def check(self, *, csv_path: Path | None, group_by: str | None, predict_at: tuple[str, ...],
              png: Path | None) -> None:
        """Options that mean nothing here are refused, one line each, rather than silently ignored."""
        given = [flag for flag, value in (("--target-loss", self.target_loss), ("--path", self.path))
                 if value is not None]
        if given and not self.strategies:
            fail(f"{', '.join(given)}: only with --strategies")
        if not self.asked:
            return
        which = " and ".join(f for f, on in (("--strategies", self.strategies), ("--regimes", self.regimes)) if on)
        unused = {"--csv": csv_path, "--group-by": group_by, "--predict": predict_at or None, "--png": png}
        for flag, value in unused.items():
            if value is not None:
                fail(f"{flag}: not with {which} (they compare the sweep's own sizes and are not stored or plotted)")


def _compare(db: Path, experiment: str | None, spec: FitSpec, compare: Compare, as_json: bool) -> None:
    """Run the strategies and/or regimes analyses of a sweep and show them (JSON: one object with both)."""
    from scaletui.services.fitting import FitInputError
    from scaletui.services.regimes import regimes_experiment
    from scaletui.services.strategies import compare_experiment, parse_path

    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    _upgrade(db)
    check_db_usable(db, create=False)
    out: dict[str, Any] = {}
    try:
        path = parse_path(compare.path) if compare.path is not None else None
        if compare.strategies:
            out["strategies"] = compare_experiment(db, experiment, spec, target_loss=compare.target_loss, path=path)
        if compare.regimes:
            out["regimes"] = regimes_experiment(db, experiment, spec)
    except FitInputError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({k: v.to_json() for k, v in out.items()}, indent=2))
        return
    if "strategies" in out:
        _print_strategies(out["strategies"])
    if "regimes" in out:
        _print_regimes(out["regimes"])


def _check_frontier(frontier: bool, budgets: tuple[float, ...], compare: Compare, others: dict[str, Any]) -> None:
    """--budget needs --frontier; --frontier reads a sweep's runs itself (N = params, D = examples seen), so the
    options that choose another x, a CSV file, curves or predictions are refused rather than ignored."""
    if budgets and not frontier:
        fail("--budget: only with --frontier")
    if not frontier:
        return
    if compare.asked:
        fail(f"--frontier: not with {'--strategies' if compare.strategies else '--regimes'} (run them one at a time)")
    for flag, value in others.items():
        if value is not None:
            fail(f"{flag}: not with --frontier (it fits L(N, D) of a sweep's runs: N = params, D = examples seen)")


def _frontier(db: Path, experiment: str | None, spec: FitSpec, budgets: tuple[float, ...], png: Path | None,
              as_json: bool) -> None:
    """The compute-optimal frontier of a sweep: printed (with a terminal plot) or as JSON, and a PNG if asked."""
    from scaletui.services.fitting import FitInputError
    from scaletui.services.frontier import frontier_experiment

    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    _upgrade(db)
    check_db_usable(db, create=False)
    try:
        report = frontier_experiment(db, experiment, spec, budgets)
    except FitInputError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({"frontier": report.to_json()}, indent=2))
    else:
        _print_frontier(report)
    if png is not None:
        _write_frontier_png(report, png, announce=not as_json)


def _write_frontier_png(report: Any, png: Path, *, announce: bool) -> None:
    from scaletui.services.plotting import write_frontier_png

    try:
        write_frontier_png(report, png)
    except OSError as exc:
        fail(f"{png}: cannot write the plot ({exc.strerror or exc})")
    if announce:
        console().print(f"plot written to {png}", markup=False, highlight=False)


def _predict_point(text: str) -> tuple[float, ...]:
    """`--predict 1e6` or `--predict 1e9,2e10` (N,D) as numbers; one-line error otherwise."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        fail(f"--predict {text!r}: not a number (give X, or N,D for the two-variable law)")


def _show(reports: list[FitReport], skipped: Sequence[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"fits": [r.to_json() for r in reports], "skipped": list(skipped)}, indent=2))
    else:
        _print_reports(reports, skipped)


def _fit_db(db: Path, experiment: str | None, spec: FitSpec, *,
            upgrade: bool) -> tuple[list[FitReport], Sequence[str]]:
    from scaletui.services.fitting import fit_experiment

    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or pass --db)")
    if upgrade:
        _upgrade(db)
    check_db_usable(db, create=False)
    result = fit_experiment(db, experiment, spec)
    return list(result.reports), result.skipped


def _upgrade(db: Path) -> None:
    """A fit that will be stored writes the database, so like any writer it first brings an older one to
    the current schema (a reader cannot read it otherwise). Whatever stops that is said by the check after."""
    from scaletui.store.errors import StoreError
    from scaletui.store.schema import open_db

    with contextlib.suppress(StoreError, OSError, sqlite3.Error):
        open_db(db, create=False).close()


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
    from scaletui.services.fitting import fit_csv

    c = columns
    if c.x is None or c.y is None:
        fail(f"{path}: --csv needs --csv-x COLUMN and --csv-y COLUMN")
    if c.d is not None and c.compute is not None:
        fail(f"{path}: give one of --csv-d and --csv-compute, not both")
    _check_form_for_csv(path, spec.form, two="--csv-d" if c.d is not None else "--csv-compute" if c.compute else None)
    if not path.is_file():
        fail(f"{path}: no such file")
    if db is not None:
        _refuse_foreign_db(db)
    result = fit_csv(path, x=c.x, y=c.y, d=c.d, compute=c.compute, unit=c.unit, drop_highest=drop, spec=spec)
    return list(result.reports), result.skipped


def _check_form_for_csv(path: Path, form: str, two: str | None) -> None:
    """--form against the columns: N and D are fitted with CHINCHILLA, one x with a one-variable form."""
    name = form.upper()
    if two is not None and name not in ("AUTO", "CHINCHILLA"):
        fail(f"{path}: --form {form} fits one variable; with {two} the law is CHINCHILLA, "
             "E + A/N^alpha + B/D^beta (drop --form)")
    if two is None and name == "CHINCHILLA":
        fail(f"{path}: --form CHINCHILLA fits N and D: give --csv-d or --csv-compute")


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
    from scaletui.services.fitting import save_reports
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
    from scaletui.services.plotting import write_png

    try:
        write_png(reports, png)
    except OSError as exc:
        fail(f"{png}: cannot write the plot ({exc.strerror or exc})")
    if announce:
        console().print(f"plot written to {png}", markup=False, highlight=False)


# ----------------------------------------------------------------------------- tables


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.4g}"  # NaN != NaN


def _params_table(report: FitReport) -> Any:
    from rich.table import Table

    intervals, errors = report.intervals, report.std_errors
    level = f"{report.level:.0%} interval" if intervals else "interval"
    table = Table("parameter", "value", level, "std err", "meaning", box=None)
    meanings = _meanings(report.law.form)
    for name, value in report.law.params.items():
        lo, hi = intervals.get(name, (float("nan"), float("nan")))
        table.add_row(name, _num(value), f"[{_num(lo)}, {_num(hi)}]" if intervals else "-",
                      _num(errors.get(name, float("nan"))), meanings.get(name, ""))
    return table


def _meanings(form_name: str) -> dict[str, str]:
    from scaletui.analysis.forms import form

    return {p.name: p.meaning for p in form(form_name).params}


#: How the forms table marks the report's form, by how it was picked (services.fit_report.CHOSEN_BY).
_MARKS = {"forced": "forced", "held-out error": "chosen", "the only form that could be fitted": "the only one",
          "default (too few sizes to compare forms)": "taken, not compared"}


def _forms_table(report: FitReport) -> Any:
    """Every candidate form's held-out error, side by side; the chosen one marked."""
    from rich.table import Table

    table = Table("form", "held-out rms log error", "mean rel. error", "origins", "", box=None)
    for s in report.scores:
        mark = _MARKS.get(report.chosen_by, "chosen") if s.form == report.law.form else ""
        if s.skipped is not None and not s.per_origin:
            what = "not scored" if s.law is not None else "not fitted"
            table.add_row(s.form, "-", "-", "-", f"{mark}{'; ' if mark else ''}{what}: {s.skipped}")
        else:
            table.add_row(s.form, _num(s.heldout_error), f"{s.heldout_rel_error:.1%}", str(len(s.per_origin)), mark)
    return table


def _heading(r: FitReport) -> str:
    from scaletui.analysis.form_models import LOG

    what = f"{r.source}" + (f" ({r.group})" if r.group else "")
    rule = f"loss = {r.loss_label}" if r.loss_label else "loss from CSV"
    diverged = f", {r.n_diverged} diverged excluded" if r.n_diverged else ""
    boot = f", {r.boot.n_done} bootstrap resamples over {r.resample_unit or 'rows'}" if r.boot else ""
    how = {"forced": "forced", "held-out error": "chosen by held-out error"}.get(r.chosen_by, r.chosen_by)
    how += "" if r.law.loss_space == LOG else f", fitted on {r.law.loss_space} residuals"
    return (f"{what}: L({r.x_name}) = {r.law.form}, {r.formula} ({how}); {rule}; {r.n_points} points, "
            f"{r.n_sizes} sizes{diverged}{boot}")


def report_lines(r: FitReport) -> list[str]:
    """Held-out points, alpha stability, predictions, warnings and where the fit was stored, as plain lines."""
    from scaletui.services.fitting import describe_heldout, describe_stability

    lines = [f"held-out: {line}" for line in describe_heldout(r.heldout)]
    if len(r.xs) == 1 and r.loss_rule is not None:
        lines.append(f"alpha stability: {describe_stability(r.stability)}")
    lines += [_prediction_line(p) for p in r.predictions]
    lines += [f"warning: {w}" for w in r.warnings]
    if r.fit_id is not None:
        lines.append(f"stored as fit #{r.fit_id}")
    return lines


def _prediction_line(p: Any) -> str:
    from scaletui.services.fit_report import point_text

    band = (f", {p.level:.0%} band [{p.lo:.4g}, {p.hi:.4g}]" if p.lo == p.lo
            else " (no band: --bootstrap 0)")
    where = "inside the fitted range" if p.beyond <= 1 else f"{p.beyond:.3g}x the largest fitted size"
    loud = "  <- FAR BEYOND THE DATA" if p.far else ""
    return f"prediction: {point_text(p.at)}: {p.value:.4g}{band}, {where}{loud}"


def _forms_title(report: FitReport) -> str:
    scored = [s for s in report.scores if s.skipped is None and s.per_origin]
    origins = min((len(s.per_origin) for s in scored), default=0)
    if not origins:
        return "forms: too few sizes to leave any out"
    return (f"forms, by held-out error (each fitted without its largest 1..{origins} sizes and judged on them; "
            "lower is better):")


def _print_reports(reports: Sequence[FitReport], skipped: Sequence[str]) -> None:
    from scaletui.services.plotting import law_text

    out = console()
    for r in reports:
        for line in (_heading(r), law_text(r)):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        out.print(_params_table(r))
        out.print(_forms_title(r), markup=False, highlight=False, soft_wrap=True)
        out.print(_forms_table(r))
        for line in report_lines(r):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        out.print()
    for line in skipped:
        out.print(f"skipped: {line}", markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- after a headless run


def _finished_sizes(db: Path, experiment: str) -> int:
    from scaletui.store.reader import Reader

    with Reader(db) as reader:
        rows = reader.runs(experiment)
    return len({r.params for r in rows if r.ok and r.params})


def print_sweep_fit(db: Path, experiment: str) -> None:
    """The sweep's law against params, after the summary table of `scaletui run --headless`: the form
    chosen by held-out error, with every form's error, the held-out points, intervals and warnings.

    Only when at least 3 sizes finished; stored in the fits table like any other fit. A fit
    that fails prints one warning line: the run's exit code describes the runs, not the fit.
    """
    from scaletui.services.fitting import FitSpec, fit_experiment, save_reports

    try:
        if _finished_sizes(db, experiment) < MIN_SIZES_FOR_SWEEP_FIT:
            return
        result = fit_experiment(db, experiment, FitSpec(x="params", n_bootstrap=HEADLESS_BOOTSTRAP))
        _print_reports(save_reports(db, result.reports), result.skipped)
    except Exception as exc:
        click.echo(f"warning: fit skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)


# ----------------------------------------------------------------------------- strategies and regimes


def _interval(lo: float, hi: float, digits: int = 3) -> str:
    return "-" if lo != lo else f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def _share(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0%}"


def _print_strategies(report: Any) -> None:
    """The comparison: one row per strategy, then the verdict and its caveats."""
    from rich.table import Table

    from scaletui.services.strategies import verdict_lines

    c, out = report.comparison, console()
    level = f"{c.level:.0%}"
    target = (f"target loss {c.target:.4g} (given)" if c.target_given
              else f"target loss {c.target:.4g} (the lowest loss every strategy reached; --target-loss to change)")
    out.print(f"{report.experiment}: scaling strategies, L = {c.form} along each path; loss = {report.loss_label}; "
              f"{report.n_runs} runs; {c.n_resamples} bootstrap resamples over {report.unit}"
              f"{' (paired)' if c.paired else ''}; {target}", markup=False, highlight=False, soft_wrap=True)
    table = Table("strategy", "sizes", f"alpha vs params ({level})", f"alpha vs FLOPs ({level})", "E",
                  f"FLOPs to target ({level})", "where", "cheapest in", box=None)
    for f in c.fits:
        table.add_row(*_strategy_row(f, c))
    out.print(table)
    for line in verdict_lines(c):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    out.print()


def _strategy_row(f: Any, c: Any) -> list[str]:
    sizes = " ".join(f"{w}x{d}" for w, d in f.strategy.cells)
    if f.error is not None:
        return [f.strategy.name, sizes, f"not fitted: {f.error}", "", "", "", "", ""]
    p, fl = f.fits["params"], f.fits["flops"]
    return [f.strategy.name, sizes, f"{_num(p.law.params.get('alpha', float('nan')))} {_interval(*p.alpha_interval)}",
            f"{_num(fl.law.params.get('alpha', float('nan')))} {_interval(*fl.alpha_interval)}",
            _num(fl.law.params.get("E", float("nan"))), f"{_num(fl.cost)} {_interval(*fl.cost_interval)}",
            fl.where, _share(c.p_cheapest.get(f.strategy.name))]


def _print_regimes(report: Any) -> None:
    """The law at each regime, the sizes' ranks over the regimes, and the crossings."""
    from rich.table import Table

    from scaletui.services.regimes import regime_lines

    r, out = report.regimes, console()
    t = r.table
    out.print(f"{report.experiment}: L({report.x}) = {r.form} at each {r.axis}; loss = {report.loss_label}; "
              f"{len(t.sizes)} sizes, {report.n_runs} runs; bootstrap over {report.unit}",
              markup=False, highlight=False, soft_wrap=True)
    table = Table(r.axis, "sizes", "alpha", "interval", "E", "bigger wins", box=None)
    for f, share in zip(r.fits, t.agreement(), strict=False):
        if f.law is None:
            table.add_row(f"{f.regime:g}", str(f.n_sizes), f"not fitted: {f.error}", "", "", _share(share))
        else:
            table.add_row(f"{f.regime:g}", str(f.n_sizes), _num(f.alpha), _interval(*f.alpha_interval),
                          _num(f.law.params.get("E", float("nan"))), _share(share))
    out.print(table)
    out.print(_ranks_table(t))
    for line in regime_lines(report):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    out.print()


def _ranks_table(t: Any) -> Any:
    from rich.table import Table

    ranks = t.ranks()
    table = Table("rank of size (1 = lowest loss)", *(f"{v:g}" for v in t.regimes), box=None)
    for j, size in enumerate(t.sizes):
        table.add_row(size, *("-" if v != v else str(int(v)) for v in ranks[:, j]))
    return table


# ----------------------------------------------------------------------------- the compute-optimal frontier


def _print_frontier(report: Any) -> None:
    """The law, the policy (a, b with intervals), N_opt and D_opt at each budget, the run closest to optimal,
    warnings, and loss against compute as a terminal plot."""
    from rich.table import Table

    from scaletui.services.frontier import D_TEXT
    from scaletui.services.frontier_lines import budget_note, closest_lines, law_line, policy_line
    from scaletui.services.plotting import frontier_text

    r, out = report, console()
    level = f"{r.level:.0%}"
    boot = f"{r.n_resamples} bootstrap resamples over (N, D) points" if r.n_resamples else "no bootstrap"
    for line in (f"{r.experiment}: compute-optimal frontier of L(N, D) = E + A/N^alpha + B/D^beta; loss = "
                 f"{r.loss_label}; {r.n_runs} runs, {len(r.points)} (N, D) points; {boot}; not stored",
                 f"N = params; D = {D_TEXT}; {r.compute_text}", law_line(r)):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    out.print(_params_rows(r, level))
    out.print(policy_line(r), markup=False, highlight=False, soft_wrap=True)
    table = Table("budget C (FLOPs)", f"N_opt ({level})", f"D_opt ({level})", "D/N", f"frontier loss ({level})",
                  "", box=None)
    for b in r.budgets:
        table.add_row(_num(b.compute), f"{_num(b.n_opt)} {_interval(*b.n_interval)}",
                      f"{_num(b.d_opt)} {_interval(*b.d_interval)}", _num(b.d_per_n),
                      f"{_num(b.loss)} {_interval(b.loss_interval[0], b.loss_interval[1], 4)}", budget_note(b))
    out.print(table)
    for line in closest_lines(r):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    for w in r.warnings:
        out.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    out.print(frontier_text(r), markup=False, highlight=False, soft_wrap=True)
    out.print()


def _params_rows(r: Any, level: str) -> Any:
    from rich.table import Table

    table = Table("parameter", "value", f"{level} interval", "meaning", box=None)
    meanings = _meanings(r.law.form)
    for name, value in r.law.params.items():
        lo, hi = r.intervals.get(name, (float("nan"), float("nan")))
        table.add_row(name, _num(value), _interval(lo, hi, 4), meanings.get(name, ""))
    return table
