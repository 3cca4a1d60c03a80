"""The runs table: grouped by width, ranked by depth, updated in place keyed by run id.

A live table is never cleared: rows are added when runs appear, cells are updated only when their
text changed (each row remembers the cells it last showed), rows leave only when a filter hides
them, and the rows are re-sorted only when the order actually changed. So the cursor stays on the
selected run while everything around it updates, and a tick with three changed runs touches three
rows, not five hundred.

Why cells are patched here rather than with `DataTable.update_cell`: that call drops every cached
render of the table (its caches are keyed by one table-wide update counter), so one changed cell made
the next paint render every visible cell again, and with `update_width` it measured the whole column
(500 cells) whenever the new text was narrower. Profiled at 500 runs, 160x48 (benchmarks/app_poll.py,
under cProfile): ~100 ms of column measuring and ~200 ms of cell rendering per tick. A patched cell
drops only its own cached render and its row's, and repaints only that row. A column widens when a cell
outgrows it and does not narrow during live updates (a column that once held a wide value keeps its
width). This reaches into `DataTable`'s caches (textual 8.x, pinned below 9); tests/tui/test_redraw.py
fails if a patched row were painted from a stale cache.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.tui.compare import rich_color
from scaletui.tui.model import Delta, fmt_count, fmt_loss, matches, order_runs, size_deltas
from scaletui.tui.poller import Forecast
from scaletui.tui.state import SweepState
from scaletui.tui.view import View

STATUS_STYLE: dict[RunStatus, str] = {
    RunStatus.RUNNING: "bold cyan", RunStatus.DONE: "green", RunStatus.EARLY_STOPPED: "green",
    RunStatus.QUEUED: "dim", RunStatus.DIVERGED: "bold red", RunStatus.FAILED: "bold red",
    RunStatus.INTERRUPTED: "yellow", RunStatus.STALE: "yellow",
}  # fmt: skip
STATUS_SHORT: dict[RunStatus, str] = {RunStatus.RUNNING: "run", RunStatus.EARLY_STOPPED: "early",
                                      RunStatus.DIVERGED: "diverg", RunStatus.INTERRUPTED: "intr"}
#: (text, style) of each status's cell, made once: the table redraws every row's cells on every tick.
STATUS_CELL: dict[RunStatus, tuple[str, str]] = {
    s: (STATUS_SHORT.get(s, s.value), STATUS_STYLE.get(s, "")) for s in RunStatus
}
MIXED = "mixed"  # the test column's label when the runs shown use different loss rules


def columns(loss_rule: LossRule | str | None, across: str) -> list[tuple[str, str]]:
    """(key, label); the test column names the loss rule (or MIXED), the delta column the axis it
    compares along. Most telling first: at 80 columns `best` and `params` are the ones that scroll off."""
    rule = loss_rule or LossRule.FINAL
    return [
        ("id", "id"), ("width", "w"), ("depth", "d"), ("seed", "s"), ("status", "status"),
        ("step", "step"), ("train", "train"), ("test", f"test {rule}"), ("pred", "pred"),
        ("delta", f"Δ {across}"),
        ("alerts", "alerts"), ("best", "best"), ("params", "params"),
    ]  # fmt: skip


def _forecast_cell(forecast: Forecast | None) -> str:
    """`pred. final`: the run's final loss as last predicted (services.curve_forecasts). Its band is on
    the loss plot and in the ledger: the table has no room for it at 160 columns."""
    return "" if forecast is None else fmt_loss(forecast.predicted)


def _delta_cell(delta: Delta | None) -> Text:
    if delta is None:
        return Text("")
    mark = "▲" if delta.worse else " "  # ▲: the larger model is worse
    return Text(f"{delta.value:+.3f}{mark}", style="bold red" if delta.worse else "green")


@dataclass(frozen=True)
class MarkedId:
    """A marked run's id cell: the id, then a dot in the colour of its curve in the loss pane. It keeps
    the id, because the table sorts its rows by this column's values (`RunsTable._reorder`)."""

    run_id: int
    color: str

    def __rich__(self) -> Text:
        return Text.assemble(str(self.run_id), (" ●", self.color))

    def __str__(self) -> str:
        return f"{self.run_id} ●"


def _id_cell(run_id: int, mark: int | None) -> int | MarkedId:
    return run_id if mark is None else MarkedId(run_id, rich_color(mark))


def _run_id(cell: int | MarkedId) -> int:
    return cell.run_id if isinstance(cell, MarkedId) else cell


def row_cells(run: RunSummary, state: SweepState, delta: Delta | None, mark: int | None = None) -> tuple[object, ...]:
    """The cells of a run's row; `mark`: its colour slot when it is marked for comparison."""
    step = f"{fmt_count(run.step or 0)}/{fmt_count(run.steps)}" if run.steps else fmt_count(run.step or 0)
    text, style = STATUS_CELL[run.status]
    status = Text(text, style=style)
    badges = state.badges.get(run.id, "")
    return (
        _id_cell(run.id, mark), run.width, run.depth, run.seed, status, step, fmt_loss(state.train_loss(run)),
        fmt_loss(state.test_loss(run)), _forecast_cell(state.forecasts.get(run.id)), _delta_cell(delta),
        Text(badges, style="bold yellow") if badges else "",
        fmt_loss(state.best_loss(run)), fmt_count(run.params),
    )  # fmt: skip


def rows_to_recompute(visible: Sequence[int], changed: Collection[int] | None, shown: Collection[int],
                      deltas: Mapping[int, Delta], shown_deltas: Mapping[int, Delta]) -> list[int]:
    """The visible runs whose cells may differ from those shown: every one when `changed` is None (the
    view or the alerts changed), else the runs whose data changed, those not shown yet, and those whose
    size delta moved (a neighbour finished or changed its loss)."""
    if changed is None:
        return list(visible)
    return [run_id for run_id in visible
            if run_id in changed or run_id not in shown or deltas.get(run_id) != shown_deltas.get(run_id)]


