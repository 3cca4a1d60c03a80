"""A user's script using the Python API, run as a real process: an exception, Ctrl-C, SIGTERM and kill -9
in the middle of its loop, then resume=True. What the database says afterwards is read with plain sqlite3.

The script flushes every 50 steps and says so on stdout ("flushed 149"); a test that needs the loop to
be in a known place waits for that line (never for time), then acts.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.vocabulary import RunStatus
from scaletui.services.runner import pid_alive
from scaletui.store import Store
from scaletui.store.writer import default_host
from tests.conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = '''
import faulthandler, signal, sys, time
import scaletui

faulthandler.register(signal.SIGUSR2)  # a test that times out asks for every thread's stack

db, mode, resume, start_at, steps = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
original = signal.getsignal(signal.SIGTERM)
with scaletui.init(db=db, experiment="proc", config={"width": 8}, loss="loss", resume=resume) as run:
    print(f"last_step {run.last_step}", flush=True)
    for step in range(start_at, steps):
        run.log({"loss": 1.0 / (step + 1), "other": float(step)}, step=step)
        if mode == "raise" and step == 20:
            raise ValueError("boom\\nsecond line")
        if step % 50 == 49:
            run.flush()
            print(f"flushed {step}", flush=True)
            if mode == "park" and step == 99:
                while True:  # until a signal
                    time.sleep(0.01)
        if mode == "slow":
            time.sleep(0.001)
print("handler restored" if signal.getsignal(signal.SIGTERM) is original else "handler left", flush=True)
'''


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "own_loop.py"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def command(script: Path, db: Path, mode: str, *, resume: bool = False, start_at: int = 0,
            steps: int = 200) -> list[str]:
    return [sys.executable, str(script), str(db), mode, "1" if resume else "0", str(start_at), str(steps)]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def _as_from_a_terminal() -> None:
    """In the child before it runs the script: Ctrl-C's default disposition, unblocked, as a script started
    from a terminal has. A child inherits both from this process, where another test (or the test runner)
    may have left SIGINT ignored: Python then never raises KeyboardInterrupt, and the script in CI waited
    120 s for a Ctrl-C that could not arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])


def launch(*args: Any, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(command(*args, **kw), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_as_from_a_terminal)


def finish(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args, **kw), capture_output=True, text=True, timeout=120, env=ENV)


_LINES: dict[int, queue.Queue[str | None]] = {}  # per process: its stdout lines, None at the end


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Every stdout line of `proc`, read by one thread. Not select() on the pipe plus readline(): two lines
    that arrive together are both buffered by the first readline(), and the pipe never signals again."""
    if proc.pid not in _LINES:
        lines: queue.Queue[str | None] = queue.Queue()
        stream = proc.stdout
        assert stream is not None

        def pump() -> None:
            for line in stream:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        _LINES[proc.pid] = lines
    return _LINES[proc.pid]


def end(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the process to exit and return its stderr (its stdout belongs to the `_lines` thread:
    `communicate()` would read it from a second thread). A process that does not exit in time is asked
    for every thread's stack (faulthandler on SIGUSR2), killed, and the test fails with the stacks."""
    assert proc.stderr is not None
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR2)
        time.sleep(1)  # let faulthandler write the stacks before the kill
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"the script did not exit within {timeout} s; its stacks:\n{proc.stderr.read()}")
    return proc.stderr.read()


def wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout: float = 120) -> list[str]:
    """Read stdout until a line equal to `wanted`; the lines read. Fails if the process ends first."""
    lines, seen = _lines(proc), []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"the script ended before {wanted!r}: {seen} {end(proc, 30)}")
        seen.append(line)
        if line == wanted:
            return seen
    proc.send_signal(signal.SIGUSR2)
    time.sleep(1)  # let faulthandler write every thread's stack before the kill
    proc.kill()
    pytest.fail(f"timed out waiting for {wanted!r}; saw {seen}; stacks:\n{end(proc, 30)}")


def metric_steps(db: Path, key: str) -> list[int]:
    return [s for (s,) in rows(db, "SELECT step FROM metrics WHERE key = ? ORDER BY step", key)]


