"""Messages that cross from worker threads to the UI thread: small, documented, immutable.

Thread workers may only post messages (they never touch widgets or reactives); the handlers on the
UI thread apply them. Each message carries plain frozen data.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from textual.message import Message

from scaletui.tui.poller import Snapshot


@dataclass
class SnapshotReady(Message):
    """One poll's findings. Not replaceable: snapshots are deltas, each must be applied in order
    (the poller waits for the previous one to be applied before reading again)."""

    snapshot: Snapshot


@dataclass
class SweepStarted(Message):
    """The app's own `scaletui run --headless` subprocess is running."""

    pid: int
    log_path: str
    proc: subprocess.Popen[bytes]  # the handle, so the app can signal it


@dataclass
class SweepExited(Message):
    """The app's own sweep subprocess ended with `returncode` (130: stopped, runs resumable)."""

    pid: int
    returncode: int


@dataclass
class SweepFailedToStart(Message):
    """The sweep subprocess could not be launched; `reason` is one line."""

    reason: str
