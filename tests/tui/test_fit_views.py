"""The fit pane's other views: scaling strategies (`w` once) and regimes (`w` twice), and back to the law.
(The frontier view, `w` three times, has its own tests: tests/tui/test_fit_frontier_view.py.)

Two kinds of test: a pilot over a real database whose runs follow a known law on a width x depth grid
(tests/fitdb.py: alpha = 0.5 along every strategy and at every step, no crossings), checking what the views
say; and layout snapshots of the whole app at 80x24 and 160x48 over a deterministic grid sweep
(tests/tui/sweepdb.py, every run finished). Update after an intended change with
`pytest tests/tui/test_fit_views.py --snapshot-update`, and look at the SVGs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

from scaletui.tui import fit_pane
from scaletui.tui.app import ScaleApp
from scaletui.tui.fit_pane import (
    FRONTIER,
    PREDICTIONS,
    REGIME_COLUMNS,
    REGIMES,
    STRATEGIES,
    STRATEGY_COLUMNS,
    FitPane,
)
from scaletui.tui.widgets.ledger_view import LEDGER_COLUMNS
from scaletui.tui.widgets.runs_table import RunsTable
from tests.fitdb import EVAL_STEPS, WIDTHS, fill, plan
from tests.tui import sweepdb
from tests.tui.hosts import FitHost
from tests.tui.test_app_pilot import NOW
from tests.waiting import until

pytestmark = pytest.mark.slow  # each test fits every strategy or regime, twice

DEPTHS = (1, 2, 3, 4)


@pytest.fixture(autouse=True)
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 30)


@pytest.fixture(scope="module")
def grid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("views") / "runs.db", plan(depths=DEPTHS))


def columns(pane: FitPane) -> list[str]:
    return [str(c.label) for c in pane.query_one("#fit-table", DataTable).columns.values()]


def columns_fit(pane: FitPane) -> bool:
    """Every column of the pane's table is as wide as its widest cell: DataTable measures new rows on idle,
    so right after a refill (the bootstrap's intervals replacing dashes) a column can still be narrow."""
    table = pane.query_one("#fit-table", DataTable)
    for index, column in enumerate(table.columns.values()):
        cells = [Text(line).cell_len for row in range(table.row_count)
                 for line in str(table.get_row_at(row)[index]).split("\n")]  # a narrow table's 2-line cells
        if max(cells, default=0) > column.content_width:
            return False
    return True


def text(pane: FitPane, selector: str) -> str:
    return str(pane.query_one(selector, Static).render())


def shown(pane: FitPane, view: str):  # type: ignore[no-untyped-def]
    """The pane shows `view` with its bootstrap."""
    return lambda: pane.choice.view == view and pane.complete and pane.view_report is not None


def test_w_cycles_law_strategies_regimes_frontier_predictions_and_back(grid_db: Path) -> None:
    asyncio.run(_cycle(grid_db))


async def _cycle(db: Path) -> None:
    app = FitHost(db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await until(pilot, lambda: pane.complete, timeout=60)
        pane.focus()
        await pilot.press("w")
        await until(pilot, shown(pane, STRATEGIES), timeout=60)
        table = pane.query_one("#fit-table", DataTable)
        assert columns(pane) == list(STRATEGY_COLUMNS)
        assert table.row_count == len(DEPTHS) + len(WIDTHS) + 1
        assert str(table.get_row_at(0)[0]) == "width at depth 1"
        assert "scaling strategies at equal FLOPs" in text(pane, "#fit-status")
        assert "fewest FLOPs to loss" in text(pane, "#fit-notes")
        await pilot.press("w")
        await until(pilot, shown(pane, REGIMES), timeout=60)
        assert columns(pane) == list(REGIME_COLUMNS)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == [str(s) for s in EVAL_STEPS[1:]]
        assert all(abs(float(str(table.get_row_at(i)[2])) - 0.5) < 0.02 for i in range(table.row_count))
        assert "0 crossing(s)" in text(pane, "#fit-notes")
        await pilot.press("w")  # fitdb's sweep has no data axis: the frontier view says so and `w` goes on
        assert pane.choice.view == FRONTIER
        await until(pilot, lambda: "cannot compute the frontier view" in text(pane, "#fit-status"), timeout=60)
        await pilot.press("w")
        await until(pilot, shown(pane, PREDICTIONS), timeout=60)
        assert columns(pane) == list(LEDGER_COLUMNS) and table.row_count == 0
        assert "no predictions yet" in text(pane, "#fit-notes")
        await pilot.press("w")
        await until(pilot, lambda: pane.choice.view == "law" and pane.complete and bool(pane.reports), timeout=60)
        assert columns(pane)[:2] == ["curve", "form"]


def test_keys_are_answered_while_a_view_computes_and_only_the_newest_answer_is_shown(
        grid_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The strategies comparison is held at a gate: `w` again must switch to regimes at once, and the late
    strategies answer must not overwrite the regimes view."""
    gate, stale_done = threading.Event(), threading.Event()
    real, real_compare = fit_pane.compare_experiment, FitPane._compare

    def gated(*args: object, **kwargs: object) -> object:
        gate.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    def tracked(self: FitPane, choice: object, *args: object) -> None:
        try:
            real_compare(self, choice, *args)  # type: ignore[arg-type]
        finally:
            if getattr(choice, "view", None) == STRATEGIES:
                stale_done.set()

    monkeypatch.setattr(fit_pane, "compare_experiment", gated)
    monkeypatch.setattr(FitPane, "_compare", tracked)
    asyncio.run(_newest_wins(grid_db, gate, stale_done))


async def _newest_wins(db: Path, gate: threading.Event, stale_done: threading.Event) -> None:
    app = FitHost(db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await until(pilot, lambda: pane.complete, timeout=60)
        pane.focus()
        await pilot.press("w")
        assert pane.choice.view == STRATEGIES and "fitting scaling strategies" in text(pane, "#fit-status")
        await pilot.press("w")  # handled at once, although the comparison has not returned
        assert pane.choice.view == REGIMES
        await until(pilot, shown(pane, REGIMES), timeout=60)
        gate.set()
        # a cancelled worker counts as finished while its thread still runs: wait for its work itself
        await until(pilot, stale_done.is_set, timeout=60)
        await pilot.pause()
        await pilot.pause()
        assert columns(pane) == list(REGIME_COLUMNS) and pane.choice.view == REGIMES


def test_a_view_that_cannot_be_computed_is_one_visible_line(tmp_path: Path) -> None:
    db = fill(tmp_path / "line.db", plan(depths=(1,)))  # one depth: no grid to compare strategies on
    asyncio.run(_one_line(db))


async def _one_line(db: Path) -> None:
    app = FitHost(db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        pane.focus()
        await pilot.press("w")
        await until(pilot, lambda: "cannot compute the strategies view" in text(pane, "#fit-status"), timeout=60)
        assert "at least 2 widths and 2 depths" in text(pane, "#fit-status")


# ----------------------------------------------------------------------------- snapshots of the whole app

GRID = {"widths": (8, 16, 24, 32), "depths": (1, 2, 3, 4), "seeds": (0, 1), "running": 0, "queued": 0}
#: sweepdb's loss depends on parameters alone, so every strategy would tie (and which tied strategy "wins" would
#: hang on the last bits of a float). Depth is made worth a little more and seeds differ, in every loss column.
SCALE = "(1 - 0.04 * (depth - 1)) * (1 + 0.004 * seed)"


def build_grid(path: Path) -> None:
    sweepdb.build(path, **GRID)  # type: ignore[arg-type]
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE runs SET final_test_loss = final_test_loss * {SCALE}, "
                     f"best_test_loss = best_test_loss * {SCALE}, smoothed_test_loss = smoothed_test_loss * {SCALE}")
        conn.execute(f"UPDATE metrics SET value = value * (SELECT {SCALE} FROM runs WHERE runs.id = metrics.run_id) "
                     "WHERE key = 'test_loss'")
    conn.close()


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScaleApp:
    monkeypatch.chdir(tmp_path)
    build_grid(Path("sweep.db"))
    return ScaleApp(Path("sweep.db"), clock=lambda: NOW)


def view_after(presses: int):  # type: ignore[no-untyped-def]
    """A run_before: open the fit view, press `w` `presses` times, wait for that view's bootstrap."""
    view = (STRATEGIES, REGIMES)[presses - 1]

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        a = pilot.app
        await until(pilot, lambda: a.query_one(RunsTable).row_count == 32, timeout=30)
        await pilot.press("f")
        await until(pilot, lambda: bool(a.query(FitPane)) and a.query_one(FitPane).complete, timeout=60)
        await pilot.press(*("w",) * presses)
        await until(pilot, shown(a.query_one(FitPane), view), timeout=60)
        await until(pilot, lambda: columns_fit(a.query_one(FitPane)), timeout=30)  # widths follow content lazily
        await pilot.pause(0.2)

    return run_before


def test_strategies_view_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=view_after(1))


def test_strategies_view_160x48(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(160, 48), run_before=view_after(1))


def test_regimes_view_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=view_after(2))


def test_regimes_view_160x48(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(160, 48), run_before=view_after(2))
