"""Layout regressions: the app drawn at 80x24 and 160x48 over the fixture sweep (tests/tui/sweepdb.py).

Everything on screen is deterministic: the database's timestamps are pinned, the app's clock is
frozen at the same instant, and the database path is relative. Update after an intended change
with `pytest tests/tui/test_app_snapshots.py --snapshot-update` and look at the SVGs (they are text).

80x24 is a first-class size: the dashboard, each detail pane that has its own layout, the grid, the
fit view, the help, runs compared side by side, and the states where a filter hides every run each
have a snapshot there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scaletui.tui import fit_pane
from scaletui.tui.app import ScaleApp
from scaletui.tui.widgets.grad_pane import LayerLine
from scaletui.tui.widgets.loss_pane import LossPane
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, loaded
from tests.tui.test_fit_views import columns_fit
from tests.waiting import until


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScaleApp:
    monkeypatch.chdir(tmp_path)
    sweepdb.build(Path("sweep.db"))
    return ScaleApp(Path("sweep.db"), clock=lambda: NOW)


async def settled(pilot) -> None:  # type: ignore[no-untyped-def]
    """Rows, the selected run's curves and one gradient line per layer are all there."""
    app = pilot.app
    await until(pilot, loaded(app))
    await until(pilot, lambda: len(app.query(LayerLine)) == len(app.state.layers) > 0
                and all(line.children for line in app.query(LayerLine)))
    await pilot.pause(0.2)


def pressing(*keys: str):  # type: ignore[no-untyped-def]
    """A run_before that settles, presses `keys` and lets the screen catch up."""

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settled(pilot)
        await pilot.press(*keys)
        await pilot.pause(0.2)

    return run_before


def test_dashboard_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_dashboard_160x48(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(160, 48), run_before=settled)


def test_gradients_pane_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    async def gradients(pilot) -> None:  # type: ignore[no-untyped-def]
        await settled(pilot)
        await pilot.press("p")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(80, 24), run_before=gradients)


def test_grid_view_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    async def grid(pilot) -> None:  # type: ignore[no-untyped-def]
        await settled(pilot)
        await pilot.press("g")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(80, 24), run_before=grid)


def test_events_pane_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=pressing("p", "p", "p"))


def test_help_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=pressing("question_mark"))


def test_filter_hiding_every_run_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app, terminal_size=(80, 24), run_before=pressing("slash", *"w999", "enter"))


def test_experiment_not_in_the_database_80x24(snap_compare, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sweepdb.build(Path("sweep.db"))
    app = ScaleApp(Path("sweep.db"), clock=lambda: NOW, experiment="small")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_fit_view_80x24(snap_compare, app: ScaleApp, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 20)

    async def fitted(pilot) -> None:  # type: ignore[no-untyped-def]
        await settled(pilot)
        await pilot.press("f")
        await until(pilot, lambda: bool(app.query(fit_pane.FitPane)) and app.query_one(fit_pane.FitPane).complete,
                    timeout=60)
        await until(pilot, lambda: columns_fit(app.query_one(fit_pane.FitPane)), timeout=30)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(80, 24), run_before=fitted)


def test_compared_runs_80x24(snap_compare, app: ScaleApp) -> None:  # type: ignore[no-untyped-def]
    """Runs 4 and 3 marked (`m`): their test losses overlaid, the legend under the title, marks in the table."""

    async def compared(pilot) -> None:  # type: ignore[no-untyped-def]
        await settled(pilot)
        await pilot.press("up", "m", "up", "m")
        await until(pilot, lambda: sorted(c.run_id or 0 for c in app.query_one(LossPane).curves) == [3, 4])
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(80, 24), run_before=compared)
