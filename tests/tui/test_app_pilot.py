"""The app's behaviour through its keys, with Pilot, over real SQLite files.

Selection, sorting, filtering, pausing, switching views, help; a database that another process is
writing (the app attaches to it exactly as to its own sweep); and, marked slow, a real tiny sweep
started, one run stopped and the sweep stopped from the app's keys.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from textual.widgets import ContentSwitcher, DataTable, Input

from scaletui.core.vocabulary import RunStatus
from scaletui.store.reader import Reader
from scaletui.tui.app import ScaleApp
from scaletui.tui.screens.modals import ConfirmScreen, HelpScreen
from scaletui.tui.sweep_control import stop_refusal
from scaletui.tui.widgets.grad_pane import LayerLine
from scaletui.tui.widgets.loss_pane import LossPane
from scaletui.tui.widgets.runs_table import RunsTable
from scaletui.tui.widgets.status_bar import StatusBar
from tests.tui import sweepdb
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]
NOW = 1767268800.0  # 2026-01-01T12:00:00Z, the fixture's pinned time


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def table_ids(app: ScaleApp) -> list[int]:
    table = app.query_one(RunsTable)
    return [int(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]  # type: ignore[arg-type]


def stop_requests(db: Path) -> list[tuple[int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT run_id FROM stop_requests").fetchall()


def loaded(app: ScaleApp) -> Callable[[], bool]:
    """Every row is shown and the selected run's curves are read."""
    return lambda: len(table_ids(app)) == 6 and (app.view.selected, "train_loss") in app.state.series


def cell(app: ScaleApp, run_id: int, column: str) -> str:
    return str(app.query_one(RunsTable).get_cell(str(run_id), column))


