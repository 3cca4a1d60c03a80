"""The fit pane in a tiny host app, over a real database whose runs follow a known law.

The law (tests/fitdb.py): loss = 0.3 + 40 * params^-0.5 at the end of training. The pane must
show that alpha, its interval, the held-out error and a stable exponent, and each key must
refit with the new choice, without the UI ever waiting on the fit.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from scaletui.tui import fit_pane
from scaletui.tui.fit_pane import TABLE_COLUMNS, FitPane
from tests.fitdb import ALPHA, fill, plan
from tests.tui.hosts import FitHost

pytestmark = pytest.mark.slow  # each test fits (with a 200-resample bootstrap) a few times

# No async test plugin is installed: each test drives its own event loop with asyncio.run.


@pytest.fixture(autouse=True)
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """60 resamples instead of the pane's 200: same code path, a third of the time."""
    monkeypatch.setattr(fit_pane, "PANE_BOOTSTRAP", 60)


@pytest.fixture(scope="module")
def law_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("pane") / "runs.db", plan(depths=(1, 2), diverged=[(128, 2, 1)]))


async def settle(pilot, pane: FitPane) -> None:  # type: ignore[no-untyped-def]
    """Wait until the fit worker has finished and its message has been applied."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def cell(pane: FitPane, row: int, column: str) -> str:
    table = pane.query_one("#fit-table", DataTable)
    return str(table.get_row_at(row)[TABLE_COLUMNS.index(column)])


def status(pane: FitPane) -> str:
    return str(pane.query_one("#fit-status", Static).render())


def test_pane_shows_the_fitted_law_with_interval_heldout_error_and_stability(law_db: Path) -> None:
    asyncio.run(_pane_shows_the_fitted_law_with_interval_heldout_error_and_stability(law_db))


async def _pane_shows_the_fitted_law_with_interval_heldout_error_and_stability(law_db: Path) -> None:
    app = FitHost(law_db)
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await settle(pilot, pane)
        alpha = cell(pane, 0, "alpha")
        value, lo, hi = map(float, re.findall(r"[-\d.e+]+", alpha)[:3])
        assert value == pytest.approx(ALPHA, abs=0.01) and lo <= ALPHA + 0.01 and hi >= ALPHA - 0.01
        assert float(cell(pane, 0, "held-out 1").rstrip("%")) < 1.0
        assert cell(pane, 0, "alpha over training").startswith("stable")
        assert "final test loss" in status(pane) and "1 diverged excluded" in status(pane)
        notes = str(pane.query_one("#fit-notes", Static).render())
        assert "left out: predicted" in notes


def test_keys_refit_with_new_choices(law_db: Path) -> None:
    asyncio.run(_keys_refit_with_new_choices(law_db))


async def _keys_refit_with_new_choices(law_db: Path) -> None:
    app = FitHost(law_db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await settle(pilot, pane)
        pane.focus()
        await pilot.press("x")  # params -> width
        await settle(pilot, pane)
        assert pane.choice.x == "width" and "x = width" in status(pane)
        await pilot.press("g")  # one curve per depth; params = 100 w^2 d, so alpha in width doubles
        await settle(pilot, pane)
        assert [cell(pane, i, "curve") for i in range(2)] == ["depth=1", "depth=2"]
        for row in range(2):
            assert float(cell(pane, row, "alpha").split()[0]) == pytest.approx(2 * ALPHA, abs=0.02)
        await pilot.press("l")  # the experiment's rule -> final, stated
        await settle(pilot, pane)
        assert "loss = final test loss" in status(pane)
        assert cell(pane, 0, "form") == "M2" and "held-out error" in status(pane)  # auto picks the true law
        await pilot.press("f")  # auto -> the pure power law forced, which has no E
        await settle(pilot, pane)
        assert cell(pane, 0, "E") == "-" and "L = A x^-alpha, x = width (M1, forced)" in status(pane)


def test_the_curve_comes_first_and_its_band_follows(law_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a key the law is shown without waiting for its bootstrap; the intervals and band follow."""
    seen: list[tuple[bool, bool]] = []
    real = FitPane.on_fit_pane_fitted

    def spy(self: FitPane, message: FitPane.Fitted) -> None:
        seen.append((message.complete, all(r.band is not None for r in message.reports)))
        real(self, message)

    monkeypatch.setattr(FitPane, "on_fit_pane_fitted", spy)
    asyncio.run(_curve_first(law_db))
    assert seen[:2] == [(False, False), (True, True)]


async def _curve_first(law_db: Path) -> None:
    app = FitHost(law_db, "law")
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        await settle(pilot, pane)
        assert pane.complete and "[" in cell(pane, 0, "alpha")  # the interval arrived with the bootstrap


def test_unknown_experiment_is_one_visible_line(law_db: Path) -> None:
    asyncio.run(_unknown_experiment_is_one_visible_line(law_db))


async def _unknown_experiment_is_one_visible_line(law_db: Path) -> None:
    app = FitHost(law_db, "nope")
    async with app.run_test() as pilot:
        pane = app.query_one(FitPane)
        await settle(pilot, pane)
        assert "cannot fit" in status(pane) and "no experiment 'nope'" in status(pane)
        pane.set_experiment("law")
        await settle(pilot, pane)
        assert pane.query_one("#fit-table", DataTable).row_count == 1


def test_the_ui_answers_keys_while_a_fit_is_running(law_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fits are held at a gate: the pane must still take keys, and show only the newest answer."""
    gate = threading.Event()
    real_fit = fit_pane.fit_experiment

    def gated(*args: object, **kwargs: object) -> object:
        gate.wait(30)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fit_pane, "fit_experiment", gated)
    asyncio.run(_ui_answers_keys_while_a_fit_is_running(law_db, gate))


async def _ui_answers_keys_while_a_fit_is_running(law_db: Path, gate: threading.Event) -> None:
    app = FitHost(law_db)
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(FitPane)
        pane.focus()
        await pilot.pause()
        assert status(pane).startswith("fitting") and any(w.group == "fit" and not w.is_finished for w in app.workers)
        await pilot.press("f")  # handled at once, although the first fit has not returned
        assert pane.choice.form == "M1" and status(pane).startswith("fitting L(params), form M1")
        gate.set()
        await settle(pilot, pane)
        assert cell(pane, 0, "E") == "-"  # the answer shown is the newest question's
