"""`scaletui predict --width W --depth D`: record what the law says a size not yet trained will reach.

The prediction goes into the database's ledger (`predictions` table) with its band, the law and the
training plan it was fitted under; when the runs of that size finish in the same experiment (a later
sweep, `scaletui suggest --append`, your own loop) it is scored automatically: the truth, the error
and whether the band held. `--list` shows the ledger and its track record. The work is in
`scaletui.services.predictions`; this module parses and prints only, and imports numpy and the store
only when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from scaletui.cli.common import check_db_usable, fail, resolve_db
from scaletui.core.vocabulary import PredictionStatus


@click.command(name="predict")
@click.option("--width", "-w", type=click.IntRange(min=1), help="Width of the size to predict.")
@click.option("--depth", "-d", type=click.IntRange(min=1), help="Depth of the size to predict.")
@click.option("--params", type=click.IntRange(min=1),
              help="Its parameter count, when scaletui cannot count it (resnet, your own model).")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help="Database of the sweep (default: experiment.db of ./experiments.toml, else runs/scaletui.db).")
@click.option("--experiment", help="Experiment whose law predicts (default: the most recent one).")
@click.option("--form", default="auto", show_default=True, help="auto (by held-out error) or a form's name.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples behind the band (0: no band).")
@click.option("--list", "show_list", is_flag=True, help="Show the ledger: every prediction, scored where it can be.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def predict_command(width: int | None, depth: int | None, params: int | None, db: Path | None,
                    experiment: str | None, form: str, n_bootstrap: int, show_list: bool, as_json: bool) -> None:
    """Predict the loss of a WIDTH x DEPTH model before training it, and keep score."""
    if not show_list and (width is None or depth is None):
        fail("scaletui predict: give --width and --depth (or --list to see the ledger)")
    db = resolve_db(db)
    if not db.exists():
        fail(f"{db}: no such database (run a sweep first, or give --db)")
    check_db_usable(db, create=True)  # records into it: an older schema is upgraded by the writer
    if show_list:
        _print_ledger(db, experiment, as_json)
        return
    assert width is not None and depth is not None
    _print_recorded(_record(db, experiment, width, depth, params, form, n_bootstrap), as_json)


def _record(db: Path, experiment: str | None, width: int, depth: int, params: int | None, form: str,
            n_bootstrap: int) -> Any:
    from scaletui.services.fitting import FitInputError
    from scaletui.services.predictions import PredictError, record_prediction

    try:
        return record_prediction(db, experiment, width, depth, params=params, form=form, n_bootstrap=n_bootstrap)
    except (PredictError, FitInputError) as exc:
        fail(f"scaletui predict: {exc}")


def entry_json(p: Any) -> dict[str, Any]:
    """One ledger entry as JSON (what `--json` prints)."""
    return {"id": p.id, "experiment": p.experiment, "created_at": p.created_at, "source": str(p.source),
            "width": p.width, "depth": p.depth, "x_name": p.x_name, "x": p.x, "curve": p.curve, "form": p.form,
            "loss_rule": p.loss_rule, "predicted": p.predicted, "lo": p.lo, "hi": p.hi, "level": p.level,
            "status": str(p.status), "truth": p.truth, "n_truth": p.n_truth, "error": p.error, "inside": p.inside,
            "scored_at": p.scored_at, "note": p.note}


def _band(p: Any) -> str:
    if p.lo is None or p.hi is None:
        return "no band"
    return f"{p.level:.0%} band [{p.lo:.4f}, {p.hi:.4f}]"


def _print_recorded(p: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(entry_json(p), indent=2))
        return
    curve = p.curve or "every run"
    click.echo(f"prediction #{p.id} recorded for {p.experiment}: {p.size_label} ({p.x:,.0f} params)")
    click.echo(f"  {p.inputs.get('loss_label') or p.loss_rule + ' loss'} {p.predicted:.4f}, {_band(p)}")
    click.echo(f"  law: {p.form} of {curve} ({len(p.inputs.get('sizes', []))} sizes, "
               f"{len(p.inputs.get('run_ids', []))} runs), form chosen by held-out error unless forced")
    for warning in p.inputs.get("warnings", [])[:3]:
        click.echo(f"  warning: {warning}")
    click.echo(f"  scored automatically when the runs of {p.size_label} finish in this experiment "
               "(`scaletui predict --list`)")


def _print_ledger(db: Path, experiment: str | None, as_json: bool) -> None:
    from scaletui.services.fitting import FitInputError
    from scaletui.services.predictions import ledger

    try:
        record = ledger(db, experiment)
    except FitInputError as exc:
        fail(f"scaletui predict: {exc}")
    if as_json:
        inside, banded = record.band_held
        click.echo(json.dumps({"predictions": [entry_json(p) for p in record.entries],
                               "median_abs_error": record.median_abs_error, "band_held": inside,
                               "band_scored": banded}, indent=2))
        return
    for line in ledger_lines(record):
        click.echo(line)


def ledger_lines(record: Any) -> list[str]:
    """The ledger as text: a summary line, then one line per prediction (the fit pane shows the same)."""
    if not record.entries:
        return ["no predictions recorded yet (`scaletui predict --width W --depth D` records one)"]
    inside, banded = record.band_held
    err = record.median_abs_error
    summary = (f"{len(record.entries)} prediction(s), {len(record.scored)} scored"
               + (f": median |error| {err:.1%}, band held {inside} of {banded}" if err is not None else ""))
    lines = [summary, f"{'#':>3}  {'recorded':16}  {'size':8} {'predicted':>9} {'band':>19}  {'truth':>7} "
                      f"{'error':>7} {'band?':5}  status"]
    for p in record.entries:
        band = f"[{p.lo:.4f}, {p.hi:.4f}]" if p.lo is not None and p.hi is not None else "-"
        truth = f"{p.truth:.4f}" if p.truth is not None else "-"
        error = f"{p.error:+.1%}" if p.error is not None else "-"
        held = "-" if p.inside is None else ("in" if p.inside else "OUT")
        status = str(p.status) + (f" ({p.note})" if p.note and p.status is not PredictionStatus.OPEN else "")
        lines.append(f"{p.id:>3}  {p.created_at[:16].replace('T', ' '):16}  {p.size_label:8} {p.predicted:>9.4f} "
                     f"{band:>19}  {truth:>7} {error:>7} {held:5}  {status}")
    return lines
