"""The real app in a real terminal: tmux at 80x24 and 160x48, screens captured while a sweep trains.

Pilot and snapshot tests run inside Textual's harness; this one runs `scaletui run FILE` as a user
would (over SSH, in tmux), lets it start a real sweep, and checks what is on the screen: run rows in
the table, the loss plot's frame and axis, and one gradient sparkline per layer.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

SPARK = set("▁▂▃▄▅▆▇█")
RUN_ROW = re.compile(r"^\s*\d+\s+\d+\s+\d+\s+\d+\s+(queued|run|done)\b")  # id w d seed status


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def session(tmp_path: Path) -> Iterator[str]:
    name = f"scaletui-test-{tmp_path.name}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def running_with_records(db: Path) -> bool:
    """Some run is training and has logged per-layer statistics (the panes have something to draw)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM runs r WHERE r.status = 'running' AND EXISTS"
                " (SELECT 1 FROM layer_stats l WHERE l.run_id = r.id)").fetchone())
    except sqlite3.Error:
        return False


def capture(name: str) -> list[str]:
    return tmux("capture-pane", "-p", "-t", name).splitlines()


def plot_drawn(screen: list[str]) -> bool:
    """The loss plot's frame and its x axis label are on the screen."""
    return any("┌" in line for line in screen) and any(line.split()[-1:] == ["step"] for line in screen)


def sparklines(screen: list[str]) -> list[str]:
    return [line for line in screen if sum(ch in SPARK for ch in line) >= 10]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_app_in_tmux_shows_rows_plot_and_sparklines(make_sweep: Callable[..., Path], session: str,
                                                    size: tuple[int, int]) -> None:
    train = {"steps": 20000, "eval_every": 100, "log_every": 25, "checkpoint_every": 1000}
    sweep = make_sweep(train=train)
    db = sweep.parent / "runs.db"
    command = f"cd {sweep.parent} && {sys.executable} -m scaletui run {sweep.name}"
    tmux("new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command)
    wait_for(lambda: running_with_records(db), timeout=90, what="a running run with layer statistics", interval=0.5)
    wait_for(lambda: any(RUN_ROW.match(line) and " run " in line for line in capture(session)), timeout=90,
             what="a running run's row on the screen", interval=0.5)
    wait_for(lambda: plot_drawn(capture(session)), timeout=30, what="the loss plot", interval=0.5)
    screen = capture(session)
    rows = [line for line in screen if RUN_ROW.match(line)]
    assert len(rows) == 4, "\n".join(screen)  # the sweep's four runs
    # No key was pressed: the app selected a training run by itself, so its layers have sparklines.
    tmux("send-keys", "-t", session, "p")  # next detail pane: gradients (the only pane under 100 columns)
    # one sparkline per layer of the selected run
    wait_for(lambda: len(sparklines(capture(session))) >= 2, timeout=30, what="two sparklines", interval=0.5)
    tmux("send-keys", "-t", session, "X")  # stop the sweep cleanly before the session is killed
    wait_for(lambda: not running_with_records(db), timeout=60, what="the sweep to end", interval=0.5)
