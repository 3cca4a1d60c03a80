"""The app's fit pane: the sweep's scaling law, how sure we are of it, and whether it predicts.

Shows, for the chosen x, grouping, loss rule and form: a log-log plot of the points (mean and
seed spread), the fitted law, its bootstrap prediction band and the held-out sizes (what the law
predicted for them when fitted without them, next to what was measured); and a table of the
parameters with their intervals, the held-out errors and how alpha moved over training.

The pane owns its fitting: `runs_changed()` (called by the app when runs finish) schedules a refit
in a thread worker. Fits take seconds (a bootstrap refits the law hundreds of times), so the UI
thread never runs one; the worker reads the database through `scaletui.services.fitting` with its own
read-only connection and only posts `FitPane.Fitted` messages, which the pane applies on the UI thread.
Each refit posts twice: first the law without a bootstrap (the curve, every form's held-out error and the
checks: well under a second), then the same with its bootstrap intervals and prediction band. A newer
request cancels the older one (exclusive worker group), and a cancelled fit stops between bootstrap
chunks.

`w` cycles the pane through views of the same experiment, each computed in the worker (the quick answer first,
then with its bootstrap): the law; the scaling strategies (width at each depth, depth at each width, both along
the diagonal) compared by the FLOPs each needs to reach a loss (`services.strategies`); the regimes, the law at
every evaluation step with the ranking of sizes and the pairs of sizes that cross (`services.regimes`); the
compute-optimal frontier of a sweep with a data axis, L(N, D) of params and examples seen with N_opt(C) and
D_opt(C) at four budgets, loss against compute with every run on it and the run closest to optimal named
(`services.frontier`, the same sentences as `scaletui fit --frontier`); and the predictions ledger, read as it
stands. A view that cannot be computed (a sweep without a data axis has no frontier) says why in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from rich.cells import cell_len
from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.events import Resize
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState, get_current_worker
from textual_plotext import PlotextPlot

from scaletui.analysis.form_models import LOG
from scaletui.analysis.forms import ONE_VARIABLE_FORMS, predict
from scaletui.analysis.strategies import DEPTH, WIDTH
from scaletui.core.rows import PredictionRow
from scaletui.core.vocabulary import FitX, LossRule, PredictionSource
from scaletui.services.fitting import (
    AUTO,
    X_CHOICES,
    FitReport,
    FitSpec,
    FitStopped,
    describe_stability,
    fit_experiment,
)
from scaletui.services.frontier import FLAG as FRONTIER_FLAG
from scaletui.services.frontier import FrontierReport, frontier_experiment
from scaletui.services.frontier_lines import budget_note, closest_lines, law_line, policy_line
from scaletui.services.plotting import frontier_key, plot_frontier
from scaletui.services.predictions import PredictError, TrackRecord, ledger, next_size, record_prediction
from scaletui.services.regimes import RegimesReport, regime_lines, regimes_experiment
from scaletui.services.strategies import FLOPS, StrategiesReport, compare_experiment, interval_text, verdict_lines
from scaletui.tui.keys import FIT_KEYS
from scaletui.tui.widgets.ledger_view import (
    LEDGER_COLUMNS,
    NARROW_LEDGER_COLUMNS,
    ledger_notes,
    ledger_rows,
    ledger_summary,
    plot_ledger,
)

__all__ = ["FRONTIER", "GROUPINGS", "LAW", "PANE_BOOTSTRAP", "PREDICTIONS", "REGIMES", "STRATEGIES", "VIEWS",
           "FitPane"]

T = TypeVar("T")
ViewReport = StrategiesReport | RegimesReport | FrontierReport | TrackRecord  # what the views other than the law show

PANE_BOOTSTRAP = 200  # enough for a 90% interval that means something, fast enough to refit live
GROUPINGS: tuple[str | None, ...] = (None, FitX.DEPTH.value, FitX.WIDTH.value)
FORM_CHOICES: tuple[str, ...] = (AUTO, *ONE_VARIABLE_FORMS)  # `f` cycles: auto-selected, then each form forced
RULES: tuple[LossRule | None, ...] = (None, LossRule.FINAL, LossRule.BEST, LossRule.SMOOTHED)  # None: experiment's
CURVE_MARKERS = ("dot", "hd", "fhd", "braille")
TABLE_COLUMNS = ("curve", "form", "E", "A", "alpha", "held-out 1", "held-out 2", "alpha over training")
NARROW_COLUMNS = TABLE_COLUMNS[:5]  # under NARROW_BELOW columns; the notes below say the rest
NARROW_BELOW = 100
LAW, STRATEGIES, REGIMES, FRONTIER, PREDICTIONS = "law", "strategies", "regimes", "frontier", "predictions"
VIEWS: tuple[str, ...] = (LAW, STRATEGIES, REGIMES, FRONTIER, PREDICTIONS)  # `w` cycles
STRATEGY_COLUMNS = ("strategy", "alpha vs FLOPs", "E", "FLOPs to target", "where", "cheapest in")
NARROW_STRATEGY_COLUMNS = ("strategy", "FLOPs to target", "cheapest in")
REGIME_COLUMNS = ("step", "sizes", "alpha", "interval", "E", "bigger wins")
NARROW_REGIME_COLUMNS = ("step", "alpha", "bigger wins")
FRONTIER_COLUMNS = ("budget C", "N_opt", "D_opt", "D/N", "frontier loss", "note")  # intervals in the cells
NARROW_FRONTIER_COLUMNS = ("budget C", "N_opt", "D_opt")  # the intervals and notes: in the notes and the status
TALL_PLOT = 20  # rows: a shorter plot gets 3 y ticks, not 5 (plotext drops colliding ticks, not always the same)


@dataclass(frozen=True)
class _Choice:
    """What the pane fits; every key press makes a new one."""

    x: str = FitX.PARAMS
    group_by: str | None = None
    rule: LossRule | None = None
    form: str = AUTO
    view: str = LAW

    def spec(self, n_bootstrap: int = PANE_BOOTSTRAP) -> FitSpec:
        if self.view == FRONTIER:  # L(N, D) of params and examples seen: x, grouping and form do not apply
            return FitSpec(loss_rule=self.rule, n_bootstrap=n_bootstrap)
        return FitSpec(x=self.x, group_by=self.group_by, loss_rule=self.rule, form=self.form, n_bootstrap=n_bootstrap)

    def label(self) -> str:
        if self.view == STRATEGIES:
            return "scaling strategies at equal FLOPs"
        if self.view == REGIMES:
            return f"L({self.x}) at each training length"
        if self.view == PREDICTIONS:
            return "the predictions ledger"
        rule = self.rule.label if self.rule else "experiment's loss rule"
        if self.view == FRONTIER:
            return f"the compute-optimal frontier of L(N, D); {rule}"
        group = f", one curve per {self.group_by}" if self.group_by else ""
        form = "form chosen by held-out error" if self.form == AUTO else f"form {self.form}"
        return f"L({self.x}), {form}{group}; {rule}"


def _next(options: Sequence[T], current: T) -> T:
    return options[(options.index(current) + 1) % len(options)]


def _cell(report: FitReport, name: str, sep: str = " ") -> str:
    """A parameter with its 90% interval; `sep="\n"` puts the interval on a second line (narrow table)."""
    value = report.law.params.get(name)
    if value is None:
        return "-"
    interval = report.intervals.get(name)
    if interval is None:
        return f"{value:.4g}"
    lo, hi = interval
    return f"{value:.4g}{sep}[{lo:.3g}, {hi:.3g}]"


def _heldout_cell(report: FitReport, k: int) -> str:
    held = report.heldout.left_out(k)
    return "-" if held is None else f"{held.max_rel_error:.1%}"


def _stability_cell(report: FitReport) -> str:
    s = report.stability
    if s is None or math.isnan(s.rel_range):
        return "-"
    spread = f"{s.rel_range:.0%} range" if math.isfinite(s.rel_range) else "median 0"
    return f"{'stable' if s.stable else 'UNSTABLE'} ({spread})"


class FitPane(Widget, can_focus=True):
    """Scaling-law fit of one experiment: plot, parameter table, checks. Keys choose what is fitted."""

    DEFAULT_CSS = """
    FitPane { layout: vertical; height: 1fr; }
    FitPane > #fit-status { height: auto; color: $text-muted; }
    FitPane > PlotextPlot { height: 2fr; min-height: 12; }
    FitPane > DataTable { height: auto; max-height: 8; }
    FitPane > #fit-notes-box { height: 1fr; max-height: 8; }
    FitPane #fit-notes { height: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [*FIT_KEYS]  # also listed by the help, before this module loads

    @dataclass
    class Fitted(Message):
        """A refit finished (posted from the fit worker). `error` is one line when it could not fit."""

        choice: _Choice
        experiment: str | None
        reports: tuple[FitReport, ...]
        skipped: tuple[str, ...]
        error: str | None = None
        complete: bool = True  # False: the law without its bootstrap yet (the band follows)

    @dataclass
    class Compared(Message):
        """The strategies, regimes or predictions view computed (posted from the fit worker); `error`: one line."""

        choice: _Choice
        experiment: str | None
        report: ViewReport | None
        error: str | None = None
        complete: bool = True

    @dataclass
    class Predicted(Message):
        """`P` recorded a prediction (posted from its worker): the entry, or why not (one line)."""

        entry: PredictionRow | None
        error: str | None = None

    def __init__(self, db_path: Path, experiment: str | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.db_path = Path(db_path)
        self.experiment = experiment
        self.choice = _Choice()
        self.reports: tuple[FitReport, ...] = ()
        self.complete = False  # the shown reports carry their bootstrap (intervals, band)
        self._table_narrow: bool | None = None  # the layout the table has now (None: no columns yet)
        self._table_view = LAW  # which view's columns the table has
        self.view_report: ViewReport | None = None  # what the other views show

    def compose(self) -> ComposeResult:
        yield Static("no fit yet", id="fit-status", markup=False)
        yield PlotextPlot(id="fit-plot")
        yield DataTable(id="fit-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="fit-notes-box", can_focus=False):
            yield Static("", id="fit-notes", markup=False)

    def on_mount(self) -> None:
        self.runs_changed()

    def on_resize(self, event: Resize) -> None:
        """Under NARROW_BELOW columns the table has fewer columns, each interval on its own line."""
        if self.choice.view != LAW:
            if self.query_one("#fit-table", DataTable).columns and self._narrow() != self._table_narrow:
                self._show_view_table(self.view_report)
        elif self.query_one("#fit-table", DataTable).columns and self._narrow() != self._table_narrow:
            self._show_table(self.reports)

    def _narrow(self) -> bool:
        return self.size.width < NARROW_BELOW

    # ----------------------------------------------------------------- public interface

    def set_experiment(self, name: str | None) -> None:
        """Fit another experiment (None: the only or most recently updated one)."""
        self.experiment = name
        self.runs_changed()

    def runs_changed(self) -> None:
        """Runs finished (or changed): refit in the background; the newest request wins."""
        self.complete = False
        self._status(f"fitting {self.choice.label()} ...")
        self._refit(self.choice, self.experiment)

    # ----------------------------------------------------------------- keys

    def action_cycle_x(self) -> None:
        self._choose(replace(self.choice, x=_next(X_CHOICES, self.choice.x)))

    def action_cycle_grouping(self) -> None:
        self._choose(replace(self.choice, group_by=_next(GROUPINGS, self.choice.group_by)))

    def action_cycle_rule(self) -> None:
        self._choose(replace(self.choice, rule=_next(RULES, self.choice.rule)))

    def action_toggle_form(self) -> None:
        self._choose(replace(self.choice, form=_next(FORM_CHOICES, self.choice.form)))

    def action_cycle_view(self) -> None:
        self._choose(replace(self.choice, view=_next(VIEWS, self.choice.view)))

    def action_predict_next(self) -> None:
        self._status("recording the law's prediction for the next size ...")
        self._predict_next(self.experiment)

    def _choose(self, choice: _Choice) -> None:
        self.choice = choice
        self.runs_changed()

    # ----------------------------------------------------------------- the worker

    @work(thread=True, exclusive=True, group="fit", exit_on_error=False)
    def _refit(self, choice: _Choice, experiment: str | None) -> None:
        """Runs in a thread: fit, then post the result. Touches no widget."""
        from scaletui.services.fitting import FitInputError
        from scaletui.services.tracker import READ_ERRORS

        worker = get_current_worker()
        expected: tuple[type[Exception], ...] = (FitInputError, *READ_ERRORS)  # said in one line, not a crash
        if choice.view != LAW:
            self._compare(choice, experiment, expected, lambda: worker.is_cancelled)
            return
        for n_bootstrap in (0, PANE_BOOTSTRAP):  # the curve now, then its intervals and band
            try:
                result = fit_experiment(self.db_path, experiment, choice.spec(n_bootstrap),
                                        should_stop=lambda: worker.is_cancelled)
            except FitStopped:
                return  # superseded by a newer key press: nothing to show
            except expected as exc:
                self.post_message(self.Fitted(choice, experiment, (), (), str(exc)))
                return
            if worker.is_cancelled:
                return
            self.post_message(self.Fitted(choice, experiment, result.reports, result.skipped,
                                          complete=n_bootstrap > 0))

    def _compare(self, choice: _Choice, experiment: str | None, expected: tuple[type[Exception], ...],
                 cancelled: Callable[[], bool]) -> None:
        """In the worker: the strategies or regimes view, first without its bootstrap, then with it; the
        predictions view as the ledger stands (the runner scores it; the app only reads)."""
        if choice.view == PREDICTIONS:
            try:
                record = ledger(self.db_path, experiment, score=False)
            except expected as exc:
                self.post_message(self.Compared(choice, experiment, None, str(exc)))
                return
            self.post_message(self.Compared(choice, experiment, record))
            return
        for n_bootstrap in (0, PANE_BOOTSTRAP):
            try:
                report = self._view_report(choice, experiment, choice.spec(n_bootstrap), cancelled)
            except FitStopped:
                return  # superseded by a newer key press
            except expected as exc:
                self.post_message(self.Compared(choice, experiment, None, _reason(exc)))
                return
            if cancelled():
                return
            self.post_message(self.Compared(choice, experiment, report, complete=n_bootstrap > 0))

    def _view_report(self, choice: _Choice, experiment: str | None, spec: FitSpec,
                     cancelled: Callable[[], bool]) -> StrategiesReport | RegimesReport | FrontierReport:
        """In the worker: the strategies, regimes or frontier view's report."""
        if choice.view == STRATEGIES:
            return compare_experiment(self.db_path, experiment, spec, should_stop=cancelled)
        if choice.view == REGIMES:
            return regimes_experiment(self.db_path, experiment, spec, should_stop=cancelled)
        # The frontier cannot stop mid-bootstrap (the service takes no should_stop); one small two-variable law
        # with its bootstrap is about a tenth of a second, so the check between the two passes suffices.
        return frontier_experiment(self.db_path, experiment, spec)

    @work(thread=True, exclusive=True, group="predict", exit_on_error=False)
    def _predict_next(self, experiment: str | None) -> None:
        """Runs in a thread: fit, record the next size's prediction in the ledger, post it."""
        from scaletui.services.fitting import FitInputError
        from scaletui.services.tracker import READ_ERRORS

        expected: tuple[type[Exception], ...] = (PredictError, FitInputError, *READ_ERRORS)
        try:
            width, depth = next_size(self.db_path, experiment)
            entry = record_prediction(self.db_path, experiment, width, depth, source=PredictionSource.APP,
                                      n_bootstrap=PANE_BOOTSTRAP)
        except expected as exc:
            self.post_message(self.Predicted(None, str(exc)))
            return
        self.post_message(self.Predicted(entry))

    def on_fit_pane_predicted(self, message: FitPane.Predicted) -> None:
        message.stop()
        p = message.entry
        if p is None:
            self._status(f"cannot predict: {message.error}")
            return
        band = "" if p.lo is None or p.hi is None else f" [{p.lo:.4f}, {p.hi:.4f}]"
        self._status(f"prediction #{p.id} recorded: {p.size_label} ({p.x:,.0f} params) -> {p.predicted:.4f}{band}; "
                     "scored when it is trained")
        if self.choice.view == PREDICTIONS:
            self._refit(self.choice, self.experiment)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """An unexpected error in the fit worker becomes a visible line, not a crash."""
        if event.worker.group in ("fit", "predict") and event.state is WorkerState.ERROR:
            self._status(f"{event.worker.group} failed: {event.worker.error}")

    def on_fit_pane_fitted(self, message: FitPane.Fitted) -> None:
        message.stop()
        if message.choice != self.choice or message.experiment != self.experiment:
            return  # an answer to a question no longer asked
        with self.app.batch_update():
            self.reports, self.complete = message.reports, message.complete
            self._show_table(message.reports)
            self._show_plot(message.reports)
            self._show_notes(message)
            self._status(f"cannot fit: {message.error}" if message.error
                         else self._summary(message.reports, message.complete))

    def on_fit_pane_compared(self, message: FitPane.Compared) -> None:
        message.stop()
        if message.choice != self.choice or message.experiment != self.experiment:
            return  # an answer to a question no longer asked
        with self.app.batch_update():
            self.view_report, self.complete = message.report, message.complete
            self._show_view_table(message.report)
            self._show_view_plot(message.report)
            self._show_view_notes(message.report)
            self._status(f"cannot compute the {message.choice.view} view: {message.error}" if message.error
                         else ledger_summary(message.report, message.experiment)
                         if isinstance(message.report, TrackRecord)
                         else _view_summary(message.report, message.complete))

    # ----------------------------------------------------------------- drawing the other views

    def _set_columns(self, view: str, columns: Sequence[str]) -> DataTable[Any]:
        """The table emptied, with `columns` (rebuilt when the view or the width class changed)."""
        table: DataTable[Any] = self.query_one("#fit-table", DataTable)
        narrow = self._narrow()
        table.clear(columns=narrow != self._table_narrow or view != self._table_view)
        if not table.columns:
            table.add_columns(*columns)
        self._table_narrow, self._table_view = narrow, view
        return table

    def _show_view_table(self, report: ViewReport | None) -> None:
        """The view's columns, and its rows when there is a report (none: the view could not be computed)."""
        narrow = self._narrow()
        view = self.choice.view if report is None else _view_of(report)
        columns, rows = _view_table(view, report, narrow)
        table = self._set_columns(view, columns)
        for row in rows:
            table.add_row(*row)
        _size_columns(table)

    def _show_view_notes(self, report: ViewReport | None) -> None:
        lines = (verdict_lines(report.comparison) if isinstance(report, StrategiesReport)
                 else regime_lines(report) if isinstance(report, RegimesReport)
                 else _frontier_notes(report) if isinstance(report, FrontierReport)
                 else ledger_notes(report) if isinstance(report, TrackRecord) else [])
        self.query_one("#fit-notes", Static).update("\n".join(lines))

    def _show_view_plot(self, report: ViewReport | None) -> None:
        widget = self.query_one("#fit-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        if isinstance(report, StrategiesReport):
            _plot_strategies(plt, report, 5 if widget.size.height >= TALL_PLOT else 3)
        elif isinstance(report, RegimesReport):
            _plot_regimes(plt, report)
        elif isinstance(report, FrontierReport):
            plot_frontier(plt, report, 5 if widget.size.height >= TALL_PLOT else 3)
            plt.xlabel(_frontier_axis_key(report))
        elif isinstance(report, TrackRecord):
            plot_ledger(plt, report)
        widget.refresh()

    # ----------------------------------------------------------------- drawing

    def _status(self, text: str) -> None:
        self.query_one("#fit-status", Static).update(text)

    def _summary(self, reports: tuple[FitReport, ...], complete: bool) -> str:
        r = reports[0]
        diverged = f", {r.n_diverged} diverged excluded" if r.n_diverged else ""
        boot = (f"{PANE_BOOTSTRAP} bootstrap resamples, 90% intervals" if complete
                else "bootstrap running: intervals and band follow")
        space = "" if r.law.loss_space == LOG else f", {r.law.loss_space} residuals"
        return (f"{r.source}: {r.formula}, x = {r.x_name} ({r.law.form}, {r.chosen_by}{space}); loss = {r.loss_label}; "
                f"{r.n_points} runs, {r.n_sizes} sizes{diverged}; {boot}")

    def _show_table(self, reports: tuple[FitReport, ...]) -> None:
        """A fit replaces the previous one wholesale (it is not a live per-run table), so rebuild.
        Wide: one line per curve, every column. Narrow: value over interval, the checks in the notes."""
        narrow = self._narrow()
        table = self._set_columns(LAW, NARROW_COLUMNS if narrow else TABLE_COLUMNS)
        for r in reports:
            if narrow:
                cells = [_cell(r, name, "\n") for name in ("E", "A", "alpha")]
                table.add_row(r.group or "all", r.law.form, *cells, key=r.group or "all", height=None)
            else:
                table.add_row(r.group or "all", r.law.form, _cell(r, "E"), _cell(r, "A"), _cell(r, "alpha"),
                              _heldout_cell(r, 1), _heldout_cell(r, 2), _stability_cell(r), key=r.group or "all")
        _size_columns(table)

    def _show_notes(self, message: FitPane.Fitted) -> None:
        lines = []
        for r in message.reports:
            who = f"{r.group}: " if r.group else ""
            held, held_two = r.heldout.leave_one, r.heldout.leave_two
            scored = [f"{s.form} {s.heldout_error:.3g}" for s in r.scores
                      if s.law is not None and math.isfinite(s.heldout_error)]
            if len(scored) > 1:
                lines.append(f"{who}held-out log error by form: {', '.join(scored)}")
            if held is not None:
                lines.append(f"{who}largest x={held.x_out[0]:.4g} left out: predicted {held.predicted[0]:.4g}, "
                             f"actual {held.actual[0]:.4g} ({held.rel_error[0]:.1%})")
            if held_two is not None:
                lines.append(f"{who}two largest left out: error up to {held_two.max_rel_error:.1%}")
            lines.append(f"{who}alpha over training: {describe_stability(r.stability)}")
            lines += [f"{who}warning: {w}" for w in r.warnings]
        lines += [f"skipped {s}" for s in message.skipped]
        self.query_one("#fit-notes", Static).update("\n".join(lines))

    def _show_plot(self, reports: tuple[FitReport, ...]) -> None:
        """Log-log by hand (plotext's own log axes fail on values below 1): log10 of every
        coordinate on linear axes, with ticks labelled in the original units."""
        widget = self.query_one("#fit-plot", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        for i, r in enumerate(reports):
            _plot_curve(plt, r, CURVE_MARKERS[i % len(CURVE_MARKERS)])
        if reports:
            xs = np.concatenate([r.xs[0] for r in reports])
            ys = np.concatenate([r.loss for r in reports])
            plt.xticks(*_log_ticks(xs))
            plt.yticks(*_log_ticks(ys, 5 if widget.size.height >= TALL_PLOT else 3))
            plt.xlabel(f"{reports[0].x_name} (log)")
            plt.ylabel(f"{reports[0].loss_label or 'loss'} (log)")
        widget.refresh()


def _size_columns(table: DataTable[Any]) -> None:
    """Widen each column to its widest cell line now. DataTable measures new rows only when it is next idle, and
    a frame drawn before that stays in its row cache (keyed by the update count, which the measuring does not
    bump): the refilled table could show the new cells clipped to the old widths until the cursor moved.
    Widths only grow, as DataTable's own measuring does, which still runs and agrees (the cells are plain text)."""
    for index, column in enumerate(table.columns.values()):
        widest = max((cell_len(line) for row in range(table.row_count)
                      for line in str(table.get_row_at(row)[index]).split("\n")), default=0)
        column.content_width = max(column.content_width, widest)


def _log_ticks(values: np.ndarray, n: int = 5) -> tuple[list[float], list[str]]:
    """n tick positions in log10 space spanning `values`, labelled with the values themselves."""
    lo, hi = math.log10(float(values.min())), math.log10(float(values.max()))
    ticks = np.linspace(lo, hi, n) if hi > lo else np.array([lo])
    return ticks.tolist(), [f"{10**t:.3g}" for t in ticks]


def _log(values: object) -> list[float]:
    return np.log10(np.asarray(values, dtype=float)).tolist()


def _plot_curve(plt: Any, r: FitReport, marker: str) -> None:
    """Points with their seed range, the law, the band, and the held-out prediction vs actual (log10 units)."""
    name = r.group or "mean over seeds"
    x = [p.x for p in r.points]
    # Drawn back to front: band, law, seed spread, points (later series overwrite earlier cells).
    band = r.band
    if band is not None and np.all(np.isfinite(band.lo)) and np.all(np.asarray(band.lo) > 0):
        for edge in (band.lo, band.hi):
            plt.plot(_log(band.x[0]), _log(edge), marker=".", color="gray")
    grid = np.geomspace(min(x), max(x), 60)
    plt.plot(_log(grid), _log(predict(r.law, grid)), marker="braille", label=f"fit {name}")
    for p in r.points:
        if p.hi > p.lo:  # the seed spread as a vertical segment
            plt.plot(_log([p.x, p.x]), _log([p.lo, p.hi]), marker="|")
    plt.scatter(_log(x), _log([p.mean for p in r.points]), marker=marker, label=name)
    held = r.heldout.leave_one
    if held is not None:
        plt.scatter(_log(held.x_out), _log(held.predicted), marker="x", label="held out: predicted")
        plt.scatter(_log(held.x_out), _log(held.actual), marker="o", label="held out: actual")


# ----------------------------------------------------------------------------- the strategies and regimes views


def _view_summary(report: ViewReport | None, complete: bool) -> str:
    boot = (f"{PANE_BOOTSTRAP} bootstrap resamples, 90% intervals" if complete
            else "bootstrap running: intervals follow")
    if isinstance(report, StrategiesReport):
        c = report.comparison
        target = f"target loss {c.target:.4g}" + ("" if c.target_given else " (lowest every strategy reached)")
        return (f"{report.experiment}: scaling strategies at equal FLOPs, L = {c.form} along each; {target}; "
                f"loss = {report.loss_label}; {report.n_runs} runs; {boot} over {report.unit}")
    if isinstance(report, RegimesReport):
        r = report.regimes
        return (f"{report.experiment}: L({report.x}) = {r.form} at each {r.axis}; {len(r.crossings)} crossing(s); "
                f"loss = {report.loss_label}; {len(r.table.sizes)} sizes, {report.n_runs} runs; {boot} over "
                f"{report.unit}")
    if isinstance(report, FrontierReport):
        drawn = (f"{report.n_resamples} bootstrap resamples, {report.level:.0%} intervals" if complete
                 else "bootstrap running: intervals follow")
        return (f"{report.experiment}: compute-optimal frontier, N = params, D = examples seen, "
                f"C = {report.k:.3g} N D; loss = {report.loss_label}; {report.n_runs} runs; {drawn}")
    return "nothing to show"


def _reason(exc: Exception) -> str:
    """An error's one line. The frontier service starts its lines with the CLI's flag (`--frontier: ...`), which
    means nothing in the app."""
    return str(exc).removeprefix(f"{FRONTIER_FLAG}: ")


def _view_of(report: ViewReport) -> str:
    return (PREDICTIONS if isinstance(report, TrackRecord) else REGIMES if isinstance(report, RegimesReport)
            else FRONTIER if isinstance(report, FrontierReport) else STRATEGIES)


def _view_table(view: str, report: ViewReport | None, narrow: bool) -> tuple[Sequence[str], Sequence[Sequence[str]]]:
    """A view's columns (fewer when narrow) and its rows (none without its report)."""
    if view == PREDICTIONS:
        return (NARROW_LEDGER_COLUMNS if narrow else LEDGER_COLUMNS,
                ledger_rows(report, narrow) if isinstance(report, TrackRecord) else [])
    if view == REGIMES:
        return (NARROW_REGIME_COLUMNS if narrow else REGIME_COLUMNS,
                _regime_rows(report, narrow) if isinstance(report, RegimesReport) else [])
    if view == FRONTIER:
        return (NARROW_FRONTIER_COLUMNS if narrow else FRONTIER_COLUMNS,
                _frontier_rows(report, narrow) if isinstance(report, FrontierReport) else [])
    return (NARROW_STRATEGY_COLUMNS if narrow else STRATEGY_COLUMNS,
            _strategy_rows(report, narrow) if isinstance(report, StrategiesReport) else [])


def _share(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0%}"


def _strategy_rows(report: StrategiesReport, narrow: bool) -> list[tuple[str, ...]]:
    c = report.comparison
    rows: list[tuple[str, ...]] = []
    for f in c.fits:
        share = _share(c.p_cheapest.get(f.strategy.name))
        if f.error is not None:
            rows.append((f.strategy.name, "not fitted", share) if narrow
                        else (f.strategy.name, "not fitted", "-", "-", f.error[:40], share))
            continue
        fit = f.fits[FLOPS]
        cost = f"{fit.cost:.3g}" if narrow else f"{fit.cost:.3g} {interval_text(*fit.cost_interval)}"
        rows.append((f.strategy.name, cost, share) if narrow else
                    (f.strategy.name, f"{fit.law.params.get('alpha', math.nan):.3g} "
                                      f"{interval_text(*fit.alpha_interval)}",
                     f"{fit.law.params.get('E', math.nan):.3g}", cost, fit.where, share))
    return rows


def _regime_rows(report: RegimesReport, narrow: bool) -> list[tuple[str, ...]]:
    r = report.regimes
    rows: list[tuple[str, ...]] = []
    for f, share in zip(r.fits, r.table.agreement(), strict=False):
        alpha = "-" if f.law is None else f"{f.alpha:.3g}"
        if narrow:
            rows.append((f"{f.regime:g}", alpha, _share(share)))
        else:
            e = "-" if f.law is None else f"{f.law.params.get('E', math.nan):.3g}"
            rows.append((f"{f.regime:g}", str(f.n_sizes), alpha, interval_text(*f.alpha_interval), e, _share(share)))
    return rows


def _frontier_rows(report: FrontierReport, narrow: bool) -> list[tuple[str, ...]]:
    """One row per budget: N_opt, D_opt, D/N and the frontier's loss, each with its interval (wide)."""
    rows: list[tuple[str, ...]] = []
    for b in report.budgets:
        if narrow:
            rows.append((f"{b.compute:.3g}", f"{b.n_opt:.4g}", f"{b.d_opt:.4g}"))
        else:
            rows.append((f"{b.compute:.3g}", f"{b.n_opt:.4g} {interval_text(*b.n_interval)}",
                         f"{b.d_opt:.4g} {interval_text(*b.d_interval)}", f"{b.d_per_n:.3g}",
                         f"{b.loss:.4g} {interval_text(*b.loss_interval, digits=4)}", budget_note(b)))
    return rows


def _frontier_axis_key(report: FrontierReport) -> str:
    """The x label, with a key short enough for 80 columns (the notes have the full one, each size's N)."""
    sizes = len({p.placement.n for p in report.points})
    digits = f"1-{sizes}" if sizes <= 9 else "1-9, o"  # plot_frontier's markers (the service refuses one size)
    return f"C (FLOPs, log); {digits}: sizes; X: closest"


def _frontier_notes(report: FrontierReport) -> list[str]:
    """The closest run first (the question the view answers), the plot's key, the law and the policy."""
    return [*closest_lines(report), frontier_key(report), law_line(report), policy_line(report),
            report.compute_text, *(f"warning: {w}" for w in report.warnings)]


def _plot_strategies(plt: Any, report: StrategiesReport, n_ticks: int) -> None:
    """Log-log: every size's mean loss against its FLOPs, the cheapest strategy's law and the diagonal's, and the
    target loss as a horizontal line."""
    c = report.comparison
    cells = {cell: (fl, loss) for f in c.fits for cell, _, fl, loss in f.cells}
    if not cells:
        return
    xs = np.array([v[0] for v in cells.values()])
    ys = np.array([v[1] for v in cells.values()])
    plt.scatter(_log(xs), _log(ys), marker="dot", label="sizes (mean over seeds)")
    shown = [f for f in c.fits if FLOPS in f.fits and (f.strategy.name == c.cheapest
                                                       or f.strategy.kind not in (WIDTH, DEPTH))]
    for f in shown:
        fit = f.fits[FLOPS]
        grid = np.geomspace(float(xs.min()), float(xs.max()), 60)
        plt.plot(_log(grid), _log(predict(fit.law, grid)), marker="braille", label=f.strategy.name)
    plt.plot(_log([xs.min(), xs.max()]), _log([c.target, c.target]), marker="-", color="gray",
             label=f"target {c.target:.3g}")
    plt.xticks(*_log_ticks(xs, n_ticks))
    plt.yticks(*_log_ticks(np.append(ys, c.target), n_ticks))
    plt.xlabel("training FLOPs (log)")
    plt.ylabel(f"{report.loss_label} (log)")


def _plot_regimes(plt: Any, report: RegimesReport) -> None:
    """alpha at each regime with its interval (linear axes)."""
    fits = [f for f in report.regimes.fits if f.law is not None and math.isfinite(f.alpha)]
    if not fits:
        return
    steps = [f.regime for f in fits]
    lo_hi = [f.alpha_interval for f in fits]
    if all(math.isfinite(lo) for lo, _ in lo_hi):
        plt.plot(steps, [lo for lo, _ in lo_hi], marker=".", color="gray")
        plt.plot(steps, [hi for _, hi in lo_hi], marker=".", color="gray", label="90% interval")
    plt.plot(steps, [f.alpha for f in fits], marker="braille", label="alpha")
    plt.xlabel(report.regimes.axis)
    plt.ylabel("alpha")
