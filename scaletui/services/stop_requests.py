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

A request may carry a reason as the file's text (the sweep's monitor ending a hopeless run,
`train.stop_when_hopeless`): that run ends `early_stopped` with the reason recorded, not `interrupted`.
An empty file (the app's `k`) still means "interrupt". A reasoned request is written under a dotted
temporary name and renamed into place, so a worker never reads a name whose text is half-written;
workers skip dotted names.

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
import time
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


def request_run_stop(pid: int, run_id: int, reason: str | None = None) -> None:
    """Ask worker `pid` to stop run `run_id`; its other runs go on. Without a reason the run checkpoints
    and becomes `interrupted`; with one it ends `early_stopped` with `reason` as its error. Raises
    OSError (ProcessLookupError, PermissionError) as os.kill does. A reasoned request that cannot be
    left raises OSError too, before any signal: a bare signal would interrupt every run of the worker."""
    try:
        folder = _own_folder(pid)
        if reason is None:
            (folder / str(run_id)).touch()
        else:
            _write_reason(folder, run_id, reason)
    except OSError:
        if reason is not None:
            raise
        # no request can be left: the bare signal stops everything the worker trains
    os.kill(pid, signal.SIGUSR1)


def take_stop_requests(pid: int) -> set[int]:
    """The run ids asked to stop in worker `pid`'s folder, each removed as it is read."""
    return set(take_stop_requests_with_reasons(pid))


def take_stop_requests_with_reasons(pid: int) -> dict[int, str | None]:
    """Run id -> reason (None: interrupt) of every request in worker `pid`'s folder, each removed as it
    is read. Dotted names (a reasoned request still being written) are left for the next read."""
    folder = requests_folder(pid)
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    taken: dict[int, str | None] = {}
    for name in names:
        if name.startswith("."):
            continue
        path = folder / name
        if name.isdigit():
            taken[int(name)] = _read_reason(path)
        path.unlink(missing_ok=True)
    return taken


def _write_reason(folder: Path, run_id: int, reason: str) -> None:
    """The request file `run_id` holding `reason`, whole or not at all (write, then rename into place)."""
    temporary = folder / f".{run_id}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        temporary.write_text(_one_line(reason) or "stopped", encoding="utf-8")
        os.replace(temporary, folder / str(run_id))
    finally:
        temporary.unlink(missing_ok=True)


def _read_reason(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None  # unreadable: taken as a plain stop, as before reasons existed
    return text or None


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
