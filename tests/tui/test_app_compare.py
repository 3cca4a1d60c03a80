"""Runs compared side by side in the app, through its keys (Pilot), over real SQLite files.

`m` marks the selected run, `M` its group, `u` clears the marks, `v` cycles the metric; the loss pane
overlays the marked runs' curves with a legend, the runs table marks their rows, and both follow the
database live. The fixture sweep is tests/tui/sweepdb.py: run 1..6 = w8 d1, w8 d2, w8 d4, w16 d1,
w16 d2 (running, 30 of 60 steps), w16 d4 (queued).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widget import Widget
from textual.widgets import Footer, Static

from scaletui.tui.app import ScaleApp
from scaletui.tui.screens.modals import HelpScreen
from scaletui.tui.widgets.loss_pane import LossPane
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, cell, loaded, table_ids
from tests.tui.test_compare import log_cost
from tests.waiting import until


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def text(app: ScaleApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def drawn(app: ScaleApp) -> list[int | None]:
    """The runs whose curves the loss pane drew last."""
    return [curve.run_id for curve in app.query_one(LossPane).curves]


def drawing(app: ScaleApp, *run_ids: int) -> Callable[[], bool]:
    return lambda: sorted(r for r in drawn(app) if r is not None) == sorted(run_ids)


def run_app(db: Path, size: tuple[int, int], body: Callable[..., object], **kw: object) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, **kw)  # type: ignore[arg-type]
        async with app.run_test(size=size) as pilot:
            await until(pilot, loaded(app))
            await body(app, pilot)  # type: ignore[misc]

    asyncio.run(go())


def test_marking_two_runs_overlays_their_curves_with_a_legend_naming_both(db: Path) -> None:
    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("up", "m", "up", "m")  # run 4 (w16 d1), then run 3 (w8 d4)
        await until(pilot, drawing(app, 3, 4))
        assert app.view.marks == {4: 0, 3: 1}
        assert text(app, "#loss-title").startswith("test_loss of 2 marked run(s)")
        legend = text(app, "#loss-legend")
        assert "w16 d1 s0 1.518" in legend and "w8 d4 s0 1.962" in legend  # each run's last test loss
        colors = {curve.color for curve in app.query_one(LossPane).curves}
        assert len(colors) == 2
        assert cell(app, 3, "id") == "3 ●" and cell(app, 4, "id") == "4 ●" and cell(app, 5, "id") == "5"
        await pilot.press("m")  # run 3 again: unmarked
        await until(pilot, drawing(app, 4))
        assert "w8 d4" not in text(app, "#loss-legend") and cell(app, 3, "id") == "3"

    run_app(db, (80, 24), body)


def test_M_marks_the_selected_runs_group_as_the_table_groups_it(db: Path) -> None:
    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("up", "up", "M")  # run 3: w8 d4; the table groups by width
        await until(pilot, drawing(app, 1, 2, 3))
        assert all(cell(app, r, "id").endswith("●") for r in (1, 2, 3))
        await pilot.press("M")  # all of it marked: unmarked
        await until(pilot, lambda: not app.view.marks)
        await pilot.press("t", "M")  # grouped by depth: depth 4 is runs 3 and 6 (6 is queued: no curve)
        await until(pilot, lambda: set(app.view.marks) == {3, 6} and drawing(app, 3)())
        assert "+" not in text(app, "#loss-legend") and "w16 d4 s0 -" in text(app, "#loss-legend")

    run_app(db, (160, 48), body)


def test_v_cycles_to_a_custom_metric_that_only_some_marked_runs_logged(db: Path) -> None:
    log_cost(db, 1, range(0, 61, 5), offset=0.5)  # crosses zero: no log y

    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("up", "up", "m", "up", "up", "m")  # run 3 (no cost), run 1 (cost)
        await until(pilot, drawing(app, 1, 3))
        await until(pilot, lambda: app.state.compared_metrics([1, 3]) == {"train_loss", "test_loss", "cost"})
        await pilot.press("v")  # after test_loss: cost
        await until(pilot, drawing(app, 1))
        assert text(app, "#loss-title").startswith("cost of 2 marked run(s) · linear y")
        legend = text(app, "#loss-legend")
        assert "w8 d1 s0 -0.1" in legend and "w8 d4 s0 -" in legend  # last cost; none logged
        await pilot.press("v")  # wraps to the train loss
        await until(pilot, drawing(app, 1, 3))
        assert text(app, "#loss-title").startswith("train_loss of 2 marked run(s) · log y")

    run_app(db, (80, 24), body)


def test_u_clears_the_marks_and_the_pane_shows_the_selected_run_again(db: Path) -> None:
    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("up", "m", "up", "m")
        await until(pilot, drawing(app, 3, 4))
        await pilot.press("u")
        await until(pilot, lambda: not app.view.marks and not app.query_one("#loss-legend").display)
        assert text(app, "#loss-title").startswith("mlp w8 d4 s0 · log y")  # the selected run, as before
        assert "train" in [curve.label for curve in app.query_one(LossPane).curves]
        assert cell(app, 3, "id") == "3" and cell(app, 4, "id") == "4"
        assert app.polling.poller._compared == (frozenset(), None)  # nothing more is read for them

    run_app(db, (80, 24), body)


def test_the_legend_of_twelve_marked_runs_stays_within_80_columns(tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    sweepdb.build(path, seeds=(0, 1))  # 12 runs: 10 finished, 1 running, 1 queued

    async def go() -> None:
        app = ScaleApp(path, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(app.dashboard.table.run_ids()) == 12 and app.view.selected is not None)
            app.dashboard.table.move_cursor(row=0)
            for _ in range(12):
                await pilot.press("m", "down")
            await until(pilot, lambda: len(app.view.marks) == 12 and len(drawn(app)) == 11)
            legend = app.query_one("#loss-legend", Static)
            lines = str(legend.render()).splitlines()
            assert lines and all(len(line) <= legend.size.width <= 80 for line in lines)
            shown = sum(line.count("●") for line in lines)
            assert lines[-1].endswith(f"+{12 - shown} more") and 0 < shown < 12
            assert legend.region.right <= 80 and legend.region.bottom < app.query_one("#loss-plot").region.bottom

    asyncio.run(go())


def test_the_overlay_follows_new_rows_of_the_marked_runs_live(db: Path) -> None:
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]

    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("m", "up", "m")  # run 5 (running, at step 30), run 4
        await until(pilot, drawing(app, 4, 5))
        assert "w16 d2 s0 1.551" in text(app, "#loss-legend")
        sweepdb.extend_run(db, 5, spec, 31, 45)  # a new test evaluation at step 40
        await until(pilot, lambda: list(app.state.series[(5, "test_loss")].steps)[-1] == 40)
        await until(pilot, lambda: "w16 d2 s0 1.551" not in text(app, "#loss-legend"))
        assert max(x for x, _ in app.query_one(LossPane).curves[0].points) == 40.0
        log_cost(db, 5, range(46, 48))  # a metric the run logs from now on
        await until(pilot, lambda: "cost" in app.state.metric_keys.get(5, ()))
        await pilot.press("v")
        await until(pilot, lambda: drawing(app, 5)() and text(app, "#loss-title").startswith("cost"))

    run_app(db, (80, 24), body, poll_interval=0.05)


def test_the_compare_keys_are_in_the_help_and_in_the_footer_when_it_has_room(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            footer = app.screen.query_one(Footer)
            # full at 80 columns: m and v are left out, whole (the help lists them)
            await until(pilot, lambda: "/" in text_of(footer) and "mark" not in text_of(footer) and whole(footer))
            await pilot.resize_terminal(160, 48)
            await until(pilot, lambda: "mark" in text_of(footer) and "metric" in text_of(footer) and whole(footer))
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            listed = {key for _, rows in app.screen.sections for key, _ in rows}
            assert {"m", "M", "u", "v"} <= listed

    asyncio.run(go())


def shown_keys(footer: Footer) -> list[Widget]:
    """The keys the footer shows (FooterKey widgets, by type name: textual does not export the class)."""
    return [key for key in footer.query("FooterKey") if key.display]


def whole(footer: Footer) -> bool:
    return all(key.region.right <= footer.region.right for key in shown_keys(footer))


def text_of(footer: Footer) -> str:
    return " ".join(str(key.render()) for key in shown_keys(footer))


def test_marked_rows_keep_their_place_when_the_table_is_sorted(db: Path) -> None:
    async def body(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("up", "up", "up", "up", "m")  # run 1, the first row
        await until(pilot, lambda: cell(app, 1, "id") == "1 ●")
        await pilot.press("O")  # reversed: run 1 goes last, marked or not
        await until(pilot, lambda: table_ids(app) == [6, 5, 4, 3, 2, 1])
        await pilot.press("O")
        await until(pilot, lambda: table_ids(app) == [1, 2, 3, 4, 5, 6])

    run_app(db, (80, 24), body)
