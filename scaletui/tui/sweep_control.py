"""The app's own sweep: `scaletui run --headless` as a subprocess, and the signals that stop it or one run.

Training never runs in the app's process (PyTorch would hold the GIL and the UI would stutter). `start`
launches the sweep in its own session, output to a log file next to the database, from a thread
worker that waits for it and posts `SweepStarted` and `SweepExited` (handled on the UI thread, which
hands them back here). Stopping sends SIGINT, after which its runs flush, checkpoint and become
`interrupted` (resumable). Stopping one run (`k`) leaves a request naming it and sends SIGUSR1 to its
worker process when it runs on this host (a local worker or a Ray worker); a run on another host, in
a Ray sweep, is asked through the database, and the sweep's writer tells its worker
(services/stop_requests.py). Signals and requests are sent from a thread worker too: neither
`os.kill` nor a write to the database ever blocks the UI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App

from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import RunStatus
from scaletui.services.stop_requests import signals_reach, stop_run
from scaletui.tui.messages import SweepExited, SweepFailedToStart, SweepStarted

SWEEP_GROUP = "sweep"  # the launching worker's group (its errors clear the sweep's note)
CLEAN_EXITS = (0, 130)  # every run done; stopped with its runs resumable


def sweep_command(sweep_file: Path, db: Path, run_args: tuple[str, ...]) -> list[str]:
    """The app's sweep: `scaletui run --headless FILE --db DB` plus the command line's own arguments."""
    return [sys.executable, "-m", "scaletui", "run", "--headless", str(sweep_file), "--db", str(db), *run_args]


def sweep_log_path(db: Path) -> Path:
    """Where the app's own sweep writes its output: next to the database."""
    return db.parent / "scaletui-app-sweep.log"


def describe_exit(code: int) -> str:
    return {0: "all runs done", 1: "some runs failed, diverged or were interrupted", 2: "bad input, see its log",
            130: "stopped; runs are resumable"}.get(code, f"exit code {code}")


def stop_refusal(status: RunStatus | None, host: str | None) -> str | None:
    """Why the selected run cannot be stopped from here, or None when it can (a run on another host
    too: it is asked through the database)."""
    if status is None:
        return "no run selected"
    if status is not RunStatus.RUNNING:
        return f"the selected run is {status}, not running"
    if host is None:
        return "the selected run's host is unknown; stop its sweep there"
    return None


def launch(app: App[Any], command: list[str], log_path: Path) -> None:
    """Start `command` in its own session and wait for it; posts messages only (runs in a thread).
    Everything it needs comes in its arguments: the thread starts later, after the app has moved on."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
    except OSError as exc:
        app.post_message(SweepFailedToStart(f"cannot start the sweep: {exc}"))
        return
    app.post_message(SweepStarted(proc.pid, str(log_path), proc))
    app.post_message(SweepExited(proc.pid, proc.wait()))


class SweepControl:
    """Starts and stops the sweep in `sweep_file` (when the app has one); says what it is doing."""

    def __init__(self, app: App[Any], db_path: Path, sweep_file: Path | None, run_args: tuple[str, ...],
                 changed: Callable[[], None]) -> None:
        self.app = app
        self.db_path = db_path
        self.sweep_file = sweep_file
        self.run_args = run_args  # passed on to `scaletui run --headless` (e.g. --workers N)
        self.changed = changed  # called when what `text()` says changed (the status line shows it)
        self.proc: subprocess.Popen[bytes] | None = None
        self.note = ""
        self.quit_when_stopped = False

    def text(self) -> str:
        """What the sweep process is doing, for the status line ("" when the app has none)."""
        if self.proc is not None:
            return f"sweep pid {self.proc.pid}{' stopping' if self.quit_when_stopped else ''}"
        return self.note

    def start_hint(self) -> str:
        """How to get runs into an empty database."""
        return f"r starts {self.sweep_file.name}" if self.sweep_file else "start a sweep: scaletui run FILE"

    # ----------------------------------------------------------------- starting

    def start(self) -> None:
        if self.sweep_file is None:
            self.app.notify("no sweep file: run `scaletui run FILE` or start scaletui next to experiments.toml",
                            severity="warning")
            return
        if self.proc is not None:
            self.app.notify(f"the sweep is already running (pid {self.proc.pid})")
            return
        self.note = "sweep starting"
        work = partial(launch, self.app, sweep_command(self.sweep_file, self.db_path, self.run_args),
                       sweep_log_path(self.db_path))
        self.app.run_worker(work, name="sweep", group=SWEEP_GROUP, thread=True, exclusive=True, exit_on_error=False)
        self.run_args = tuple(a for a in self.run_args if a != "--fresh")  # a later `r` resumes, never wipes

    def started(self, message: SweepStarted) -> None:
        self.proc = message.proc
        self.app.notify(f"sweep started (pid {message.pid}); its output goes to {message.log_path}")

    def failed_to_start(self, reason: str) -> None:
        self.note = ""
        self.app.notify(reason, severity="error")

    def exited(self, returncode: int) -> None:
        self.proc = None
        self.note = f"sweep exited ({describe_exit(returncode)})"
        self.app.notify(self.note, severity="information" if returncode in CLEAN_EXITS else "warning")

    # ----------------------------------------------------------------- stopping

    def stop(self) -> None:
        if self.proc is None:
            self.app.notify("this app is not running a sweep (stop one started elsewhere with Ctrl-C there)")
            return
        self._signal(self.proc.pid, signal.SIGINT)
        self.note = "stopping"
        self.app.notify("stopping the sweep: runs flush, checkpoint and become interrupted (r resumes)")

    def stop_then_quit(self) -> None:
        """Stop the sweep cleanly; the app quits when it has exited."""
        if self.proc is None:
            return
        self.quit_when_stopped = True
        self._signal(self.proc.pid, signal.SIGINT)
        self.app.notify("stopping the sweep, then quitting")
        self.changed()

    def stop_run(self, run: RunSummary | None) -> None:
        """Ask the run's worker to stop it (services/stop_requests.py): it checkpoints and becomes interrupted."""
        reason = stop_refusal(run.status if run else None, run.host if run else None)
        if reason or run is None:
            self.app.notify(reason or "no run selected", severity="warning")
            return
        self.app.run_worker(partial(stop_run, self.db_path, run.id, run.host, run.pid), name="stop-run",
                            group="signals", thread=True, exit_on_error=False)
        how = "" if signals_reach(run.host, run.pid) else f" (on {run.host}: its sweep's writer passes it on)"
        self.app.notify(f"stopping {run.label}{how}: it checkpoints and becomes interrupted")

    def _signal(self, pid: int, signum: int) -> None:
        self.app.run_worker(partial(os.kill, pid, signum), name="signal", group="signals", thread=True,
                            exit_on_error=False)
