"""One line: runs done/running/queued, ETA, database path, age of the last poll, live or paused.

The age comes from the app's injected clock, so a test can freeze it and a snapshot stays stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.widgets import Static

from scaletui.tui.model import FINISHED, RunRow, eta_seconds, human_duration, status_counts


@dataclass(frozen=True)
class StatusLine:
    runs: tuple[RunRow, ...]
    db_path: Path
    polled_at: float | None
    now: float
    paused: bool
    sweep: str  # what the app's own sweep process is doing ("" when it has none)
    error: str | None = None


def status_text(s: StatusLine) -> str:
    counts = status_counts(s.runs)
    done = sum(n for status, n in counts.items() if status in FINISHED)
    trouble = sum(counts.get(k, 0) for k in ("failed", "interrupted", "stale"))
    parts = [f"done {done}/{len(s.runs)}", f"running {counts.get('running', 0)}", f"queued {counts.get('queued', 0)}"]
    if trouble:
        parts.append(f"stopped {trouble}")
    parts.append(f"ETA {human_duration(eta_seconds(s.runs))}")
    parts.append(str(s.db_path))
    age = "never" if s.polled_at is None else f"{human_duration(max(0.0, s.now - s.polled_at))} ago"
    parts.append("PAUSED" if s.paused else f"polled {age}")
    if s.sweep:
        parts.append(s.sweep)
    line = " · ".join(parts)
    return f"{line} · {s.error}" if s.error else line


class StatusBar(Static):
    def show(self, line: StatusLine) -> None:
        self.update(status_text(line))
