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

from scaletui.tui.model import Delta, RunRow, fmt_count, fmt_loss, matches, order_runs, size_deltas
from scaletui.tui.state import ViewState

STATUS_STYLE = {
    "running": "bold cyan", "done": "green", "early_stopped": "green", "queued": "dim",
    "diverged": "bold red", "failed": "bold red", "interrupted": "yellow", "stale": "yellow",
}  # fmt: skip
STATUS_SHORT = {"running": "run", "early_stopped": "early", "diverged": "diverg", "interrupted": "intr"}


@dataclass(frozen=True)
class TableView:
    """How the table is ordered and filtered (changed by keys)."""

    group_by: str = "width"  # width: grouped by width, ranked by depth; depth: the other way round
    sort: str = "rank"
    reverse: bool = False
    query: str = ""
    experiment: str | None = None  # None: every experiment in the database

    @property
    def across(self) -> str:
        """The axis runs are ranked along within a group: deltas compare along it."""
        return "depth" if self.group_by == "width" else "width"


def columns(loss_rule: str | None, across: str) -> list[tuple[str, str]]:
    """(key, label); the test column names the loss rule, the delta column the axis it compares along.
    Most telling first: at 80 columns `best` and `params` are the ones that scroll off."""
    rule = loss_rule or "final"
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


def row_cells(run: RunRow, state: ViewState, delta: Delta | None) -> tuple[object, ...]:
    step = f"{fmt_count(run.step or 0)}/{fmt_count(run.steps)}" if run.steps else fmt_count(run.step or 0)
    status = Text(STATUS_SHORT.get(run.status, run.status), style=STATUS_STYLE.get(run.status, ""))
    badges = state.badges.get(run.id, "")
    return (
        run.id, run.width, run.depth, run.seed, status, step, fmt_loss(state.train_loss(run)),
        fmt_loss(state.test_loss(run)), _delta_cell(delta), Text(badges, style="bold yellow") if badges else "",
        fmt_loss(state.best_loss(run)), fmt_count(run.params),
    )  # fmt: skip


class RunsTable(DataTable[object]):
    """The sweep's runs; the cursor row is the selected run."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.view = TableView()
        self._shown: dict[int, tuple[object, ...]] = {}
        self._order: list[int] = []
        self._header: tuple[str | None, str] | None = None

    def run_ids(self) -> list[int]:
        """The runs shown, in display order."""
        return list(self._order)

    def selected_run(self) -> int | None:
        if not self._order or self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def sync(self, state: ViewState, view: TableView) -> None:
        """Make the rows match the state: add, update changed cells, remove hidden, re-sort."""
        self._ensure_columns(state, view)
        runs = [r for r in state.runs.values() if view.experiment is None or r.experiment == view.experiment]
        deltas = size_deltas(runs, view.across)
        visible = [r for r in runs if not view.query or matches(r, state.badges.get(r.id, ""), view.query)]
        for run in visible:
            self._show(run, row_cells(run, state, deltas.get(run.id)))
        for gone in set(self._shown) - {r.id for r in visible}:
            self.remove_row(str(gone))
            del self._shown[gone]
        losses = {r.id: state.test_loss(r) for r in visible}
        self._reorder(order_runs(visible, losses, view.sort, view.group_by, view.reverse))

    def _ensure_columns(self, state: ViewState, view: TableView) -> None:
        """Columns are added once; only the labels naming the loss rule and the delta axis change."""
        rules = {r.loss_rule for r in state.runs.values() if view.experiment in (None, r.experiment)}
        rule = rules.pop() if len(rules) == 1 else ("mixed" if rules else None)
        header = (rule, view.across)
        if header == self._header:
            return
        if self._header is None:
            for key, label in columns(rule, view.across):
                self.add_column(label, key=key)
        else:
            for key, label in columns(rule, view.across):
                self.columns[key].label = Text(label)  # type: ignore[index]
            self.refresh()
        self._header = header

    def _show(self, run: RunRow, cells: tuple[object, ...]) -> None:
        old = self._shown.get(run.id)
        if old == cells:
            return
        if old is None:
            self.add_row(*cells, key=str(run.id))
        else:
            for (key, _), before, after in zip(columns(None, "depth"), old, cells):
                if before != after:
                    self.update_cell(str(run.id), key, after, update_width=True)
        self._shown[run.id] = cells

    def _reorder(self, order: Sequence[int]) -> None:
        if list(order) == self._order:
            return
        selected = self.selected_run()
        rank: Mapping[int, int] = {run_id: i for i, run_id in enumerate(order)}
        self._order = list(order)
        self.sort("id", key=lambda run_id: rank.get(run_id, len(rank)))
        if selected is not None and selected in rank:
            self.move_cursor(row=self.get_row_index(str(selected)), scroll=True)