def test_a_script_that_finishes_ends_done_and_restores_the_sigterm_handler(script: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    out = finish(script, db, "plain")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "handler restored"
    assert rows(db, "SELECT status, step, final_test_loss FROM runs") == [(RunStatus.DONE, 199, 1.0 / 200)]
    assert metric_steps(db, "loss") == list(range(200))


def test_an_exception_in_the_block_fails_the_run_with_its_first_line(script: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    out = finish(script, db, "raise")
    assert out.returncode == 1 and "ValueError: boom" in out.stderr
    assert rows(db, "SELECT status, error, step FROM runs") == [(RunStatus.FAILED, "ValueError: boom", 20)]
    assert metric_steps(db, "loss") == list(range(21))  # everything logged before the raise is stored


@pytest.mark.parametrize("signum, codes, reason", [
    (signal.SIGINT, (-signal.SIGINT, 130), "Ctrl-C at step 99"),
    (signal.SIGTERM, (128 + signal.SIGTERM,), "SIGTERM at step 99"),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_interrupts_the_run_and_resume_continues_it(script: Path, tmp_path: Path, procs: list[Any],
                                                             signum: int, codes: tuple[int, ...], reason: str) -> None:
    db = tmp_path / "runs.db"
    proc = launch(script, db, "park")
    procs.append(proc)
    wait_for_line(proc, "flushed 99")
    proc.send_signal(signum)
    stderr = end(proc, 120)
    assert proc.returncode in codes, stderr
    if signum == signal.SIGTERM:
        assert "Traceback" not in stderr  # a clean exit, as a service manager expects
    assert rows(db, "SELECT status, step FROM runs") == [(RunStatus.INTERRUPTED, 99)]
    assert rows(db, "SELECT message FROM events WHERE kind = ?", RunStatus.INTERRUPTED) == [(reason,)]

    out = finish(script, db, "plain", resume=True, start_at=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "last_step 99"
    assert metric_steps(db, "loss") == list(range(200))
    assert rows(db, "SELECT status, step FROM runs") == [(RunStatus.DONE, 199)]


def test_kill_9_keeps_every_flushed_row_once_reaping_interrupts_and_resume_replays(
        script: Path, tmp_path: Path, procs: list[Any]) -> None:
    db = tmp_path / "runs.db"
    proc = launch(script, db, "slow", steps=100_000)
    procs.append(proc)
    wait_for_line(proc, "flushed 299")
    proc.kill()
    end(proc, 60)

    for key in ("loss", "other"):
        stored = metric_steps(db, key)
        assert stored[:300] == list(range(300)), key  # every step flushed before the kill is there
        assert stored == list(range(len(stored))), key  # ... and no step twice, none missing in between
    ((status, pid, step),) = rows(db, "SELECT status, pid, step FROM runs")
    assert status == RunStatus.RUNNING and pid == proc.pid and step >= 299
    with Store(db) as store:
        assert store.reap_orphans(default_host(), pid_alive) == [1]
    assert rows(db, "SELECT status FROM runs") == [(RunStatus.INTERRUPTED,)]
    assert rows(db, "SELECT message FROM events WHERE kind = ?", RunStatus.INTERRUPTED) == [
        (f"process {proc.pid} on {default_host()} is gone",)]

    # The loop's own checkpoint was at step 250: it replays from 251 and every step ends up stored once.
    out = finish(script, db, "plain", resume=True, start_at=251, steps=400)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"last_step {step}"
    for key in ("loss", "other"):
        assert metric_steps(db, key) == list(range(400)), key
    assert rows(db, "SELECT status, step FROM runs") == [(RunStatus.DONE, 399)]


def test_an_init_on_the_database_reaps_a_killed_scripts_run(script: Path, tmp_path: Path, procs: list[Any]) -> None:
    db = tmp_path / "runs.db"
    proc = launch(script, db, "park")
    procs.append(proc)
    wait_for_line(proc, "flushed 99")
    proc.kill()
    end(proc, 60)
    code = (f"import scaletui\nwith scaletui.init(db={str(db)!r}, experiment='proc', config={{'width': 9}},"
            " loss='loss') as run:\n    run.log({'loss': 1.0}, step=0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert rows(db, "SELECT id, status FROM runs ORDER BY id") == [(1, RunStatus.INTERRUPTED), (2, RunStatus.DONE)]
