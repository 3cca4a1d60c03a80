"""Stopping one run of a worker that trains several at once: a request file, then SIGUSR1.

A worker trains one run, or a bundle of same-shape runs as one batched model (engine/batched.py). A
signal carries no argument, so "stop run 12" is a file named `12` in the worker's own request folder
(`<temp dir>/scaletui-<uid>/stop/<worker pid>/`), written before SIGUSR1 is sent; on the signal the
worker reads and deletes the files and stops exactly those of its runs. Why this shape:

- a file per request (never one file rewritten) means two quick requests cannot overwrite each
  other, and reading never races a half-written name: the name is the whole message;
- the folder is keyed by pid on this host, like the signal itself (the app only stops runs on its
  own host), and lives under the user's own temporary folder (mode 0700), which any process of the
  user can reach without knowing the database or the sweep;
- a bare SIGUSR1 with no request (an older app, `kill -USR1` by hand) stops everything the worker is
  training, as it always did.

Standard library only: the app (tui/) calls `request_run_stop`, the worker (services/runner.py)
calls `take_stop_requests`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path


def requests_folder(pid: int) -> Path:
    """Where stop requests for worker `pid` are left."""
    return Path(tempfile.gettempdir()) / f"scaletui-{os.getuid()}" / "stop" / str(pid)


def request_run_stop(pid: int, run_id: int) -> None:
    """Ask worker `pid` to stop run `run_id` (it checkpoints and becomes `interrupted`); its other runs
    go on. Raises OSError (ProcessLookupError, PermissionError) as os.kill does."""
    try:
        folder = _own_folder(pid)
        (folder / str(run_id)).touch()
    except OSError:
        pass  # no request can be left: the bare signal stops everything the worker trains
    os.kill(pid, signal.SIGUSR1)


def take_stop_requests(pid: int) -> set[int]:
    """The run ids asked to stop in worker `pid`'s folder, each removed as it is read."""
    folder = requests_folder(pid)
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    taken = set()
    for name in names:
        if name.isdigit():
            taken.add(int(name))
        (folder / name).unlink(missing_ok=True)
    return taken


def clear_stop_requests(pid: int) -> None:
    """Forget every request left for `pid` (a new worker may reuse the pid of an old one)."""
    shutil.rmtree(requests_folder(pid), ignore_errors=True)


def _own_folder(pid: int) -> Path:
    """The request folder, made private to this user; refuses a folder someone else made."""
    base = requests_folder(pid).parent.parent
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise PermissionError(f"{base} belongs to another user")
    folder = requests_folder(pid)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
