"""The status line: why the app shows nothing (when it does), then runs done/running/queued, ETA,
database path, age of the last poll, live or paused.

A reason for an empty or filtered view comes first, on its own line, so no terminal width cuts it
off (the counts after it may be cut at 80 columns; the reason never is). The age comes from the
app's injected clock, so a test can freeze it and a snapshot stays stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from scaletui.core.rows import RunSummary
from scaletui.core.vocabulary import FINISHED, STOPPED, RunStatus
from scaletui.tui.model import eta_seconds, human_duration, status_counts
from scaletui.tui.state import SweepState
from scaletui.tui.view import View
from scaletui.tui.widgets.quiet import update_text


@dataclass(frozen=True)
class StatusLine:
    runs: tuple[RunSummary, ...]
    db_path: Path
    polled_at: float | None
    now: float
    paused: bool
    sweep: str  # what the app's own sweep process is doing ("" when it has none)
    error: str | None = None
    notice: str | None = None  # why runs are hidden (see `notice_text`)


@dataclass(frozen=True)
class Shown:
    """How many runs each filter lets through, and the filters themselves (for `notice_text`)."""

    in_database: int
    in_experiment: int  # after the experiment filter
    visible: int  # after the text filter too
    experiment: str | None  # the experiment shown (None: all)
    missing: str | None  # the preferred experiment, when the database does not have it
    query: str
    start_hint: str  # how to get runs into an empty database


def notice_text(shown: Shown) -> str | None:
    """Why the runs table shows less than the database holds (or nothing), and how to change it."""
    if shown.in_database == 0:
        return f"no runs in this database yet ({shown.start_hint})"
    reasons = []
    if shown.missing is not None:
        reasons.append(f"experiment {shown.missing!r} is not in this database; showing all (n: next experiment)")
    if shown.in_experiment == 0 and shown.experiment is not None:
        reasons.append(f"experiment {shown.experiment!r} has no runs yet (n: next experiment)")
    elif shown.visible == 0 and shown.query:
        reasons.append(f"no run matches the filter {shown.query!r} (/ edits it, esc clears it)")
    return "; ".join(reasons) or None


def status_line(state: SweepState, view: View, *, db_path: Path, now: float, paused: bool, sweep: str,
                start_hint: str, visible: int) -> StatusLine:
    """The status line of the runs in the experiment shown, `visible` of them through the filter. Why
    runs are hidden is said once the database has been read (an error says why it was not)."""
    runs = tuple(r for r in state.runs.values() if view.experiment in (None, r.experiment))
    notice = None
    if state.polled_at is not None and not state.error:
        notice = notice_text(Shown(len(state.runs), len(runs), visible, view.experiment,
                                   view.missing_experiment(state.experiments), view.query, start_hint))
    return StatusLine(runs, db_path, state.polled_at, now, paused, sweep, state.error, notice)


def status_text(s: StatusLine) -> str:
    counts = status_counts(s.runs)
    done = sum(n for status, n in counts.items() if status in FINISHED)
    trouble = sum(n for status, n in counts.items() if status in STOPPED)
    running, queued = counts.get(RunStatus.RUNNING, 0), counts.get(RunStatus.QUEUED, 0)
    parts = [f"done {done}/{len(s.runs)}", f"running {running}", f"queued {queued}"]
    if trouble:
        parts.append(f"stopped {trouble}")
    parts.append(f"ETA {human_duration(eta_seconds(s.runs))}")
    parts.append(str(s.db_path))
    age = "never" if s.polled_at is None else f"{human_duration(max(0.0, s.now - s.polled_at))} ago"
    parts.append("PAUSED" if s.paused else f"polled {age}")
    if s.sweep:
        parts.append(s.sweep)
    line = " · ".join(parts)
    reason = s.error or s.notice
    return f"{reason}\n{line}" if reason else line


class StatusBar(Static):
    def show(self, line: StatusLine) -> None:
        text = Text(status_text(line))
        if line.error or line.notice:
            text.stylize("bold", 0, text.plain.index("\n"))
        update_text(self, text)
