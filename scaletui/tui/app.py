"""ScaleApp: the live view of a sweep, keyboard-first, pleasant at 80x24 and on a wide terminal.

The app composes the screen's regions and routes keys to them; each concern lives in its own module:

* regions: `Dashboard` (the runs table and the selected run's loss, gradient, alerts and events panes;
  it owns the selection), `GridView`, `FitView` (the fit pane, mounted on first use), `StatusBar`,
  the filter box and `KeysFooter`;
* `View` (view.py): every choice the user made about what is shown; `SweepState` (state.py): the data;
* `PollLoop` (polling.py) over `Poller` (poller.py): reading the database;
* `SweepControl` (sweep_control.py): the app's own sweep subprocess, and the signals that stop it;
* `show_proposal` (proposal.py): the configurator's proposal for the next width.

How it stays responsive while the machine trains:

* The app only ever *reads* the database (`Poller` over the `Tracker` of `scaletui.services`). A sweep
  started by this app and a sweep started in another terminal look the same to it: rows appearing in SQLite.
* Reading happens in one thread worker that polls about twice a second and posts one immutable
  `Snapshot` per poll; the UI thread applies it inside `batch_update()`. The poller waits until its
  snapshot was applied before reading again, so snapshots never pile up behind a busy UI.
* Training never runs here: the start key launches `scaletui run --headless` as a subprocess (its
  own session, output to a log file next to the database) from a thread worker; stopping sends it
  SIGINT, after which its runs flush, checkpoint and become `interrupted` (resumable). Stopping one
  run asks that run's worker: by signal on this host, through the database elsewhere (a Ray sweep).
* Nothing here imports torch, so the first frame appears as fast as textual can draw it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input
from textual.worker import Worker, WorkerState

from scaletui.core.rows import RunSummary
from scaletui.tui.keys import FIT_KEYS, help_rows
from scaletui.tui.messages import SnapshotReady, SweepExited, SweepFailedToStart, SweepStarted
from scaletui.tui.poller import Poller, Snapshot
from scaletui.tui.polling import POLL_GROUP, POLL_INTERVAL_S, PollLoop
from scaletui.tui.proposal import show_proposal
from scaletui.tui.screens.modals import ConfirmScreen, HelpScreen
from scaletui.tui.state import Changes, SweepState
from scaletui.tui.sweep_control import SWEEP_GROUP, SweepControl
from scaletui.tui.view import View
from scaletui.tui.widgets.dashboard import Dashboard
from scaletui.tui.widgets.fit_view import FitView
from scaletui.tui.widgets.footer import KeysFooter
from scaletui.tui.widgets.grid_view import GridView
from scaletui.tui.widgets.status_bar import StatusBar, status_line

NARROW_BELOW = 100  # columns: below this the dashboard shows one detail pane at a time
POLL_RETRY_S = 2.0  # a poll loop that failed starts again after this
MORE_KEYS = [
    ("up/down, pgup/pgdn", "select a run (or an alert in the alerts pane)"),
    ("tab", "next pane"),
    ("ctrl+p", "command palette (theme, screenshot, keys)"),
]
FIT_VIEW_KEYS = [*help_rows(FIT_KEYS), ("1", "back to the runs dashboard")]
QUIT_QUESTION = ("This app's sweep is still training. Stop it cleanly (its runs become `interrupted` and "
                 "resume with `r` or `scaletui run`) and quit?")


class ScaleApp(App[int]):
    """The app over one database; `sweep_file` enables starting (or resuming) that sweep."""

    CSS_PATH = "scaletui.tcss"
    TITLE = "scaletui"

    # The footer shows the first keys that fit (most used first; at 80 columns: q to /; wider: m and v
    # too); the rest are show=False and listed, with every other key, by the help screen (`?`), which
    # reads the tooltips.
    BINDINGS = [
        Binding("q", "quit_app", "quit", tooltip="quit (while this app's sweep trains: asks, stops it cleanly, "
                "so its runs become interrupted, waits, then quits)"),
        Binding("question_mark", "help", "help", tooltip="help: every key"),
        Binding("r", "start_sweep", "run", tooltip="start or resume the sweep in the sweep file"),
        Binding("p", "cycle_pane", "pane", tooltip="next detail pane: loss, gradients, alerts, events"),
        Binding("1", "show_view('dashboard')", "runs", tooltip="view: the runs dashboard"),
        Binding("g", "show_view('grid')", "grid", tooltip="view: depth x width grid of the final loss"),
        Binding("f", "show_view('fit')", "fit", tooltip="view: the scaling-law fit (its own keys below)"),
        Binding("l", "toggle_log", "log y", tooltip="loss plot: log or linear y (log at start)"),
        Binding("slash", "filter", "filter", tooltip="filter runs, every term must match (w64 d8 running div); "
                "enter keeps the filter, esc clears it"),
        Binding("m", "toggle_mark", "mark",
                tooltip="mark the selected run (or unmark it): marked runs are compared in the loss plot"),
        Binding("v", "next_metric", "metric",
                tooltip="next metric compared for the marked runs: train_loss, test_loss, then any logged"),
        Binding("M", "toggle_group_marks", "mark group", show=False,
                tooltip="mark the selected run's group (its width, or depth with t); again: unmark it"),
        Binding("u", "clear_marks", "unmark all", show=False,
                tooltip="unmark every run (back to the selected run's loss)"),
        Binding("e", "toggle_smooth", "EMA", show=False, tooltip="loss plot: debiased-EMA smoothing of the train loss"),
        Binding("space", "toggle_pause", "pause", show=False, tooltip="pause or resume live updates"),
        Binding("n", "next_experiment", "experiment", show=False, tooltip="next experiment (or all of them)"),
        Binding("t", "flip_grouping", "width/depth", show=False,
                tooltip="group by width ranked by depth, or by depth ranked by width"),
        Binding("o", "cycle_sort", "sort", show=False,
                tooltip="next sort column: rank, loss, params, status, step, id"),
        Binding("O", "reverse_sort", "reverse", show=False, tooltip="reverse the sort"),
        Binding("s", "suggest", "suggest lr", show=False,
                tooltip="configurator: learning rate and experiments.toml fragment for the next width"),
        Binding("k", "stop_run", "stop run", show=False,
                tooltip="stop the selected run (it checkpoints and becomes interrupted)"),
        Binding("X", "stop_sweep", "stop sweep", show=False,
                tooltip="stop this app's sweep (its runs checkpoint and become interrupted; r resumes)"),
        Binding("escape", "clear_filter", "clear filter", show=False, tooltip="clear the filter"),
    ]

    def __init__(self, db_path: str | Path, sweep_file: str | Path | None = None, *, experiment: str | None = None,
                 start: bool = False, poll_interval: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.time,
                 autopoll: bool = True, run_args: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.clock = clock
        self.autopoll = autopoll
        self.start_on_mount = start
        self.state = SweepState()
        self.view = View.preferring(experiment)  # until the database says whether it has that experiment
        self.polling = PollLoop(self, Poller(self.db_path, clock), poll_interval)
        self.sweep = SweepControl(self, self.db_path, Path(sweep_file) if sweep_file else None, run_args,
                                  changed=self._show_status)

    # ----------------------------------------------------------------- layout and regions

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="dashboard", id="views"):
            yield Dashboard(self.state, self.view, self.polling.track, self.polling.compare, id="dashboard")
            yield GridView(id="grid")
            yield FitView(self.db_path, id="fit")
        yield Input(id="filter", placeholder="filter runs: e.g. w64 d8 running div (enter keeps, esc clears)")
        yield StatusBar("", id="status-bar", markup=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self._set_narrow(self.size.width)
        self.dashboard.table.focus()
        self.set_interval(1.0, self._show_status)
        if self.autopoll:
            self.polling.start()
        if self.start_on_mount:
            self.sweep.start()

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width)

    def _set_narrow(self, width: int) -> None:
        self.main.set_class(width < NARROW_BELOW, "-narrow")

    @property
    def main(self) -> Screen[Any]:
        """The dashboard's screen, also while a modal (help, confirm) is on top of it."""
        return self.screen_stack[0]

    @property
    def dashboard(self) -> Dashboard:
        return self.main.query_one(Dashboard)

    @property
    def grid(self) -> GridView:
        return self.main.query_one(GridView)

    @property
    def fit_view(self) -> FitView:
        return self.main.query_one(FitView)

    @property
    def switcher(self) -> ContentSwitcher:
        return self.main.query_one("#views", ContentSwitcher)

    @property
    def filter_box(self) -> Input:
        return self.main.query_one("#filter", Input)

    def _dashboard_present(self) -> bool:
        """The widgets exist: from `on_mount` until shutdown starts (it stops `is_running` first, then
        removes the widgets while messages and timers may still arrive)."""
        return self.is_running and bool(self.screen_stack) and bool(self.main.query(Dashboard))

    # ----------------------------------------------------------------- snapshots

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        """Apply one snapshot, unless the app is shutting down. Never drop one otherwise: its rows are
        behind the poller's cursors and are not read again. (Polling starts in `on_mount`, when the
        widgets exist but the screen may not have processed its own mount yet: that is no reason to
        wait, and skipping it lost the first poll, so the app showed `done 0/0`.)"""
        try:
            if self._dashboard_present():
                self.apply_snapshot(message.snapshot)
        finally:
            self.polling.applied.set()

    def apply_snapshot(self, snapshot: Snapshot) -> Changes:
        """Fold one snapshot into the state and redraw what it changed (UI thread only)."""
        with self.batch_update():
            changes = self.state.apply(snapshot)
            self._redraw(changes)
        return changes

    def _redraw(self, changes: Changes) -> None:
        if changes.experiments and self.view.resolve_experiment(self.state.experiments):
            self._experiment_changed()
        self.dashboard.redraw(changes)
        self.grid.stale |= changes.grid
        self._redraw_grid()
        if changes.finished:
            self.fit_view.runs_changed()
        self._show_status()

    def _redraw_grid(self) -> None:
        """The grid is drawn while it is shown, and when it is shown."""
        if self.grid.stale and self.switcher.current == "grid":
            self.grid.draw(self.state, self.view)

    def _experiment_changed(self) -> None:
        """The grid, the alerts and the fit follow the experiment shown."""
        self.grid.stale = True
        self.dashboard.show_alerts()
        self.fit_view.set_experiment(self.view.fit_experiment(self.state.experiments))

    def _show_status(self) -> None:
        if not self._dashboard_present():
            return
        line = status_line(self.state, self.view, db_path=self.db_path, now=self.clock(), paused=self.polling.paused,
                           sweep=self.sweep.text(), start_hint=self.sweep.start_hint(),
                           visible=len(self.dashboard.table.run_ids()))
        self.main.query_one(StatusBar).show(line)

    def _selected_run(self) -> RunSummary | None:
        return self.state.runs.get(self.view.selected) if self.view.selected is not None else None

    # ----------------------------------------------------------------- keys: views

    def action_show_view(self, name: str) -> None:
        if name == "fit":
            self.fit_view.open(self.view.fit_experiment(self.state.experiments))
        self.switcher.current = name
        if name == "grid":
            self.grid.draw(self.state, self.view)
        elif name == "dashboard":
            self.dashboard.table.focus()

    def action_cycle_pane(self) -> None:
        self.dashboard.next_pane()
        if self.switcher.current != "dashboard":
            self.action_show_view("dashboard")

    def action_help(self) -> None:
        app_keys = help_rows(b for b in self.BINDINGS if isinstance(b, Binding))
        self.push_screen(HelpScreen([("", app_keys + MORE_KEYS), ("in the fit view (f)", FIT_VIEW_KEYS)]))

    # ----------------------------------------------------------------- keys: the runs table

    def _table_view_changed(self) -> None:
        self.dashboard.sync_table()
        self._show_status()

    def action_flip_grouping(self) -> None:
        self.view.flip_grouping()
        self._table_view_changed()
        self.dashboard.reselect()  # the comparison group changed

    def action_cycle_sort(self) -> None:
        self.view.next_sort()
        self._table_view_changed()
        self.notify(f"sorted by {self.view.sort}", timeout=2)

    def action_reverse_sort(self) -> None:
        self.view.reverse = not self.view.reverse
        self._table_view_changed()

    def action_filter(self) -> None:
        self.filter_box.add_class("-shown")
        self.filter_box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.view.query = event.value
            self._table_view_changed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.input.remove_class("-shown")
            self.dashboard.table.focus()

    def action_clear_filter(self) -> None:
        box = self.filter_box
        box.value = ""
        box.remove_class("-shown")
        self.view.query = ""
        self._table_view_changed()
        self.dashboard.table.focus()

    def action_next_experiment(self) -> None:
        self.view.next_experiment(self.state.experiments)
        self._table_view_changed()
        self._experiment_changed()
        self.notify(f"experiment: {self.view.experiment or 'all'}", timeout=2)

    # ----------------------------------------------------------------- keys: plot, polling

    def action_toggle_log(self) -> None:
        self.view.log_y = not self.view.log_y
        self.dashboard.show_loss()

    def action_toggle_smooth(self) -> None:
        self.view.smooth = not self.view.smooth
        self.dashboard.show_loss()

    # ----------------------------------------------------------------- keys: runs compared side by side

    def _comparing(self) -> None:
        """Marks are drawn in the loss pane: show it (under 100 columns one detail pane is shown)."""
        if self.switcher.current != "dashboard":
            self.action_show_view("dashboard")
        while self.view.pane != "loss" and self.view.marks:
            self.dashboard.next_pane()

    def action_toggle_mark(self) -> None:
        self.dashboard.toggle_mark()
        self._comparing()

    def action_toggle_group_marks(self) -> None:
        self.dashboard.toggle_group_marks()
        self._comparing()

    def action_clear_marks(self) -> None:
        self.dashboard.clear_marks()

    def action_next_metric(self) -> None:
        metric = self.dashboard.next_metric()
        if metric is None:
            self.notify("mark runs first (m, or M for a group): v cycles the metric compared", timeout=3)
        else:
            self.notify(f"compared: {metric}", timeout=2)

    def action_toggle_pause(self) -> None:
        self.polling.toggle_pause()
        self._show_status()

    # ----------------------------------------------------------------- keys and messages: the sweep

    def action_start_sweep(self) -> None:
        self.sweep.start()

    def action_stop_sweep(self) -> None:
        self.sweep.stop()

    def action_stop_run(self) -> None:
        self.sweep.stop_run(self._selected_run())

    def action_quit_app(self) -> None:
        if self.sweep.proc is None:
            self.exit(0)
            return
        self.push_screen(ConfirmScreen(QUIT_QUESTION), self._quit_answer)

    def _quit_answer(self, yes: bool | None) -> None:
        if yes:
            self.sweep.stop_then_quit()

    def on_sweep_started(self, message: SweepStarted) -> None:
        self.sweep.started(message)
        self.polling.poll_now()
        self._show_status()

    def on_sweep_failed_to_start(self, message: SweepFailedToStart) -> None:
        self.sweep.failed_to_start(message.reason)

    def on_sweep_exited(self, message: SweepExited) -> None:
        self.sweep.exited(message.returncode)
        self.polling.poll_now()
        self._show_status()
        if self.sweep.quit_when_stopped:
            self.exit(0)

    # ----------------------------------------------------------------- keys: configurator

    def action_suggest(self) -> None:
        run = self._selected_run()
        if run is None:
            self.notify("select a run first: the proposal is for its next width", severity="warning")
            return
        show_proposal(self, self.db_path, run, self.state.runs.values())

    # ----------------------------------------------------------------- workers

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every worker error becomes a visible notification; the poll loop is restarted."""
        if event.state is not WorkerState.ERROR:
            return
        self.notify(f"{event.worker.group}: {event.worker.error}", severity="error", timeout=8)
        if event.worker.group == POLL_GROUP and self.autopoll:
            self.set_timer(POLL_RETRY_S, self.polling.start)
        if event.worker.group == SWEEP_GROUP:
            self.sweep.note = ""
