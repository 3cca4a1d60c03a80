"""The runs dashboard: the runs table and the detail panes of the selected run (loss, gradients,
alerts, events).

This region owns what follows from the selection: which run is selected (the one training, until the
user moves the cursor), asking the poller for its curves (`track`), and which pane redraws when an
applied snapshot changed its inputs. It also keeps the poller reading what the marked runs need (their
compared metric and their metric names, `compare`) and draws them side by side in the loss pane. What
the user chose (order, filter, experiment, pane, plot options, marks) is the app's `View`, the data is
the app's `SweepState`; the dashboard reads both and writes only the selection and the marks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import DataTable

from scaletui.tui.compare import shown_metric
from scaletui.tui.model import rank_key, run_to_follow
from scaletui.tui.state import Changes, SweepState
from scaletui.tui.view import View
from scaletui.tui.widgets.alerts_pane import AlertsPane
from scaletui.tui.widgets.events_pane import EventsPane
from scaletui.tui.widgets.grad_pane import GradPane
from scaletui.tui.widgets.loss_pane import Comparison, LossPane
from scaletui.tui.widgets.runs_table import RunsTable

Track = Callable[[int | None, Iterable[int]], None]  # read these runs' curves from now on
Compare = Callable[[Iterable[int], str | None], None]  # read this metric (and the metric names) of these runs


class Dashboard(Container):
    """The runs table beside (wide) or above (narrow: one at a time, `-pane-NAME`) the detail panes."""

    def __init__(self, state: SweepState, view: View, track: Track, compare: Compare, *,
                 id: str | None = None) -> None:
        super().__init__(id=id, classes=f"-pane-{view.pane}")
        self.state = state
        self.view = view
        self.track = track
        self.compare = compare
        self.compared: tuple[frozenset[int], str | None] = (frozenset(), None)  # what the poller was asked for

    def compose(self) -> ComposeResult:
        yield RunsTable(id="runs-table")
        yield LossPane(id="loss-pane", classes="detail")
        yield GradPane(id="grad-pane", classes="detail")
        yield AlertsPane(id="alerts-pane", classes="detail")
        yield EventsPane(id="events-pane", classes="detail")

    def on_mount(self) -> None:
        self.events_pane.border_title = "events"

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    @property
    def loss_pane(self) -> LossPane:
        return self.query_one(LossPane)

    @property
    def grad_pane(self) -> GradPane:
        return self.query_one(GradPane)

    @property
    def alerts_pane(self) -> AlertsPane:
        return self.query_one(AlertsPane)

    @property
    def events_pane(self) -> EventsPane:
        return self.query_one(EventsPane)

    # ----------------------------------------------------------------- redrawing

    def redraw(self, changes: Changes) -> None:
        """Redraw what an applied snapshot changed."""
        if changes.runs or changes.alerts or changes.experiments:
            # Badges (alerts) and the experiment shown touch any row; otherwise only the changed runs' rows.
            self.sync_table(None if changes.alerts or changes.experiments else changes.runs)
        selected = self.view.selected
        self.follow_training()
        if changes.metric_keys:
            self.sync_compared()  # the first metric names of a marked run decide the metric shown
        if self._loss_inputs_changed(changes, selected):
            self.show_loss()
        if changes.layers:
            self.grad_pane.show(self.state)
        if changes.alerts:
            self.show_alerts()
        if changes.events:
            self.events_pane.log_events(changes.events, self.state.runs)

    def sync_table(self, changed: Collection[int] | None = None) -> None:
        """Update the table's rows; `changed`: only these runs' data changed (None: check every row)."""
        self.table.sync(self.state, self.view, changed)

    def show_alerts(self) -> None:
        self.alerts_pane.show(self.state.alerts, self.view.experiment)

    def _loss_inputs_changed(self, changes: Changes, selected: int | None) -> bool:
        if self.view.marks:
            return changes.metric_keys or bool(changes.series & set(self.view.marks))
        return self.view.selected == selected and selected in changes.series

    def show_loss(self) -> None:
        view = self.view
        group = self.state.group_of(view.selected, view.group_by) if view.selected is not None else []
        self.loss_pane.show(self.state, view.selected, group, log_y=view.log_y, smooth=view.smooth,
                            comparison=self.comparison())

    # ----------------------------------------------------------------- runs compared side by side

    def shown_metric(self) -> str | None:
        """The metric compared: the user's choice, else the best default of those the marked runs logged."""
        return shown_metric(self.state.compared_metrics(self.view.marks), self.view.metric)

    def comparison(self) -> Comparison | None:
        marks = self.view.marks
        if not marks:
            return None
        return Comparison(tuple(sorted(marks.items(), key=lambda item: item[1])), self.shown_metric())

    def sync_compared(self) -> None:
        """Ask the poller for the marked runs and their metric (from the next poll, which comes at once),
        if that changed: marks, the user's metric, or the metric names that decide the default one."""
        wanted = (frozenset(self.view.marks), self.shown_metric() if self.view.marks else None)
        if wanted != self.compared:
            self.compared = wanted
            self.compare(*wanted)

    def marks_changed(self) -> None:
        self.sync_table()  # the mark in each run's id cell
        self.sync_compared()
        self.show_loss()

    def toggle_mark(self) -> None:
        """Mark the selected run (or unmark it)."""
        if self.view.selected is not None:
            self.view.toggle_mark(self.view.selected)
            self.marks_changed()

    def toggle_group_marks(self) -> None:
        """Mark the selected run's group as the table groups it (same width, or same depth), among the runs
        shown; unmark it when all of it is marked."""
        run = self.state.runs.get(self.view.selected) if self.view.selected is not None else None
        if run is None:
            return
        group = rank_key(run, self.view.group_by)[:3]  # experiment, arch, width (or depth)
        shown = [self.state.runs[i] for i in self.table.run_ids() if i in self.state.runs]
        self.view.toggle_marks(r.id for r in shown if rank_key(r, self.view.group_by)[:3] == group)
        self.marks_changed()

    def clear_marks(self) -> None:
        self.view.clear_marks()
        self.marks_changed()

    def next_metric(self) -> str | None:
        """The next metric the marked runs logged; returns it (None: nothing marked or logged)."""
        present = self.state.compared_metrics(self.view.marks)
        if not self.view.marks or not present:
            return None
        self.view.next_metric(present, self.shown_metric())
        self.sync_compared()
        self.show_loss()
        return self.view.metric

    def next_pane(self) -> None:
        """Under 100 columns: show the next detail pane."""
        self.remove_class(f"-pane-{self.view.pane}")
        self.view.next_pane()
        self.add_class(f"-pane-{self.view.pane}")

    # ----------------------------------------------------------------- the selection

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "runs-table" or not self.app.is_running:
            return
        run_id = self.table.selected_run()
        # The cursor now, not the event's key: rows may have moved since. The dashboard itself moves the
        # cursor only onto the selected run, so another run under it is the user's doing.
        if run_id != self.view.selected:
            self.view.follow = False
        self.select(run_id)

    def follow_training(self) -> None:
        """Until the user moves the cursor, select the run worth watching: one that is training, else the
        latest (`run_to_show`); a selection that still trains, or with nothing training, is kept."""
        table = self.table
        target = self._run_to_follow(table.run_ids())
        if target is not None and target != self.view.selected:
            self.select(target)  # before the cursor moves, so its highlight event is not the user's
            table.move_cursor(row=table.get_row_index(str(target)), scroll=True)
        elif self.view.selected is None or self.view.selected not in self.state.runs:
            self.select(table.selected_run())

    def _run_to_follow(self, shown: list[int]) -> int | None:
        if not self.view.follow:
            return None
        runs, selected = self.state.runs, self.view.selected
        current = runs.get(selected) if selected is not None and selected in shown else None
        return run_to_follow([runs[i] for i in shown if i in runs], current)

    def select(self, run_id: int | None) -> None:
        """Show `run_id`'s curves and layers (from the next poll, which comes at once)."""
        if run_id == self.view.selected:
            return
        self.view.selected = run_id
        self.track(run_id, self.state.group_of(run_id, self.view.group_by) if run_id is not None else [])
        self.show_loss()
        self.grad_pane.show(self.state)

    def reselect(self) -> None:
        """The comparison group changed (grouping flipped): select the cursor's run anew, with its new group."""
        self.view.selected = None
        self.select(self.table.selected_run())
