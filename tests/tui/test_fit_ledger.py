"""The fit pane's `P` (record the next size's prediction) and its predictions view (the track record),
over a real database whose runs follow a known law (tests/fitdb.py: widths 8..128, two seeds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from scaletui.core.vocabulary import PredictionSource, PredictionStatus
from scaletui.store import Reader
from scaletui.tui import fit_pane
from scaletui.tui.fit_pane import PREDICTIONS, FitPane
from tests.fitdb import fill, plan
from tests.tui.hosts import FitHost
from tests.waiting import until

pytestmark = pytest.mark.slow  # a fit with its bootstrap behind each prediction


def test_p_records_the_next_width_and_the_predictions_view_lists_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 30)
    db = fill(tmp_path / "runs.db", plan())  # widths 8, 16, 32, 64, 128 at depth 1

    async def go() -> None:
        app = FitHost(db, "law")
        async with app.run_test(size=(140, 45)) as pilot:
            pane = app.query_one(FitPane)
            await until(pilot, lambda: pane.complete, timeout=60)
            pane.focus()
            await pilot.press("P")
            status = pane.query_one("#fit-status", Static)
            await until(pilot, lambda: "prediction #1 recorded: 256x1" in str(status.render()), timeout=60)
            with Reader(db) as reader:
                [entry] = reader.predictions("law")
            assert (entry.source, entry.status, entry.width) == (PredictionSource.APP, PredictionStatus.OPEN, 256)
            for _ in range(fit_pane.VIEWS.index(PREDICTIONS)):  # from the law view
                await pilot.press("w")
            await until(pilot, lambda: pane.choice.view == PREDICTIONS and pane.view_report is not None, timeout=60)
            table = pane.query_one("#fit-table", DataTable)
            await until(pilot, lambda: table.row_count == 1)
            assert [str(c) for c in table.get_row_at(0)][:3] == ["1", "256x1", f"{entry.predicted:.4f}"]
            assert "1 recorded, 0 scored" in str(status.render())

    asyncio.run(go())
