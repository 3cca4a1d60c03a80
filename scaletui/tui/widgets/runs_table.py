"""The runs table: grouped by width, ranked by depth, updated in place keyed by run id.

A live table is never cleared: rows are added when runs appear, cells are updated only when their
text changed (each row remembers the cells it last showed), rows leave only when a filter hides
them, and the rows are re-sorted only when the order actually changed. So the cursor stays on the
selected run while everything around it updates, and a tick with three changed runs touches three
rows, not five hundred.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import LossRule, RunStatus
from scaletui.tui.compare import rich_color
from scaletui.tui.model import Delta, fmt_count, fmt_loss, matches, order_runs, size_deltas
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
        ("step", "step"), ("train", "train"), ("test", f"test {rule}"), ("delta", f"Δ {across}"),
        ("alerts", "alerts"), ("best", "best"), ("params", "params"),
    ]  # fmt: skip


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
        fmt_loss(state.test_loss(run)), _delta_cell(delta), Text(badges, style="bold yellow") if badges else "",
        fmt_loss(state.best_loss(run)), fmt_count(run.params),
    )  # fmt: skip


class RunsTable(DataTable[object]):
    """The sweep's runs; the cursor row is the selected run."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: dict[int, tuple[object, ...]] = {}
        self._order: list[int] = []
        self._header: tuple[LossRule | str | None, str] | None = None

    def run_ids(self) -> list[int]:
        """The runs shown, in display order."""
        return list(self._order)

    def selected_run(self) -> int | None:
        if not self._order or self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def sync(self, state: SweepState, view: View) -> None:
        """Make the rows match the state: add, update changed cells, remove hidden, re-sort."""
        self._ensure_columns(state, view)
        runs = [r for r in state.runs.values() if view.experiment is None or r.experiment == view.experiment]
        deltas = size_deltas(runs, view.across)
        visible = [r for r in runs if not view.query or matches(r, state.badges.get(r.id, ""), view.query)]
        for run in visible:
            self._show(run, row_cells(run, state, deltas.get(run.id), view.marks.get(run.id)))
        for gone in set(self._shown) - {r.id for r in visible}:
            self.remove_row(str(gone))
            del self._shown[gone]
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
                    self.update_cell(str(run.id), key, after, update_width=True)
        self._shown[run.id] = cells

    def _reorder(self, order: Sequence[int]) -> None:
        if list(order) == self._order:
            return
        selected = self.selected_run()
        rank: Mapping[int, int] = {run_id: i for i, run_id in enumerate(order)}
        self._order = list(order)
        self.sort("id", key=lambda cell: rank.get(_run_id(cell), len(rank)))
        if selected is not None and selected in rank:
            self.move_cursor(row=self.get_row_index(str(selected)), scroll=True)
