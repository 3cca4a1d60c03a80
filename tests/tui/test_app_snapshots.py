"""Layout regressions: the app drawn at 80x24 and 160x48 over the fixture sweep (tests/tui/sweepdb.py).

Everything on screen is deterministic: the database's timestamps are pinned, the app's clock is
frozen at the same instant, and the database path is relative. Update after an intended change
with `pytest tests/tui/test_app_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scaletui.tui.app import ScaleApp
from scaletui.tui.widgets.grad_pane import LayerLine
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, loaded, until


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ScaleApp:
    monkeypatch.chdir(tmp_path)
    sweepdb.build(Path("sweep.db"))
    return ScaleApp(Path("sweep.db"), clock=lambda: NOW)


async def settled(pilot) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    await until(pilot, loaded(app))
    await until(pilot, lambda: len(app.query(LayerLine)) == 2 and all(line.children for line in app.query(LayerLine)))
    await pilot.pause(0.2)


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
