"""Stopping one run (the app's `k`), wherever it trains.

On this machine (`stop_run` with the run's host equal to ours): a request file, then SIGUSR1 to the
run's worker process, a local worker or a Ray worker alike (the Ray executor's workers take both
the same way). On another machine, where no signal reaches: a row in the database's
`stop_requests` table (store/stop_requests.py), which the Ray executor's writer, on the driver's
machine, passes on to the run's worker with its next answer. Either way the worker stops exactly
that run (one member of a bundle: only that member), which checkpoints and becomes `interrupted`.

The signal path in detail:

A worker trains one run, or a bundle of same-shape runs as one batched model (engine/batched.py). A
signal carries no argument, so "stop run 12" is a file named `12` in the worker's own request folder
(`<temp dir>/scaletui-<uid>/stop/<worker pid>/`), written before SIGUSR1 is sent; on the signal the
worker reads and deletes the files and stops exactly those of its runs. Why this shape:

- a file per request (never one file rewritten) means two quick requests cannot overwrite each
  other, and reading never races a half-written name: the name is the whole message;
- the folder is keyed by pid on this host, like the signal itself (which reaches only processes of
  this host), and lives under the user's own temporary folder (mode 0700), which any process of the
  user can reach without knowing the database or the sweep;
- a bare SIGUSR1 with no request (an older app, `kill -USR1` by hand) stops everything the worker is
  training, as it always did.

The app (tui/) calls `stop_run`; workers (services/runner.py, services/ray_executor.py) call
`take_stop_requests`. Standard library only, but for the store, imported by `stop_run` alone when
the run is elsewhere (a worker never imports it here).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path


def signals_reach(host: str | None, pid: int | None) -> bool:
    """Whether a run's worker (on `host`, process `pid`) is one this machine can signal."""
    return host == socket.gethostname() and pid is not None


def stop_run(db: Path, run_id: int, host: str | None, pid: int | None) -> None:
    """Ask run `run_id` (running on `host`, in process `pid`) to stop: here, `request_run_stop` (OSError
    as os.kill raises it); elsewhere, a request left in the database `db` for the Ray executor's writer
    to pass on (StoreError when it cannot be written)."""
    if pid is not None and signals_reach(host, pid):
        request_run_stop(pid, run_id)
        return
    from scaletui.store.stop_requests import StopRequests

    with StopRequests(db) as requests:
        requests.request(run_id)


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
