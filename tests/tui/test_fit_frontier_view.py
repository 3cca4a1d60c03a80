"""The fit pane's frontier view (`w` three times): L(N, D), N_opt and D_opt per budget, the closest run.

Pilots over real SQLite files: tests/frontierdb.py's width x steps sweep, whose final losses follow
L(N, D) = 0.4 + 40/N^0.5 + 20/D^0.4 with C = 6 N D, and tests/fitdb.py's sweep without a data axis (every run saw
the same number of examples), which has no frontier.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest
from textual.widgets import DataTable
from textual_plotext import PlotextPlot

from scaletui.services.fitting import FitSpec
from scaletui.services.frontier import frontier_experiment
from scaletui.services.frontier_lines import closest_lines
from scaletui.tui import fit_pane
from scaletui.tui.app import ScaleApp
from scaletui.tui.fit_pane import FRONTIER, FRONTIER_COLUMNS, NARROW_FRONTIER_COLUMNS, PREDICTIONS, VIEWS, FitPane
from scaletui.tui.widgets.ledger_view import LEDGER_COLUMNS
from scaletui.tui.widgets.runs_table import RunsTable
from tests.fitdb import fill as fill_without_data_axis
from tests.fitdb import plan
from tests.frontierdb import BATCH, STEPS, WIDTHS, fill, params_of
from tests.test_frontier_cli import true_n_opt
from tests.tui.hosts import FitHost
from tests.tui.test_app_pilot import NOW
from tests.tui.test_fit_views import columns, columns_fit, shown, text
from tests.waiting import until

pytestmark = pytest.mark.slow  # each test fits L(N, D) twice in the pane's worker

BOOTSTRAP = 30
RUNS = len(WIDTHS) * len(STEPS) * 2
#: The view's default budgets, from the sweep's own compute: C = 6 N D of its smallest and largest run.
SMALLEST = 6 * params_of(WIDTHS[0]) * STEPS[0] * BATCH
LARGEST = 6 * params_of(WIDTHS[-1]) * STEPS[-1] * BATCH
BUDGETS = (SMALLEST, math.sqrt(SMALLEST * LARGEST), LARGEST, 10 * LARGEST)
WITH_INTERVAL = re.compile(r"^(\S+) \[\S+, \S+\]$")


@pytest.fixture(autouse=True)
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", BOOTSTRAP)


@pytest.fixture(scope="module")
def frontier_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("frontier") / "runs.db")


async def press_w_until(pilot, pane: FitPane, view: str) -> None:  # type: ignore[no-untyped-def]
    """Press `w` until the pane's view is `view`; fails when a whole cycle of `w` never gets there."""
    for _ in range(len(VIEWS)):
        if pane.choice.view == view:
            return
        await pilot.press("w")
    assert pane.choice.view == view, f"`w` never reached the {view} view"


def cells(pane: FitPane, column: int) -> list[str]:
    table = pane.query_one("#fit-table", DataTable)
    return [str(table.get_row_at(row)[column]) for row in range(table.row_count)]


def canvas(pane: FitPane) -> str:
    """What the plot draws inside its frame (tick labels and axis titles left out)."""
    rendered = str(pane.query_one("#fit-plot", PlotextPlot).render())
    inside = [line.split("┤", 1)[-1] if "┤" in line else line.split("│", 1)[-1] for line in rendered.splitlines()
              if "│" in line or "┤" in line]
    return "\n".join(inside)


def test_w_reaches_the_frontier_with_a_row_per_budget_and_names_the_closest_run(frontier_db: Path) -> None:
    asyncio.run(_wide(frontier_db))


async def _wide(db: Path) -> None:
    app = FitHost(db, "frontier")
    async with app.run_test(size=(160, 48)) as pilot:
        pane = app.query_one(FitPane)
        await until(pilot, lambda: pane.complete, timeout=60)
        pane.focus()
        await press_w_until(pilot, pane, FRONTIER)
        await until(pilot, shown(pane, FRONTIER), timeout=60)
        assert columns(pane) == list(FRONTIER_COLUMNS)
        assert cells(pane, 0) == [f"{c:.3g}" for c in BUDGETS]
        n_cells, d_cells = cells(pane, 1), cells(pane, 2)
        for c, n_cell, d_cell in zip(BUDGETS, n_cells, d_cells, strict=True):
            n, d = (WITH_INTERVAL.match(cell) for cell in (n_cell, d_cell))
            assert n is not None and d is not None, (n_cell, d_cell)  # the bootstrap's intervals are shown
            assert 6 * float(n[1]) * float(d[1]) == pytest.approx(c, rel=2e-3)  # N_opt D_opt spends C = 6 N D
            assert float(n[1]) == pytest.approx(true_n_opt(c), rel=0.5)
        assert cells(pane, 5)[-1] == "D extrapolated"  # 10x the largest run needs more data than any run saw
        status = text(pane, "#fit-status")
        assert "frontier: compute-optimal frontier" in status and "C = 6 N D" in status
        assert f"{RUNS} runs" in status and f"{BOOTSTRAP} bootstrap resamples" in status
        report = frontier_experiment(db, "frontier", FitSpec(n_bootstrap=BOOTSTRAP))
        notes = text(pane, "#fit-notes").splitlines()
        assert notes[0] == closest_lines(report)[0]
        assert notes[0].startswith("closest to optimal (loss / frontier loss at its compute): N=")
        assert any(line.startswith("N_opt = G (C/k)^a") and "[" in line for line in notes)  # a with its interval
        assert any(line.startswith("warning: runs repeat their data") for line in notes)
        plot = canvas(pane)
        assert plot.count("X") == 1 and all(str(i) in plot for i in range(1, len(WIDTHS) + 1))


