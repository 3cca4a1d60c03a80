"""ScaleApp: the live view of a sweep, keyboard-first, pleasant at 80x24 and on a wide terminal.

How it stays responsive while the machine trains:

* The app only ever *reads* the database (`Poller` over `scaletui.store.Reader`). A sweep started by
  this app and a sweep started in another terminal look the same to it: rows appearing in SQLite.
* Reading happens in one thread worker that polls about twice a second and posts one immutable
  `Snapshot` per poll; the UI thread applies it inside `batch_update()`. The poller waits until its
  snapshot was applied before reading again, so snapshots never pile up behind a busy UI.
* Training never runs here: the start key launches `scaletui run --headless` as a subprocess (its
  own session, output to a log file next to the database) from a thread worker; stopping sends it
  SIGINT, after which its runs flush, checkpoint and become `interrupted` (resumable). Stopping one
  run sends SIGUSR1 to that run's worker process, when it runs on this host.
* Nothing here imports torch, so the first frame appears as fast as textual can draw it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Input
from textual.worker import Worker, WorkerState, get_current_worker

from scaletui.tui.keys import FIT_KEYS, help_rows
from scaletui.tui.messages import SnapshotReady, SweepExited, SweepFailedToStart, SweepStarted
from scaletui.tui.model import SORT_KEYS, run_to_show
from scaletui.tui.poller import Poller, Snapshot
from scaletui.tui.screens.modals import ConfirmScreen, HelpScreen, TextScreen
from scaletui.tui.state import Changes, ViewState
from scaletui.tui.widgets.alerts_pane import AlertsPane
from scaletui.tui.widgets.events_pane import EventsPane
from scaletui.tui.widgets.footer import KeysFooter
from scaletui.tui.widgets.grad_pane import GradPane
from scaletui.tui.widgets.grid_view import GridView
from scaletui.tui.widgets.loss_pane import LossPane
from scaletui.tui.widgets.runs_table import RunsTable, TableView
from scaletui.tui.widgets.status_bar import Shown, StatusBar, StatusLine, notice_text

NARROW_BELOW = 100  # columns: below this the dashboard shows one detail pane at a time
DETAIL_PANES = ("loss", "grad", "alerts", "events")
POLL_INTERVAL_S = 0.5
MORE_KEYS = [
    ("up/down, pgup/pgdn", "select a run (or an alert in the alerts pane)"),
    ("tab", "next pane"),
    ("ctrl+p", "command palette (theme, screenshot, keys)"),
]
FIT_VIEW_KEYS = [*help_rows(FIT_KEYS), ("1", "back to the runs dashboard")]


class ScaleApp(App[int]):
    """The app over one database; `sweep_file` enables starting (or resuming) that sweep."""

    CSS_PATH = "scaletui.tcss"
    TITLE = "scaletui"

    # The footer shows the first keys that fit (most used first; at 80 columns: q to /); the rest are
    # show=False and listed, with every other key, by the help screen (`?`), which reads the tooltips.
    BINDINGS = [
        Binding("q", "quit_app", "quit", tooltip="quit (while this app's sweep trains: asks, stops it cleanly, "
                "so its runs become interrupted, waits, then quits)"),
        Binding("question_mark", "help", "help", tooltip="help: every key"),
        Binding("r", "start_sweep", "start", tooltip="start or resume the sweep in the sweep file"),
        Binding("p", "cycle_pane", "pane", tooltip="next detail pane: loss, gradients, alerts, events"),
        Binding("1", "show_view('dashboard')", "runs", tooltip="view: the runs dashboard"),
        Binding("g", "show_view('grid')", "grid", tooltip="view: depth x width grid of the final loss"),
        Binding("f", "show_view('fit')", "fit", tooltip="view: the scaling-law fit (its own keys below)"),
        Binding("l", "toggle_log", "log y", tooltip="loss plot: log or linear y (log at start)"),
        Binding("slash", "filter", "filter", tooltip="filter runs, every term must match (w64 d8 running div); "
                "enter keeps the filter, esc clears it"),
        Binding("e", "toggle_smooth", "EMA", show=False, tooltip="loss plot: debiased-EMA smoothing of the train loss"),
        Binding("space", "toggle_pause", "pause", show=False, tooltip="pause or resume live updates"),
        Binding("n", "next_experiment", "experiment", show=False, tooltip="next experiment (or all of them)"),
        Binding("t", "flip_grouping", "width/depth", show=False,
                tooltip="group by width ranked by depth, or by depth ranked by width"),
        Binding("o", "cycle_sort", "sort", show=False, tooltip="next sort column: rank, loss, params, status, step, id"),
        Binding("O", "reverse_sort", "reverse", show=False, tooltip="reverse the sort"),
        Binding("s", "suggest", "suggest lr", show=False,
                tooltip="configurator: learning rate and experiments.toml fragment for the next width"),
        Binding("k", "stop_run", "stop run", show=False,
                tooltip="stop the selected run (it checkpoints; only for runs training on this host)"),
        Binding("X", "stop_sweep", "stop sweep", show=False,
                tooltip="stop this app's sweep (its runs checkpoint and become interrupted; r resumes)"),
        Binding("escape", "clear_filter", "clear filter", show=False, tooltip="clear the filter"),
    ]

    def __init__(self, db_path: str | Path, sweep_file: str | Path | None = None, *, experiment: str | None = None,
                 start: bool = False, poll_interval: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.time,
                 autopoll: bool = True, run_args: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.sweep_file = Path(sweep_file) if sweep_file else None
        # The sweep file's experiment is a preference: shown alone when the database has it, else every
        # experiment is (a missing name must not hide every run); `n` replaces it with the user's choice.
        self.preferred_experiment = experiment
        self.experiment_chosen = False
        self.start_on_mount = start
        self.run_args = run_args  # passed on to `scaletui run --headless` (e.g. --workers N)
        self.poll_interval = poll_interval
        self.clock = clock
        self.autopoll = autopoll
        self.poller = Poller(self.db_path, clock)
        self.state = ViewState()
        self.view = TableView(experiment=experiment)  # until the database says whether it has it
        self.paused = False
        self.log_y = True  # on a linear axis the first steps' loss squashes the rest of the curve
        self.smooth = False
        self.detail_pane = "loss"
        self.selected: int | None = None
        self.follow = True  # select the run that is training, until the user moves the cursor
        self.sweep_proc: subprocess.Popen[bytes] | None = None
        self.sweep_note = ""
        self.quit_when_stopped = False
        self._wake = threading.Event()
        self._applied = threading.Event()
        self._grid_stale = True

    # ----------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="dashboard", id="views"):
            with Container(id="dashboard", classes="-pane-loss"):
                yield RunsTable(id="runs-table")
                yield LossPane(id="loss-pane", classes="detail")
                yield GradPane(id="grad-pane", classes="detail")
                yield AlertsPane(id="alerts-pane", classes="detail")
                yield EventsPane(id="events-pane", classes="detail")
            yield GridView(id="grid")
            yield Container(id="fit")
        yield Input(id="filter", placeholder="filter runs: e.g. w64 d8 running div (enter keeps, esc clears)")
        yield StatusBar("", id="status-bar", markup=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.main.query_one(EventsPane).border_title = "events"
        self._set_narrow(self.size.width)
        self.main.query_one(RunsTable).focus()
        self.set_interval(1.0, self._show_status)
        if self.autopoll:
            self._poll_loop()
        if self.start_on_mount:
            self.action_start_sweep()

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width)

    def _set_narrow(self, width: int) -> None:
        self.main.set_class(width < NARROW_BELOW, "-narrow")

    # ----------------------------------------------------------------- polling

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll_loop(self) -> None:
        """Poll, post, wait until applied, sleep; until cancelled. Touches no widget."""
        worker = get_current_worker()

        def stopped() -> bool:
            return worker.is_cancelled

        try:
            while not stopped():
                if not self.paused:
                    self._applied.clear()
                    self.post_message(SnapshotReady(self.poller.poll()))
                    _wait(self._applied, 10.0, stopped)
                _wait(self._wake, self.poll_interval, stopped)
                self._wake.clear()
        finally:
            self.poller.close()

    def poll_now(self) -> None:
        """Cut the current sleep short (after a selection change the new run's curves are wanted now)."""
        self._wake.set()

    @property
    def main(self) -> Screen[Any]:
        """The dashboard's screen, also while a modal (help, confirm) is on top of it."""
        return self.screen_stack[0]

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        """Apply one snapshot, unless the app is shutting down. Never drop one otherwise: its rows are
        behind the poller's cursors and are not read again. (Polling starts in `on_mount`, when the
        widgets exist but the screen may not have processed its own mount yet: that is no reason to
        wait, and skipping it lost the first poll, so the app showed `done 0/0`.)"""
        try:
            if self._dashboard_present():
                self.apply_snapshot(message.snapshot)
        finally:
            self._applied.set()

    def _dashboard_present(self) -> bool:
        """The widgets exist: from `on_mount` until shutdown starts (it stops `is_running` first, then
        removes the widgets while messages and timers may still arrive)."""
        return self.is_running and bool(self.screen_stack) and bool(self.main.query(RunsTable))

    def apply_snapshot(self, snapshot: Snapshot) -> Changes:
        """Fold one snapshot into the state and redraw what it changed (UI thread only)."""
        with self.batch_update():
            changes = self.state.apply(snapshot)
            self._redraw(changes)
        return changes

    def _redraw(self, changes: Changes) -> None:
        if changes.experiments:
            self._resolve_experiment()
        if changes.runs or changes.alerts or changes.experiments:
            self._sync_table()
        selected = self.selected
        self._follow_training()
        if self.selected == selected and self.selected in changes.series:
            self._show_loss()
        if changes.layers:
            self.main.query_one(GradPane).show(self.state)
        if changes.alerts:
            self.main.query_one(AlertsPane).show(self.state.alerts, self.view.experiment)
        self._log_events(changes.events)
        self._grid_stale |= changes.grid
        if self._grid_stale and self.main.query_one(ContentSwitcher).current == "grid":
            self._show_grid()
        if changes.finished:
            self._fit_runs_changed()
        self._show_status()

    def _sync_table(self) -> None:
        self.main.query_one(RunsTable).sync(self.state, self.view)

    def _resolve_experiment(self) -> None:
        """The preferred experiment if the database has it, else all of them (the status line says so)."""
        if self.experiment_chosen or self.preferred_experiment is None:
            return
        wanted = self.preferred_experiment if self.preferred_experiment in self.state.experiments else None
        if wanted != self.view.experiment:
            self.view = replace(self.view, experiment=wanted)
            self._experiment_changed()

    def _missing_experiment(self) -> str | None:
        """The preferred experiment while the database (read at least once) does not have it."""
        name = self.preferred_experiment
        if self.experiment_chosen or name is None or self.state.polled_at is None or self.state.error:
            return None
        return None if name in self.state.experiments else name

    def _log_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        lines = []
        for e in events:
            run = self.state.runs.get(e["run_id"]) if e["run_id"] is not None else None
            who = f"run {e['run_id']} {run.label}" if run else ("sweep" if e["run_id"] is None else f"run {e['run_id']}")
            lines.append(f"{(e['at'] or '')[11:19]} {who} {e['kind']}: {e['message'] or ''}")
        self.main.query_one(EventsPane).add(lines)

    def _show_status(self) -> None:
        if not self._dashboard_present():
            return
        runs = tuple(r for r in self.state.runs.values() if self.view.experiment in (None, r.experiment))
        line = StatusLine(runs, self.db_path, self.state.polled_at, self.clock(), self.paused, self._sweep_text(),
                          self.state.error, self._notice(len(runs)))
        self.main.query_one(StatusBar).show(line)

    def _notice(self, in_experiment: int) -> str | None:
        """Why the runs table hides runs, once the database has been read (an error says why not)."""
        if self.state.polled_at is None or self.state.error:
            return None
        hint = f"r starts {self.sweep_file.name}" if self.sweep_file else "start a sweep: scaletui run FILE"
        visible = len(self.main.query_one(RunsTable).run_ids())
        return notice_text(Shown(len(self.state.runs), in_experiment, visible, self.view.experiment,
                                 self._missing_experiment(), self.view.query, hint))

    def _sweep_text(self) -> str:
        if self.sweep_proc is not None:
            return f"sweep pid {self.sweep_proc.pid}{' stopping' if self.quit_when_stopped else ''}"
        return self.sweep_note

    # ----------------------------------------------------------------- selection and curves

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "runs-table" and self._dashboard_present():
            run_id = self.main.query_one(RunsTable).selected_run()
            # The cursor now, not the event's key: rows may have moved since. The app itself moves the
            # cursor only onto the selected run, so another run under it is the user's doing.
            if run_id != self.selected:
                self.follow = False
            self._select(run_id)

    def _follow_training(self) -> None:
        """Until the user moves the cursor, select the run worth watching: one that is training, else the
        latest (`run_to_show`); a selection that still trains, or with nothing training, is kept."""
        table = self.main.query_one(RunsTable)
        target = self._run_to_follow(table.run_ids())
        if target is not None and target != self.selected:
            self._select(target)  # before the cursor moves, so its highlight event is not the user's
            table.move_cursor(row=table.get_row_index(str(target)), scroll=True)
        elif self.selected is None or self.selected not in self.state.runs:
            self._select(table.selected_run())

    def _run_to_follow(self, shown: list[int]) -> int | None:
        if not self.follow:
            return None
        runs = [self.state.runs[i] for i in shown if i in self.state.runs]
        current = self.state.runs.get(self.selected) if self.selected in shown else None
        if current is not None and (current.status == "running" or all(r.status != "running" for r in runs)):
            return None
        return run_to_show(runs)

    def _select(self, run_id: int | None) -> None:
        if run_id == self.selected:
            return
        self.selected = run_id
        group = self.state.group_of(run_id, self.view.group_by) if run_id is not None else []
        self.poller.track(run_id, group)
        self.poll_now()
        self._show_loss()
        self.main.query_one(GradPane).show(self.state)

    def _show_loss(self) -> None:
        group = self.state.group_of(self.selected, self.view.group_by) if self.selected is not None else []
        self.main.query_one(LossPane).show(self.state, self.selected, group, log_y=self.log_y, smooth=self.smooth)

    def _show_grid(self) -> None:
        experiment = self._grid_experiment()
        points = [p for p in self.state.final_losses if experiment is None or p["experiment"] == experiment]
        self.main.query_one(GridView).show(points, experiment)
        self._grid_stale = False

    def _grid_experiment(self) -> str | None:
        """The grid and the fit need one experiment: the chosen one, else the newest."""
        if self.view.experiment is not None:
            return self.view.experiment
        return self.state.experiments[-1] if self.state.experiments else None

    # ----------------------------------------------------------------- keys: views

    def action_show_view(self, name: str) -> None:
        if name == "fit":
            self._ensure_fit_pane()
        self.main.query_one(ContentSwitcher).current = name
        if name == "grid":
            self._show_grid()
        elif name == "dashboard":
            self.main.query_one(RunsTable).focus()

    def _ensure_fit_pane(self) -> None:
        """The fit pane (and numpy/scipy behind it) is loaded on first use, not for the first frame."""
        box = self.main.query_one("#fit", Container)
        if not box.children:
            from scaletui.tui.fit_pane import FitPane

            box.mount(FitPane(self.db_path, self._grid_experiment(), id="fit-pane"))
        self.call_after_refresh(lambda: box.children[0].focus() if box.children else None)

    def _fit_runs_changed(self) -> None:
        for pane in self.main.query("#fit-pane"):
            pane.runs_changed()  # type: ignore[attr-defined]

    def action_cycle_pane(self) -> None:
        dashboard = self.main.query_one("#dashboard")
        dashboard.remove_class(f"-pane-{self.detail_pane}")
        self.detail_pane = DETAIL_PANES[(DETAIL_PANES.index(self.detail_pane) + 1) % len(DETAIL_PANES)]
        dashboard.add_class(f"-pane-{self.detail_pane}")
        if self.main.query_one(ContentSwitcher).current != "dashboard":
            self.action_show_view("dashboard")

    def action_help(self) -> None:
        app_keys = help_rows(b for b in self.BINDINGS if isinstance(b, Binding))
        self.push_screen(HelpScreen([("", app_keys + MORE_KEYS), ("in the fit view (f)", FIT_VIEW_KEYS)]))

    # ----------------------------------------------------------------- keys: the runs table

    def _change_view(self, **changes: Any) -> None:
        self.view = replace(self.view, **changes)
        self._sync_table()
        self._show_status()

    def action_flip_grouping(self) -> None:
        self._change_view(group_by="depth" if self.view.group_by == "width" else "width")
        self.selected = None  # the comparison group changed: re-track
        self._select(self.main.query_one(RunsTable).selected_run())

    def action_cycle_sort(self) -> None:
        self._change_view(sort=SORT_KEYS[(SORT_KEYS.index(self.view.sort) + 1) % len(SORT_KEYS)])
        self.notify(f"sorted by {self.view.sort}", timeout=2)

    def action_reverse_sort(self) -> None:
        self._change_view(reverse=not self.view.reverse)

    def action_filter(self) -> None:
        box = self.main.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self._change_view(query=event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.input.remove_class("-shown")
            self.main.query_one(RunsTable).focus()

    def action_clear_filter(self) -> None:
        box = self.main.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-shown")
        self._change_view(query="")
        self.main.query_one(RunsTable).focus()

    def action_next_experiment(self) -> None:
        choices: list[str | None] = [None, *self.state.experiments]
        current = choices.index(self.view.experiment) if self.view.experiment in choices else 0
        self.experiment_chosen = True
        self._change_view(experiment=choices[(current + 1) % len(choices)])
        self._experiment_changed()
        self.notify(f"experiment: {self.view.experiment or 'all'}", timeout=2)

    def _experiment_changed(self) -> None:
        """The grid, the alerts and the fit follow the experiment shown."""
        self._grid_stale = True
        self.main.query_one(AlertsPane).show(self.state.alerts, self.view.experiment)
        for pane in self.main.query("#fit-pane"):
            pane.set_experiment(self._grid_experiment())  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- keys: plot

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._show_loss()

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth
        self._show_loss()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.poll_now()
        self._show_status()

    # ----------------------------------------------------------------- keys: sweep control

    def action_start_sweep(self) -> None:
        if self.sweep_file is None:
            self.notify("no sweep file: run `scaletui run FILE` or start scaletui next to experiments.toml",
                        severity="warning")
            return
        if self.sweep_proc is not None:
            self.notify(f"the sweep is already running (pid {self.sweep_proc.pid})")
            return
        self.sweep_note = "sweep starting"
        self._launch_sweep(sweep_command(self.sweep_file, self.db_path, self.run_args), sweep_log_path(self.db_path))
        self.run_args = tuple(a for a in self.run_args if a != "--fresh")  # a later `r` resumes, never wipes

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    def _launch_sweep(self, command: list[str], log_path: Path) -> None:
        """Start `command` in its own session and wait for it; posts messages only. Everything it needs
        comes in its arguments: the thread starts later, after the app's own state has moved on."""
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        except OSError as exc:
            self.post_message(SweepFailedToStart(f"cannot start the sweep: {exc}"))
            return
        self.post_message(SweepStarted(proc.pid, str(log_path), proc))
        self.post_message(SweepExited(proc.pid, proc.wait()))

    def on_sweep_started(self, message: SweepStarted) -> None:
        self.sweep_proc = message.proc
        self.notify(f"sweep started (pid {message.pid}); its output goes to {message.log_path}")
        self.poll_now()
        self._show_status()

    def on_sweep_failed_to_start(self, message: SweepFailedToStart) -> None:
        self.sweep_note = ""
        self.notify(message.reason, severity="error")

    def on_sweep_exited(self, message: SweepExited) -> None:
        self.sweep_proc = None
        self.sweep_note = f"sweep exited ({describe_exit(message.returncode)})"
        self.notify(self.sweep_note, severity="information" if message.returncode in (0, 130) else "warning")
        self.poll_now()
        self._show_status()
        if self.quit_when_stopped:
            self.exit(0)

    def action_stop_sweep(self) -> None:
        if self.sweep_proc is None:
            self.notify("this app is not running a sweep (stop one started elsewhere with Ctrl-C there)")
            return
        self._signal(self.sweep_proc.pid, signal.SIGINT)
        self.sweep_note = "stopping"
        self.notify("stopping the sweep: runs flush, checkpoint and become interrupted (r resumes)")

    @work(thread=True, group="signals", exit_on_error=False)
    def _signal(self, pid: int, signum: int) -> None:
        os.kill(pid, signum)

    def action_stop_run(self) -> None:
        run = self.state.runs.get(self.selected) if self.selected is not None else None
        reason = stop_refusal(run.status if run else None, run.host if run else None, run.pid if run else None)
        if reason:
            self.notify(reason, severity="warning")
            return
        assert run is not None and run.pid is not None
        self._signal(int(run.pid), signal.SIGUSR1)
        self.notify(f"stopping {run.label}: it checkpoints and becomes interrupted")

    def action_quit_app(self) -> None:
        if self.sweep_proc is None:
            self.exit(0)
            return
        question = ("This app's sweep is still training. Stop it cleanly (its runs become `interrupted` and "
                    "resume with `r` or `scaletui run`) and quit?")
        self.push_screen(ConfirmScreen(question), self._quit_answer)

    def _quit_answer(self, yes: bool | None) -> None:
        if not yes or self.sweep_proc is None:
            return
        self.quit_when_stopped = True
        self._signal(self.sweep_proc.pid, signal.SIGINT)
        self.notify("stopping the sweep, then quitting")
        self._show_status()

    # ----------------------------------------------------------------- keys: configurator

    def action_suggest(self) -> None:
        run = self.state.runs.get(self.selected) if self.selected is not None else None
        if run is None:
            self.notify("select a run first: the proposal is for its next width", severity="warning")
            return
        widths = sorted({r.width for r in self.state.runs.values() if r.experiment == run.experiment})
        wider = [w for w in widths if w > run.width]
        self._suggest(run.experiment, wider[0] if wider else 2 * run.width, run.depth)

    @work(thread=True, exclusive=True, group="suggest", exit_on_error=False)
    def _suggest(self, experiment: str | None, width: int, depth: int) -> None:
        from scaletui.suggest import suggest_for

        proposal = suggest_for(self.db_path, experiment, width, depth)
        title = (f"next size w{width} d{depth}: lr {proposal.lr:.3g} by {proposal.rule} "
                 f"(confidence {proposal.confidence})")
        body = f"{proposal.note}\n\n{proposal.toml_fragment(width, depth)}"
        self.call_from_thread(self.push_screen, TextScreen(title, body))

    # ----------------------------------------------------------------- workers

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every worker error becomes a visible notification; the poll loop is restarted."""
        if event.state is not WorkerState.ERROR:
            return
        self.notify(f"{event.worker.group}: {event.worker.error}", severity="error", timeout=8)
        if event.worker.group == "poll" and self.autopoll:
            self.set_timer(2.0, self._poll_loop)
        if event.worker.group == "sweep":
            self.sweep_note = ""





def _wait(event: threading.Event, timeout: float, stopped: Callable[[], bool]) -> None:
    """Wait for `event` up to `timeout`, in short slices, so a cancelled worker ends within 0.1 s."""
    deadline = time.monotonic() + timeout
    while not stopped() and not event.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return


def sweep_command(sweep_file: Path, db: Path, run_args: tuple[str, ...]) -> list[str]:
    """The app's sweep: `scaletui run --headless FILE --db DB` plus the command line's own arguments."""
    return [sys.executable, "-m", "scaletui", "run", "--headless", str(sweep_file), "--db", str(db), *run_args]


def sweep_log_path(db: Path) -> Path:
    """Where the app's own sweep writes its output: next to the database."""
    return db.parent / "scaletui-app-sweep.log"


def describe_exit(code: int) -> str:
    return {0: "all runs done", 1: "some runs failed, diverged or were interrupted", 2: "bad input, see its log",
            130: "stopped; runs are resumable"}.get(code, f"exit code {code}")


def stop_refusal(status: str | None, host: str | None, pid: int | None) -> str | None:
    """Why the selected run cannot be stopped from here, or None when it can."""
    if status is None:
        return "no run selected"
    if status != "running":
        return f"the selected run is {status}, not running"
    if host != socket.gethostname() or pid is None:
        return f"the selected run trains on {host or 'an unknown host'}; stop it there"
    return None
