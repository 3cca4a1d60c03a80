"""Fault injection for the Ray tests: on a node started with this folder first on PYTHONPATH, Python
imports it in every process, the Ray workers included. Nothing happens unless SCALETUI_FAULT_MARKS is
set; it imports nothing heavy (every process of the node pays for it at start-up).

- `SCALETUI_RAY_NODE_TAG=TAG`: every process started here leaves `MARKS/TAG-<pid>`, so which runs
  trained on this node can be told from `runs.pid` after the workers are gone (the test's nodes
  share one hostname).
- `SCALETUI_RAY_HOLD=STEP`: the first run on this node to write its checkpoint of STEP parks half-way
  through the write (temporary file written, not yet fsynced or renamed), after the loop flushed the
  step's records, until the test kills it. `MARKS/parked` (created exclusively: one process parks,
  until the test deletes the file) holds its pid.
- the file `MARKS/pause_at` (read at every checkpoint write, so a test can switch it on and off
  while the node runs) holding STEP: every run writing its checkpoint of STEP leaves
  `MARKS/paused-<pid>` and waits, mid-write, until its stop signal is set (a Ctrl-C reached it) and
  then carries on; a test kills it there, or stops the sweep, with every run at a known step.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\.step_(\d{8})\.pt\..*\.tmp$")  # engine/checkpoints.py's temporary file


def _park_once(marks: Path) -> None:
    try:
        fd = os.open(marks / "parked", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another process parked already: this one goes on
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while True:
        time.sleep(3600)


def _pause_step(marks: Path) -> int | None:
    try:
        return int((marks / "pause_at").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _pause_until_stopped(marks: Path) -> None:
    """Wait until the training loop's stop signal (the `stop` of a frame up the stack) is set."""
    frame: Any = sys._getframe()
    while frame is not None and not hasattr(frame.f_locals.get("stop"), "is_set"):
        frame = frame.f_back
    if frame is None:
        return
    stop = frame.f_locals["stop"]
    (marks / f"paused-{os.getpid()}").touch()
    while not stop.is_set():
        time.sleep(0.02)


def _install(marks: Path) -> None:
    hold = int(os.environ["SCALETUI_RAY_HOLD"]) if os.environ.get("SCALETUI_RAY_HOLD") else None
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) else ""
        match = _TEMPORARY.match(os.path.basename(target))
        if match:
            step = int(match.group(1))
            if step == hold:
                _park_once(marks)
            if step == _pause_step(marks):
                _pause_until_stopped(marks)
        real_fsync(fd)

    os.fsync = fsync


if os.environ.get("SCALETUI_FAULT_MARKS"):
    _marks = Path(os.environ["SCALETUI_FAULT_MARKS"])
    _marks.mkdir(parents=True, exist_ok=True)
    if os.environ.get("SCALETUI_RAY_NODE_TAG"):
        (_marks / f"{os.environ['SCALETUI_RAY_NODE_TAG']}-{os.getpid()}").touch()
    _install(_marks)
