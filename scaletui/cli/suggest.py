"""`scaletui suggest --width W --depth D`: the learning rate for a size not yet run, and a sweep to run it.

A separate module from cli.py, registered there; it parses and prints only (the work is in
`scaletui.services.suggest`). Registering it at every `scaletui` start imports only click: numpy, the store
and the configurator are imported when the command runs, and torch never is.

`--backtest` shows the evidence behind "auto": the largest lr-swept size held out, its best lr predicted by
every rule from the smaller sizes, each prediction's ratio to the measured best and the loss lost by
training there (and the same for dropout against depth when the experiment swept it); `--json` prints it
as one object for scripts. `--width`/`--depth` are then optional.

`--batch` proposes a batch size instead: for every size (width, depth) of the experiment, the critical
batch size B_crit ~ B_simple = tr(Sigma) / |G|^2 from the gradient noise scale the training loops measure,
over the last half of each run's measurements, with the evidence (estimate and 95% interval, the spread of
the running estimate, how many runs and measurements, the batch size the runs used); `--json` prints it
as one object. Nothing to measure from (runs trained before the measurement existed) is said in one line.

`--append FILE` writes FILE as a complete one-size sweep (the config of the experiment's best run, at the
target width and depth, with the proposed lr and lr_scaling = "none", over every seed the experiment ran),
in the same database, as its own experiment `<experiment>-suggested`. `scaletui run FILE` trains it. FILE must
not exist: TOML cannot hold a second [model] table, so appending to a sweep file would only produce an invalid one.
It also records the size's predicted loss in the experiment's predictions ledger (source `suggest`; the law of
each size's best run, services.predictions.record_for_sweep), scored when FILE's runs finish.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from scaletui.cli.common import check_db_usable, fail, resolve_db
from scaletui.core.vocabulary import LrRule

RULE_CHOICES = LrRule.choices()


@click.command(name="suggest")
@click.option("--width", "-w", type=click.IntRange(min=1), help="Width of the model to propose for.")
@click.option("--depth", "-d", type=click.IntRange(min=1), help="Depth of the model to propose for.")
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help="Database with the finished runs to learn from (default: experiment.db of ./experiments.toml, "
                   "else runs/scaletui.db).")
@click.option("--experiment", help="Experiment to learn from (default: the latest one with finished runs).")
@click.option("--rule", type=click.Choice(RULE_CHOICES), default=LrRule.AUTO.value, show_default=True,
              help="auto = the rule that predicted the held-out largest size best (with >= 4 lr-swept sizes), "
                   "else the power-law fit with 3, else the sqrt-params rule.")
@click.option("--backtest", is_flag=True,
              help="Hold out the largest swept size, predict its best lr (and dropout) by every rule, print how "
                   "each did.")
@click.option("--batch", is_flag=True,
              help="Propose a batch size per size instead: the critical batch size from the gradient noise scale "
                   "(B_simple) the runs measured, with the evidence.")
@click.option("--json", "as_json", is_flag=True, help="With --backtest or --batch: one JSON object, for scripts.")
@click.option("--append", "append_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a runnable sweep file for the proposed size, with the experiment's seeds "
                   "(must not exist yet).")
def suggest_command(width: int | None, depth: int | None, db: Path | None, experiment: str | None, rule: str,
                    append_to: Path | None, backtest: bool, batch: bool, as_json: bool) -> None:
    """Propose the learning rate for a WIDTH x DEPTH model from the lr sweeps already run (or, with
    --batch, the batch size of every size from the gradient noise scale)."""
    _check_options(width, depth, backtest, as_json, append_to, batch)
    db = resolve_db(db)
    if db.exists():
        check_db_usable(db, create=False)
    if batch:
        return _print_batches(_batches(db, experiment), as_json)
    if backtest:
        _print_backtests(_backtests(db, experiment), as_json)
    if width is None or depth is None:
        return
    s = _suggestion(db, experiment, width, depth, rule)
    if backtest:
        click.echo("")
    _print(s)
    if append_to is not None:
        _write_sweep(s, db, append_to)


def _check_options(width: int | None, depth: int | None, backtest: bool, as_json: bool,
                   append_to: Path | None, batch: bool = False) -> None:
    """One line and exit 2 for options that do not go together."""
    if batch and (width is not None or depth is not None or backtest or append_to is not None):
        fail("--batch reports every size of the experiment: it goes without --width/--depth, --backtest and --append")
    if batch:
        return
    if (width is None) != (depth is None) or (width is None and not backtest):
        fail("--width and --depth are needed together (or --backtest alone, to compare the rules)")
    if as_json and (not backtest or width is not None):
        fail("--json goes with --backtest alone or --batch (without --width/--depth)")
    if append_to is not None and append_to.exists():
        fail(f"{append_to}: already exists; --append writes a new sweep file (a TOML file cannot take a "
             "second [model] table)")


def _suggestion(db: Path, experiment: str | None, width: int, depth: int, rule: str) -> Any:
    from scaletui.services.suggest import SuggestError, suggestion

    try:
        return suggestion(db, experiment, width, depth, rule=rule)
    except (SuggestError, ValueError) as e:
        fail(str(e))


def _backtests(db: Path, experiment: str | None) -> Any:
    from scaletui.services.suggest import SuggestError, backtests

    try:
        return backtests(db, experiment)
    except (SuggestError, ValueError) as e:
        fail(str(e))


def _print_backtests(b: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_backtests_json(b), indent=2))
        return
    click.echo(f"experiment:   {b.experiment!r} ({b.context})" if b.experiment else f"experiment:   {b.context}")
    for title, result, why in (("learning rate", b.lr, b.lr_why), ("dropout", b.dropout, b.dropout_why)):
        click.echo(f"{title}:")
        if result is None:
            click.echo(f"  no backtest: {why}")
        else:
            _print_backtest(result)


def _print_backtest(bt: Any) -> None:
    click.echo(f"  held out {bt.held_out} ({bt.held_out_params:,} params): measured best {bt.quantity} "
               f"{bt.measured:.3g}, loss {bt.best_loss:.4f}; predicted from {', '.join(bt.fitted_on)}")
    miss = "ratio" if bt.quantity == "lr" else "error"
    click.echo(f"  {'rule':<12} {'predicted':>10} {miss:>7} {'lost loss':>10}")
    winner = bt.winner.rule
    for s in bt.scores:
        mark = "  <- auto's choice (least loss lost)" if s.rule == winner else ""
        lost = f"{s.lost_loss:.4f}" if math.isfinite(s.lost_loss) else s.where
        click.echo(f"  {s.rule:<12} {s.predicted:>10.3g} {bt.miss_text(s):>7} {lost:>10}{mark}")


def _backtests_json(b: Any) -> dict[str, Any]:
    """The --json object: numbers as numbers, an unknown lost loss as null with `where` saying why."""
    def one(bt: Any) -> dict[str, Any] | None:
        if bt is None:
            return None
        rules = [{"rule": s.rule, "predicted": s.predicted, "ratio": s.ratio if math.isfinite(s.ratio) else None,
                  "lost_loss": s.lost_loss if math.isfinite(s.lost_loss) else None, "where": s.where}
                 for s in bt.scores]
        return {"held_out": bt.held_out, "params": bt.held_out_params, "measured": bt.measured,
                "best_loss": bt.best_loss, "fitted_on": list(bt.fitted_on), "winner": bt.winner.rule, "rules": rules}
    return {"experiment": b.experiment, "context": b.context, "lr": one(b.lr), "dropout": one(b.dropout),
            "lr_why": None if b.lr else b.lr_why, "dropout_why": None if b.dropout else b.dropout_why}


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
    if s.dropout is not None:
        d = s.dropout
        click.echo(f"dropout:      {d.dropout:.3g} for depth {s.depth} by {d.rule} (confidence {d.confidence})")
        click.echo(f"  why:        {d.note}")
    click.echo("")
    model = {"dropout": round(s.dropout.dropout, 3)} if s.dropout is not None else None
    click.echo(p.toml_fragment(s.width, s.depth, arch=s.base.model.arch, model=model), nl=False)


def _write_sweep(s: Any, db: Path, path: Path) -> None:
    from scaletui.services.suggest import sweep_file_text

    name = f"{s.experiment or 'suggested'}-suggested"
    try:
        path.write_text(sweep_file_text(s, name=name, db=db.resolve()), encoding="utf-8")
    except OSError as e:
        fail(f"{path}: cannot write: {e}")
    click.echo(f"\nwrote {path}: `scaletui run --headless {path}` trains this run as experiment {name!r}")
    if s.experiment is not None:
        _record_prediction(db, s.experiment, path)


def _record_prediction(db: Path, experiment: str, path: Path) -> None:
    """The suggested size's predicted loss, recorded in the ledger and scored when the sweep's runs finish.
    A size the law cannot predict (too few sizes, too far out) is said in one line; the sweep stands."""
    from scaletui.core.config import ConfigError, load_sweep
    from scaletui.services.fitting import FitInputError
    from scaletui.services.predictions import PredictError, record_for_sweep

    try:
        row = record_for_sweep(db, experiment, load_sweep(path, check_data=False))
    except (PredictError, FitInputError, ConfigError) as e:
        click.echo(f"no prediction recorded: {e}")
        return
    band = f" [{row.lo:.4g}, {row.hi:.4g}] ({row.level:.0%})" if row.lo is not None and row.hi is not None else ""
    click.echo(f"predicted loss {row.predicted:.4g}{band} for {row.width}x{row.depth} by the law of {experiment!r}'s "
               f"best run per size; recorded as prediction #{row.id}, scored when this sweep's runs finish "
               f"(`scaletui predict --list --experiment {experiment}`)")


# --------------------------------------------------------------------------- --batch


def _batches(db: Path, experiment: str | None) -> Any:
    from scaletui.services.suggest import SuggestError, batch_suggestions

    try:
        return batch_suggestions(db, experiment)
    except (SuggestError, ValueError) as e:
        fail(str(e))


def _print_batches(b: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_batches_json(b), indent=2))
        return
    click.echo(f"experiment:   {b.experiment!r}" if b.experiment else "experiment:   none with measurements")
    if not b.sizes:
        click.echo(f"no gradient noise scale measured{_without(b)}: runs record it every few logging steps "
                   "(batch size 2 or more); train the sweep (again) with this version to measure it")
        return
    click.echo(f"critical batch size B_crit ~ B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018), over the last "
               f"{b.tail_fraction:.0%} of each run's measurements{_without(b)}")
    click.echo(f"  {'size':<16} {'runs':>4} {'batch':>6} {'B_simple':>9} {'95% interval':>17} "
               f"{'running, tail':>17} {'meas.':>9} {'suggest':>7}")
    for size in b.sizes:
        click.echo("  " + _size_line(size))
    click.echo("why: below B_crit, doubling the batch about halves the steps for the same loss; above it, a larger "
               "batch costs more examples for little gain. B_simple grows as the loss falls, so it is read at the "
               "end of training.")


def _without(b: Any) -> str:
    return f" ({b.runs_without} run(s) without measurements left out)" if b.runs_without else ""


def _size_line(size: Any) -> str:
    c = size.crit
    name = f"{size.arch} w{size.width} d{size.depth}"
    batch = "/".join(str(x) for x in size.batch_sizes)
    estimate = "-" if c.b_crit is None else f"{c.b_crit:.0f}"
    interval = "-" if c.low is None else f"[{c.low:.0f}, {c.high:.0f}]"
    spread = "-" if c.spread is None else f"{c.spread[0]:.0f}-{c.spread[1]:.0f}"
    suggest = "-" if size.suggested is None else str(size.suggested)
    line = (f"{name:<16} {size.runs:>4} {batch:>6} {estimate:>9} {interval:>17} {spread:>17} "
            f"{c.tail:>4}/{c.measurements:<4} {suggest:>7}")
    return line if c.b_crit is not None else line + "  (|G|^2 not resolved: noise dominates)"


def _batches_json(b: Any) -> dict[str, Any]:
    sizes = [{"arch": s.arch, "width": s.width, "depth": s.depth, "params": s.params, "runs": s.runs,
              "batch_sizes": list(s.batch_sizes), "b_crit": s.crit.b_crit, "stderr": s.crit.stderr,
              "low": s.crit.low, "high": s.crit.high, "spread": list(s.crit.spread) if s.crit.spread else None,
              "measurements": s.crit.measurements, "tail_measurements": s.crit.tail,
              "suggested_batch_size": s.suggested} for s in b.sizes]
    return {"experiment": b.experiment, "tail_fraction": b.tail_fraction, "runs_without": b.runs_without,
            "sizes": sizes}