def test_a_sweep_without_a_data_axis_shows_the_reason(tmp_path: Path) -> None:
    db = fill_without_data_axis(tmp_path / "runs.db", plan())  # widths only, the same steps for every run
    asyncio.run(_no_data_axis(db))


async def _no_data_axis(db: Path) -> None:
    app = FitHost(db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await until(pilot, lambda: pane.complete, timeout=60)
        pane.focus()
        await press_w_until(pilot, pane, FRONTIER)
        await until(pilot, lambda: "cannot compute the frontier view" in text(pane, "#fit-status"), timeout=60)
        status = text(pane, "#fit-status")
        assert status.startswith("cannot compute the frontier view: experiment 'law': every run saw D = ")
        assert "the frontier needs a data axis: sweep train.steps" in status and "--frontier" not in status
        assert columns(pane) == list(FRONTIER_COLUMNS) and pane.query_one("#fit-table", DataTable).row_count == 0
        assert text(pane, "#fit-notes") == ""
        await pilot.press("w")  # the pane goes on working
        await until(pilot, lambda: pane.choice.view == PREDICTIONS and pane.view_report is not None, timeout=60)
        assert columns(pane) == list(LEDGER_COLUMNS)


def test_80x24_has_the_narrow_columns_and_a_wider_terminal_the_intervals(frontier_db: Path) -> None:
    asyncio.run(_narrow(frontier_db))


async def _narrow(db: Path) -> None:
    app = ScaleApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.query_one(RunsTable).row_count == RUNS, timeout=30)
        await pilot.press("f")
        await until(pilot, lambda: bool(app.query(FitPane)) and app.query_one(FitPane).complete, timeout=60)
        pane = app.query_one(FitPane)
        await press_w_until(pilot, pane, FRONTIER)
        await until(pilot, shown(pane, FRONTIER), timeout=60)
        assert columns(pane) == list(NARROW_FRONTIER_COLUMNS)
        assert cells(pane, 0) == [f"{c:.3g}" for c in BUDGETS]
        assert all("[" not in cell for cell in cells(pane, 1) + cells(pane, 2))
        rendered = str(pane.query_one("#fit-plot", PlotextPlot).render())
        assert "1-5: sizes; X: closest" in rendered  # the plot's key fits at 80 columns
        await pilot.resize_terminal(160, 48)
        await until(pilot, lambda: columns(pane) == list(FRONTIER_COLUMNS), timeout=60)
        assert all(WITH_INTERVAL.match(cell) for cell in cells(pane, 1))


# ----------------------------------------------------------------------------- snapshots of the whole app
# Update after an intended change with `pytest tests/tui/test_fit_frontier_view.py --snapshot-update`, and look
# at the SVGs.


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScaleApp:
    monkeypatch.chdir(tmp_path)  # the status bar names the database: a relative path is the same every time
    fill(Path("sweep.db"))
    return ScaleApp(Path("sweep.db"), clock=lambda: NOW)


async def frontier_shown(pilot) -> None:  # type: ignore[no-untyped-def]
    """A run_before: open the fit view, `w` to the frontier, wait for its bootstrap and the table's widths."""
    a = pilot.app
    await until(pilot, lambda: a.query_one(RunsTable).row_count == RUNS, timeout=30)
    await pilot.press("f")
    await until(pilot, lambda: bool(a.query(FitPane)) and a.query_one(FitPane).complete, timeout=60)
    await press_w_until(pilot, a.query_one(FitPane), FRONTIER)
    await until(pilot, shown(a.query_one(FitPane), FRONTIER), timeout=60)
    await until(pilot, lambda: columns_fit(a.query_one(FitPane)), timeout=30)  # widths follow content lazily
    await pilot.pause(0.2)


def test_frontier_view_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=frontier_shown)


def test_frontier_view_160x48(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(160, 48), run_before=frontier_shown)