def test_selection_drives_the_loss_and_gradient_panes(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            assert table_ids(app) == [1, 2, 3, 4, 5, 6] and app.view.selected == 5  # the one training
            await until(pilot, lambda: len(app.query(LayerLine)) == 3)
            await pilot.press("up", "up")
            await until(pilot, lambda: app.view.selected == 3 and len(app.query(LayerLine)) == 5)
            assert "mlp w8 d4 s0" in str(app.query_one("#loss-title").render())
            assert app.state.group_of(3, "width") == [1, 2]
            assert cell(app, 3, "delta").endswith("▲")  # d4 worse than d2 at width 8
            assert "VANISH" in cell(app, 3, "alerts")

    asyncio.run(go())


def test_sort_flip_and_filter_from_the_keyboard(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("t")  # grouped by depth, ranked by width
            assert table_ids(app) == [1, 4, 2, 5, 3, 6]
            assert str(app.query_one(RunsTable).columns["delta"].label) == "Δ width"  # type: ignore[index]
            await pilot.press("t", "o")  # back to width groups; sort by loss
            assert app.view.sort == "loss"
            assert table_ids(app)[:2] == [4, 5] and table_ids(app)[-1] == 6  # queued (no loss) last
            await pilot.press("O")
            assert table_ids(app)[0] == 6
            await pilot.press("slash")
            assert app.query_one("#filter", Input).has_focus
            await pilot.press(*"w8 d", "enter")
            assert sorted(table_ids(app)) == [1, 2, 3]
            await pilot.press("slash", *" vanish")
            assert table_ids(app) == [3]
            await pilot.press("escape")
            assert sorted(table_ids(app)) == [1, 2, 3, 4, 5, 6] and app.query_one(RunsTable).has_focus

    asyncio.run(go())


def count_polls(app: ScaleApp) -> dict[str, int]:
    """Count the app's polls and say whether one is under way (the poll loop runs in a thread)."""
    polls = {"done": 0, "busy": 0}
    real = app.polling.poller.poll

    def counted():  # type: ignore[no-untyped-def]
        polls["busy"] = 1
        try:
            return real()
        finally:
            polls["done"] += 1
            polls["busy"] = 0

    app.polling.poller.poll = counted  # type: ignore[method-assign]
    return polls


def test_pause_stops_applying_new_rows_until_resumed(db: Path) -> None:
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, poll_interval=0.05)
        polls = count_polls(app)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("space")
            assert "PAUSED" in str(app.query_one(StatusBar).render())
            await until(pilot, lambda: not polls["busy"] and app.polling.applied.is_set())  # a poll under way lands
            before = polls["done"]
            sweepdb.extend_run(db, 5, spec, 31, 45)
            await pilot.pause(0.5)  # ten poll intervals
            assert polls["done"] == before and cell(app, 5, "step") == "30/60"
            await pilot.press("space")
            await until(pilot, lambda: cell(app, 5, "step") == "45/60")
            assert "polled" in str(app.query_one(StatusBar).render())

    asyncio.run(go())


def test_views_panes_help_and_log_and_smoothing_toggles(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            assert app.screen.has_class("-narrow")
            assert app.query_one(LossPane).display and not app.query_one("#grad-pane").display
            await pilot.press("p")
            assert app.query_one("#grad-pane").display and not app.query_one(LossPane).display
            await pilot.press("p", "p", "p")
            assert app.query_one(LossPane).display
            assert app.view.log_y and "log y" in str(app.query_one("#loss-title").render())  # the default
            await pilot.press("l", "e")
            assert not app.view.log_y and app.view.smooth
            assert "linear y + EMA" in str(app.query_one("#loss-title").render())
            await pilot.press("g")
            assert app.query_one(ContentSwitcher).current == "grid"
            grid = app.query_one("#grid-table", DataTable)
            assert grid.row_count == 3 and "▼d" in str(grid.get_cell("4", "8"))
            await pilot.press("1", "question_mark")
            assert isinstance(app.screen, HelpScreen)
            keys = {key for _, rows in app.screen.sections for key, _ in rows}
            assert {"q", "?", "r", "k", "space", "/", "l", "e", "g", "f", "s", "x"} <= keys
            await pilot.press("escape", "q")
        assert app.return_value == 0

    asyncio.run(go())


def test_start_without_sweep_file_warns_and_stop_run_elsewhere_asks_through_the_database(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("r")
            assert app.sweep.proc is None
            assert app.view.selected == 5  # selected on open: it is training, on another host
            await pilot.press("k")
            assert any("on gpu-box-elsewhere: its sweep's writer passes it on" in n.message
                       for n in app._notifications)
            await until(pilot, lambda: stop_requests(db) == [(5,)])  # never signalled: a request its writer reads

    asyncio.run(go())
    assert stop_refusal(None, None) == "no run selected"
    assert stop_refusal(RunStatus.DONE, "h") == "the selected run is done, not running"


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from tests.tui import sweepdb
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]
    for first in range(31, 61, 5):
        sweepdb.extend_run(Path({db!r}), 5, spec, first, first + 4)
        time.sleep(0.1)
""")


def test_attaches_to_a_database_another_process_is_writing(db: Path) -> None:
    """Another process appends steps to a running run; the app shows them as they land."""

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, poll_interval=0.1)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            assert app.view.selected == 5  # selected on open: it is training
            writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), db=str(db))])
            try:
                await until(pilot, lambda: cell(app, 5, "step") == "60/60", timeout=30)
            finally:
                assert writer.wait(timeout=30) == 0
            await until(pilot, lambda: len(app.state.series[(5, "train_loss")].values) == 61)
            assert list(app.state.series[(5, "train_loss")].steps) == list(range(61))
            assert app.state.layers[0].steps[-1] == 60

    asyncio.run(go())


@pytest.mark.slow
def test_start_stop_one_run_then_the_sweep_from_the_keys(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    """A real sweep: `r` starts it as a subprocess, `k` stops the selected run, `X` stops the rest."""
    sweep = make_sweep(model={"width": [8, 16], "depth": [1]}, train={"steps": 20000, "eval_every": 500},
                       experiment={"workers": 2})
    db = tmp_path / "runs.db"

    def statuses() -> dict[int, str]:
        if not db.exists():
            return {}
        with Reader(db) as reader:
            return {r.id: r.status for r in reader.runs()}

    async def go() -> None:
        app = ScaleApp(db, sweep, experiment="tiny", poll_interval=0.2)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("r")
            await until(pilot, lambda: app.sweep.proc is not None, timeout=60)
            await until(pilot, lambda: list(statuses().values()).count("running") == 2
                        and all(app.state.runs[i].status == "running" for i in statuses()), timeout=120)
            await until(pilot, lambda: app.view.selected is not None)
            victim = app.view.selected
            await pilot.press("k")
            await until(pilot, lambda: statuses()[victim] == "interrupted", timeout=60)
            other = next(i for i in statuses() if i != victim)
            assert statuses()[other] == "running"
            await pilot.press("X")
            await until(pilot, lambda: app.sweep.proc is None, timeout=90)
            assert statuses()[other] == "interrupted"
            assert "stopped; runs are resumable" in app.sweep.note
            await until(pilot, lambda: app.state.runs[other].status == "interrupted")

    asyncio.run(go())
    assert (tmp_path / "scaletui-app-sweep.log").exists()


@pytest.mark.slow
def test_quit_while_training_asks_then_stops_cleanly(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(model={"width": [8], "depth": [1]}, train={"steps": 20000, "eval_every": 500},
                       experiment={"workers": 1})
    db = tmp_path / "runs.db"

    async def go() -> ScaleApp:
        app = ScaleApp(db, sweep, experiment="tiny", poll_interval=0.2, start=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: any(r.status == "running" for r in app.state.runs.values()), timeout=120)
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert app.sweep.proc is not None
            await pilot.press("q", "y")
            await until(pilot, lambda: app.sweep.proc is None, timeout=90)
        return app

    app = asyncio.run(go())
    assert app.return_value == 0
    with Reader(db) as reader:
        assert [r.status for r in reader.runs()] == [RunStatus.INTERRUPTED]
    assert os.path.exists(tmp_path / "checkpoints")


def test_fit_view_mounts_the_fit_pane_and_s_shows_the_configurators_proposal(db: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from scaletui.tui import fit_pane
    from scaletui.tui.fit_pane import FitPane
    from scaletui.tui.screens.modals import TextScreen

    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 20)  # the pane's own tests cover its fits

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("f")
            await until(pilot, lambda: bool(app.query(FitPane)) and app.query_one(FitPane).has_focus)
            assert app.query_one(ContentSwitcher).current == "fit"
            await pilot.press("1")
            assert app.query_one(ContentSwitcher).current == "dashboard" and app.query_one(RunsTable).has_focus
            await pilot.press("up", "up", "up", "up", "s")  # selected: w8 d1; the next width of the sweep is 16
            await until(pilot, lambda: isinstance(app.screen, TextScreen), timeout=60)
            assert app.screen.title_text.startswith("next size w16 d1: lr ")
            assert "[model]" in str(app.screen.query_one("#text-body").render())
            await pilot.press("escape")
            await until(pilot, lambda: not any(w.is_running for w in app.workers if w.group == "fit"), timeout=60)

    asyncio.run(go())
