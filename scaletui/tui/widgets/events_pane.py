"""The sweep's events (started, done, interrupted, errors), one per line, wrapped to the pane's width.

A plain log cuts long lines at the pane's edge (at 80 columns most events lose their ending, which is
where the numbers are). This log wraps them, and because wrapped text does not reflow by itself, it
keeps the lines it was given and writes them again whenever its width changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from textual.events import Resize
from textual.widgets import RichLog

from scaletui.core.rows import EventRow, RunSummary

EVENT_LINES = 300  # the latest events; older ones are in the database's `events` table


def event_line(event: EventRow, run: RunSummary | None) -> str:
    """`12:00:00 run 5 mlp w16 d2 s0 started: pid 42 on host`: the time of day, who, what."""
    who = "sweep" if event.run_id is None else f"run {event.run_id}" + (f" {run.label}" if run else "")
    return f"{(event.at or '')[11:19]} {who} {event.kind}: {event.message or ''}"


class EventsPane(RichLog):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, wrap=True, markup=False, min_width=10, max_lines=4 * EVENT_LINES)
        self.texts: deque[str] = deque(maxlen=EVENT_LINES)
        self._wrapped_at = 0  # the width the lines on screen were wrapped at (0: none yet)

    def log_events(self, events: Iterable[EventRow], runs: Mapping[int, RunSummary]) -> None:
        """One line per event, naming its run by label when the run is known."""
        self.add([event_line(e, runs.get(e.run_id) if e.run_id is not None else None) for e in events])

    def add(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.texts.append(line)
            self.write(line)

    def on_resize(self, event: Resize) -> None:
        """Rewrap at a new width (the first size is handled by RichLog: it writes what waited for it)."""
        width = event.size.width
        if width and self._wrapped_at and width != self._wrapped_at:
            self.clear()
            for line in self.texts:
                self.write(line)
        self._wrapped_at = width or self._wrapped_at