STATIC_SORTS = ("rank", "id")  # orders by what a run never changes (its shape, seed and id)


def order_may_change(sort: str, changed: Collection[int] | None, rows_changed: bool) -> bool:
    """Whether the rows must be ordered again: not when only the data of shown runs changed and the
    table is sorted by what a run never changes (re-sorting 500 runs on every poll was most of a sync)."""
    return changed is None or rows_changed or sort not in STATIC_SORTS


def cell_width(cell: object) -> int:
    """Columns a cell's text takes (what `DataTable` measures for one-line rows of these cell types)."""
    return cell.cell_len if isinstance(cell, Text) else Text(str(cell)).cell_len


class RunsTable(DataTable[object]):
    """The sweep's runs; the cursor row is the selected run."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: dict[int, tuple[object, ...]] = {}
        self._deltas: dict[int, Delta] = {}  # the size deltas the shown cells were made from
        self._order: list[int] = []
        self._patched: dict[RowKey, set[ColumnKey]] = {}  # cells patched in place during this sync (renders stale)
        self._header: tuple[LossRule | str | None, str] | None = None

    def run_ids(self) -> list[int]:
        """The runs shown, in display order."""
        return list(self._order)

    def selected_run(self) -> int | None:
        if not self._order or self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def sync(self, state: SweepState, view: View, changed: Collection[int] | None = None) -> None:
        """Make the rows match the state: add, update changed cells, remove hidden, re-sort. `changed`:
        the runs whose data changed since the last sync (None: anything may have, check every row)."""
        self._ensure_columns(state, view)
        runs = [r for r in state.runs.values() if view.experiment is None or r.experiment == view.experiment]
        deltas = size_deltas(runs, view.across)
        visible = [r for r in runs if not view.query or matches(r, state.badges.get(r.id, ""), view.query)]
        by_id = {r.id: r for r in visible}
        rows_before = len(self._shown)
        for run_id in rows_to_recompute(list(by_id), changed, self._shown, deltas, self._deltas):
            self._show(by_id[run_id], row_cells(by_id[run_id], state, deltas.get(run_id), view.marks.get(run_id)))
        self._deltas = deltas
        added = len(self._shown) != rows_before
        gone = set(self._shown) - set(by_id)
        for run_id in gone:
            self.remove_row(str(run_id))
            del self._shown[run_id]
        self._forget_patched_renders()
        if order_may_change(view.sort, changed, bool(added or gone)):
            losses = {r.id: state.test_loss(r) for r in visible}
            self._reorder(order_runs(visible, losses, view.sort, view.group_by, view.reverse))

    def _ensure_columns(self, state: SweepState, view: View) -> None:
        """Columns are added once; only the labels naming the loss rule and the delta axis change."""
        rules = {r.loss_rule for r in state.runs.values() if view.experiment in (None, r.experiment)}
        rule = rules.pop() if len(rules) == 1 else (MIXED if rules else None)
        header = (rule, view.across)
        if header == self._header:
            return
        if self._header is None:
            for key, label in columns(rule, view.across):
                self.add_column(label, key=key)
        else:
            for key, label in columns(rule, view.across):
                self.columns[ColumnKey(key)].label = Text(label)
            self.refresh()
        self._header = header

    def _show(self, run: RunSummary, cells: tuple[object, ...]) -> None:
        old = self._shown.get(run.id)
        if old == cells:
            return
        if old is None:
            self.add_row(*cells, key=str(run.id))
        else:
            for (key, _), before, after in zip(columns(None, "depth"), old, cells, strict=True):
                if before != after:
                    self._set_cell(run.id, key, after)
        self._shown[run.id] = cells

    def _set_cell(self, run_id: int, column: str, cell: object) -> None:
        """Update one cell: in place when it fits its column, else through `update_cell` (which widens
        the column and redraws the whole table)."""
        if cell_width(cell) > self.columns[ColumnKey(column)].content_width:
            self.update_cell(str(run_id), column, cell, update_width=True)
            return
        row, key = RowKey(str(run_id)), ColumnKey(column)
        self._data[row][key] = cell
        self._patched.setdefault(row, set()).add(key)

    def _forget_patched_renders(self) -> None:
        """Drop the cached renders of the cells patched in place, and of their rows' strips, and repaint
        just those rows. The caches are keyed by row and column key (cells), row key (row strips), row
        index (renderables) and screen line (lines: few, cheap to rebuild from the row strips, so all go)."""
        if not self._patched:
            return
        patched, self._patched = self._patched, {}
        indices = {self.get_row_index(row) for row in patched}
        for cell_key in [k for k in tuple(self._cell_render_cache.keys()) if k[1] in patched.get(k[0], ())]:
            self._cell_render_cache.discard(cell_key)
        for row_key in [k for k in tuple(self._row_render_cache.keys()) if k[0] in patched]:
            self._row_render_cache.discard(row_key)
        for renderables_key in [k for k in tuple(self._row_renderable_cache.keys()) if k[1] in indices]:
            self._row_renderable_cache.discard(renderables_key)
        self._line_cache.clear()
        for index in indices:
            self.refresh_row(index)

    def _reorder(self, order: Sequence[int]) -> None:
        if list(order) == self._order:
            return
        selected = self.selected_run()
        rank: Mapping[int, int] = {run_id: i for i, run_id in enumerate(order)}
        self._order = list(order)
        self.sort("id", key=lambda cell: rank.get(_run_id(cell), len(rank)))
        if selected is not None and selected in rank:
            self.move_cursor(row=self.get_row_index(str(selected)), scroll=True)
