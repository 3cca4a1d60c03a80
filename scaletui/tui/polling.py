"""The poll loop: one thread worker that polls the database, posts the snapshot, and waits for it.

Why a loop that waits: snapshots are deltas (the poller's cursors move past what it posted), so each
must be applied, in order, and none may pile up behind a busy UI. The worker posts one `SnapshotReady`,
waits until the UI thread says it applied it (`applied`), then sleeps for the poll interval, or less
when something wants fresh data now (`poll_now`: a new selection, a sweep that started or stopped).
The worker touches no widget; pausing stops the polls, not the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from textual.app import App
from textual.worker import get_current_worker

from scaletui.tui.messages import SnapshotReady
from scaletui.tui.poller import Poller

POLL_INTERVAL_S = 0.5
APPLY_WAIT_S = 10.0  # a UI stuck for longer than this gets the next snapshot anyway
POLL_GROUP = "poll"  # the worker group (its errors restart the loop)


def wait(event: threading.Event, timeout: float, stopped: Callable[[], bool]) -> None:
    """Wait for `event` up to `timeout`, in short slices, so a cancelled worker ends within 0.1 s."""
    deadline = time.monotonic() + timeout
    while not stopped() and not event.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return


class PollLoop:
    """Polls `poller` every `interval` seconds from a thread worker of `app`, until the worker is cancelled."""

    def __init__(self, app: App[Any], poller: Poller, interval: float = POLL_INTERVAL_S) -> None:
        self.app = app
        self.poller = poller
        self.interval = interval
        self.paused = False
        self.applied = threading.Event()  # set by the UI thread once it has applied the posted snapshot
        self._wake = threading.Event()

    def start(self) -> None:
        self.app.run_worker(self._run, name="poll loop", group=POLL_GROUP, thread=True, exclusive=True,
                            exit_on_error=False)

    def poll_now(self) -> None:
        """Cut the current sleep short (after a selection change the new run's curves are wanted now)."""
        self._wake.set()

    def track(self, selected: int | None, group: Iterable[int]) -> None:
        """Read the curves of `selected` and its group from the next poll on, which comes now."""
        self.poller.track(selected, group)
        self.poll_now()

    def compare(self, runs: Iterable[int], metric: str | None) -> None:
        """Read `metric` and the metric names of the marked `runs` from the next poll on, which comes now."""
        self.poller.compare(runs, metric)
        self.poll_now()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.poll_now()

    def _run(self) -> None:
        """Poll, post, wait until applied, sleep; until cancelled. Touches no widget."""
        worker = get_current_worker()

        def stopped() -> bool:
            return worker.is_cancelled

        try:
            while not stopped():
                if not self.paused:
                    self.applied.clear()
                    self.app.post_message(SnapshotReady(self.poller.poll()))
                    wait(self.applied, APPLY_WAIT_S, stopped)
                wait(self._wake, self.interval, stopped)
                self._wake.clear()
        finally:
            self.poller.close()
