"""What the app shows when it opens, and what it launches: the first minutes of a researcher's session.

* The experiment named by `./experiments.toml` is a preference, never a filter that hides every run.
* Whenever a filter hides every run, the status line says so and how to undo it.
* The run selected on open is one worth looking at (training now, else the latest), not run 1 queued.
* `scaletui run --fresh FILE` wipes once: the first launch gets `--fresh`, a later `r` resumes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

from scaletui.tui import sweep_control
from scaletui.tui.app import ScaleApp
from scaletui.tui.widgets.runs_table import RunsTable
from scaletui.tui.widgets.status_bar import StatusBar
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, table_ids
from tests.waiting import until


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def status(app: ScaleApp) -> str:
    return str(app.query_one(StatusBar).render())


# --------------------------------------------------------------------------- which experiment


def test_an_experiment_missing_from_the_database_shows_every_run_and_says_so(db: Path) -> None:
    """`scaletui --db runs/small.db` in a folder whose experiments.toml names another experiment."""

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, experiment="other")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(table_ids(app)) == 6)
            assert app.view.experiment is None
            assert "experiment 'other' is not in this database; showing all (n: next experiment)" in status(app)
            assert status(app).startswith("experiment 'other'")  # the reason first: never cut off
            await pilot.press("n")  # the user's own choice replaces the preference, and the note goes
            assert app.view.experiment == "tiny" and "not in this database" not in status(app)

    asyncio.run(go())


def test_a_named_experiment_in_the_database_is_shown_alone(db: Path) -> None:
    sweepdb.build(db, experiment="other", widths=(32,), depths=(1,), running=0, queued=0)

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, experiment="tiny")
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: len(table_ids(app)) == 6 and app.state.experiments == ("tiny", "other"))
            assert app.view.experiment == "tiny" and "not in this database" not in status(app)

    asyncio.run(go())


def test_a_filter_that_hides_every_run_says_how_to_undo_it(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(table_ids(app)) == 6)
            await pilot.press("slash", *"w999", "enter")
            assert table_ids(app) == []
            assert status(app).startswith("no run matches the filter 'w999' (/ edits it, esc clears it)")
            await pilot.press("escape")
            assert len(table_ids(app)) == 6 and "no run matches" not in status(app)

    asyncio.run(go())


def test_an_empty_database_says_how_to_start(tmp_path: Path) -> None:
    async def go() -> None:
        app = ScaleApp(tmp_path / "none.db", tmp_path / "experiments.toml", clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.state.polled_at is not None)
            await pilot.pause()
            assert status(app).startswith(f"{tmp_path / 'none.db'}: no database yet")

    asyncio.run(go())


# --------------------------------------------------------------------------- which run


def test_on_open_a_running_run_is_selected(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.view.selected is not None
                        and (app.view.selected, "train_loss") in app.state.series)
            assert app.view.selected == 5 and app.query_one(RunsTable).selected_run() == 5  # w16 d2: running
            assert "mlp w16 d2 s0" in str(app.query_one("#loss-title").render())

    asyncio.run(go())


def test_without_a_running_run_the_latest_one_is_selected(tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    labels = sweepdb.build(path, running=0, queued=2)
    latest = labels["mlp w8 d2 s0"]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET finished_at = '2026-01-01T13:00:00.000Z' WHERE id = ?", [latest])
    conn.close()

    async def go() -> None:
        app = ScaleApp(path, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.view.selected is not None and len(table_ids(app)) == 6)
            assert app.view.selected == latest

    asyncio.run(go())


def test_the_selection_follows_training_until_the_user_moves(db: Path) -> None:
    """While the user has not moved the cursor, a newly running run replaces a stopped selection;
    after they have, their choice stays."""
    spec = sweepdb.specs((16,), (4,), (0,), 60)[0]

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, poll_interval=0.05)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.view.selected == 5)
            _finish(db, 5)
            _start(db, 6, spec)
            await until(pilot, lambda: app.view.selected == 6 and app.query_one(RunsTable).selected_run() == 6)
            await pilot.press("up")
            await until(pilot, lambda: app.view.selected == 5)
            _finish(db, 6)
            await until(pilot, lambda: app.state.runs[6].status == "done")
            await pilot.pause(0.2)
            assert app.view.selected == 5

    asyncio.run(go())


def _finish(db: Path, run_id: int) -> None:
    from scaletui.core.records import RunOutcome
    from scaletui.core.vocabulary import RunStatus
    from scaletui.store.writer import Store

    with Store(db) as store:
        store.finish_run(run_id, RunOutcome(RunStatus.DONE, 60, final_train_loss=1.0, final_test_loss=1.1))


def _start(db: Path, run_id: int, spec: Any) -> None:
    from scaletui.store.writer import Store

    with Store(db) as store:
        store.mark_running(run_id, pid=4_000_000 + run_id, host="gpu-box-elsewhere")
    sweepdb.extend_run(db, run_id, spec, 0, 10)


# --------------------------------------------------------------------------- what `r` launches


class FakeSweep:
    """Stands in for the `scaletui run --headless` subprocess: records its command, exits at once."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, command: list[str], **_: Any) -> None:
        FakeSweep.commands.append(list(command))
        self.pid = 4242

    def wait(self) -> int:
        return 0


def test_fresh_reaches_the_first_launch_and_a_later_r_resumes(db: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen: `scaletui run --fresh FILE` in app mode did not wipe: the flag was dropped from the app's
    arguments before the launching thread read them."""
    FakeSweep.commands = []
    monkeypatch.setattr(sweep_control.subprocess, "Popen", FakeSweep)
    sweep_file = tmp_path / "experiments.toml"

    async def go() -> None:
        app = ScaleApp(db, sweep_file, clock=lambda: NOW, start=True, run_args=("--workers", "2", "--fresh"))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(FakeSweep.commands) == 1 and app.sweep.proc is None
                        and "exited" in app.sweep.note)
            await pilot.press("r")
            await until(pilot, lambda: len(FakeSweep.commands) == 2)

    asyncio.run(go())
    first, second = FakeSweep.commands
    assert first[-3:] == ["--workers", "2", "--fresh"] and str(sweep_file) in first
    assert second[-2:] == ["--workers", "2"] and "--fresh" not in second


# --------------------------------------------------------------------------- the first poll


def test_a_first_poll_that_beats_the_screens_own_mount_is_applied_not_dropped(db: Path) -> None:
    """Seen on a loaded machine: the first poll (every run; the poller's cursors move past them) landed
    before the screen had processed its mount and was skipped, so the app showed `done 0/0` for good."""
    from scaletui.tui.messages import SnapshotReady

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, autopoll=False)
        async with app.run_test(size=(80, 24)) as pilot:
            app.main._is_mounted = False  # as in the app's first moments, when polling starts
            app.post_message(SnapshotReady(app.polling.poller.poll()))
            await until(pilot, lambda: app.polling.applied.is_set())
            app.main._is_mounted = True
            assert len(app.state.runs) == 6

    asyncio.run(go())


def test_a_poll_that_lands_while_the_app_shuts_down_is_let_go(db: Path) -> None:
    """Seen: a snapshot applied after shutdown had removed the widgets crashed the app on exit."""
    from scaletui.tui.messages import SnapshotReady

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, autopoll=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await app.main.query_one("#views").remove()  # what shutdown does to the widgets
            app.post_message(SnapshotReady(app.polling.poller.poll()))
            await until(pilot, lambda: app.polling.applied.is_set())
            assert app.state.runs == {}

    asyncio.run(go())
