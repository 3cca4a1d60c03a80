"""80x24 is a first-class size (and 160x48 the comfortable one): nothing the user needs is cut off.

Each check measures the widgets themselves (a table's columns against the width it has, the footer's
keys against the footer), so a failure names what does not fit; the snapshot tests show the result.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from textual.widget import Widget
from textual.widgets import DataTable, Footer

from scaletui.tui import fit_pane
from scaletui.tui.app import ScaleApp
from scaletui.tui.screens.modals import HelpScreen
from scaletui.tui.widgets.runs_table import RunsTable
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, loaded, table_ids
from tests.waiting import until


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def fits_across(widget: Widget) -> bool:
    """Everything the widget holds is within its width: nothing to scroll to sideways."""
    return widget.virtual_size.width <= widget.scrollable_content_region.width


def footer_keys(app: ScaleApp) -> list[Widget]:
    """The keys the footer shows (FooterKey widgets, found by type name: textual does not export it)."""
    return [key for key in app.screen.query_one(Footer).query("FooterKey") if key.display]


def keys_shown(app: ScaleApp) -> set[str]:
    return {key.key for key in footer_keys(app)}  # type: ignore[attr-defined]


def whole_keys(app: ScaleApp) -> bool:
    """Every key shown in the footer ends inside it (none is cut at the edge)."""
    footer = app.screen.query_one(Footer)
    return all(key.region.right <= footer.region.right for key in footer_keys(app))


def test_help_lists_every_key_and_scrolls_at_80x24(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            listed = {key for _, rows in app.screen.sections for key, _ in rows}
            app_keys = {"q", "?", "r", "X", "k", "space", "1", "g", "f", "p", "t", "o", "O", "/", "l", "e", "n", "s",
                        "esc"}
            assert app_keys <= listed and {"x", "g", "l", "f"} <= {k for k, _ in app.screen.sections[1][1]}
            scroll = app.screen.query_one("#help-scroll")
            await pilot.pause()
            assert scroll.max_scroll_y > 0  # taller than the terminal: it must scroll, not be cut
            await pilot.press("end")
            await until(pilot, lambda: scroll.scroll_y == scroll.max_scroll_y)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(go())


def test_the_footer_never_cuts_a_key_at_80_columns(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 20)

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            await until(pilot, lambda: len(footer_keys(app)) > 0 and whole_keys(app))
            assert {"q", "question_mark"} <= keys_shown(app)
            await pilot.press("f")  # the fit pane's keys come first
            await until(pilot, lambda: "x" in keys_shown(app) and whole_keys(app))
            assert {"x", "g", "l", "f", "1"} <= keys_shown(app)
            await until(pilot, lambda: not any(w.is_running for w in app.workers if w.group == "fit"), timeout=60)

    asyncio.run(go())


def test_event_lines_wrap_at_80x24_and_rewrap_when_the_terminal_grows(db: Path) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("p", "p", "p")
            events = app.query_one("#events-pane")
            await until(pilot, lambda: events.display and events.virtual_size.height > 0)
            assert fits_across(events)
            narrow = events.size.width
            await pilot.resize_terminal(160, 48)
            await until(pilot, lambda: not app.screen.has_class("-narrow") and events.size.width != narrow)
            await pilot.pause()
            assert fits_across(events)

    asyncio.run(go())


def test_the_fit_table_fits_at_80x24(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 20)

    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, loaded(app))
            await pilot.press("f")
            table = await _fitted_table(pilot, app)
            assert fits_across(table)
            await pilot.resize_terminal(160, 48)  # wide: every column, one line per curve
            await until(pilot, lambda: len(table.columns) == len(fit_pane.TABLE_COLUMNS))
            await pilot.pause()
            assert fits_across(table)

    asyncio.run(go())


async def _fitted_table(pilot, app: ScaleApp) -> DataTable:  # type: ignore[no-untyped-def]
    def fitted() -> bool:
        panes = app.query(fit_pane.FitPane)
        return bool(panes) and bool(panes.first().reports)

    await until(pilot, fitted, timeout=60)
    await pilot.pause()
    return app.query_one("#fit-table", DataTable)


def test_the_runs_tables_last_column_fits_at_160x48(tmp_path: Path) -> None:
    """A 4 x 4 x 4 sweep of 64 runs (so the table scrolls vertically), 2000 steps, two training."""
    path = tmp_path / "sweep.db"
    sweepdb.build(path, widths=(16, 32, 64, 128), depths=(1, 2, 4, 6), seeds=(0, 1, 2, 3), running=2, queued=10)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET steps = 2000, step = CASE status WHEN 'done' THEN 2000 "
                     "WHEN 'running' THEN 1234 ELSE NULL END")
    conn.close()

    async def go() -> None:
        app = ScaleApp(path, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.query_one(RunsTable)
            await until(pilot, lambda: len(table_ids(app)) == 64)
            await pilot.pause()
            assert table.max_scroll_y > 0 and fits_across(table)

    asyncio.run(go())
