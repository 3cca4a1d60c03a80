"""What one applied snapshot redraws: nothing when nothing changed, only the changed cells of a run that
advanced, the loss plot only when its data changed, and never stale text.

The app runs headless over a real SQLite sweep (tests/tui/sweepdb.py) with its poll loop off: the test
polls and applies snapshots itself, so each tick is exactly one snapshot. Paints are counted by wrapping
the screen's compositor refresh (what `benchmarks/app_poll.py` times); nothing here is timed.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot

from scaletui.tui.app import ScaleApp
from scaletui.tui.model import Delta, downsample_minmax
from scaletui.tui.poller import TEST, TRAIN
from scaletui.tui.state import Series, SweepState
from scaletui.tui.widgets.loss_pane import LossPane, _curves
from scaletui.tui.widgets.runs_table import RunsTable, cell_width, order_may_change, rows_to_recompute
from tests.tui import sweepdb

NOW = 1767268800.0  # the fixture's pinned time: the status line's "polled" age does not move
RUNNING = 5  # the fixture's running run (w16 d2), selected on open because it trains
SPEC = sweepdb.specs((16,), (2,), (0,), 60)[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


# --------------------------------------------------------------------------- pure rules


def test_rows_to_recompute_every_row_when_anything_may_have_changed() -> None:
    assert rows_to_recompute([1, 2, 3], None, {1, 2, 3}, {}, {}) == [1, 2, 3]


def test_rows_to_recompute_only_changed_new_and_moved_delta_rows() -> None:
    shown_deltas = {2: Delta(0.1, False), 3: Delta(0.2, False)}
    deltas = {2: Delta(0.1, False), 3: Delta(-0.05, False)}  # run 3's smaller neighbour finished
    assert rows_to_recompute([1, 2, 3, 4, 5], {1}, {1, 2, 3, 5}, deltas, shown_deltas) == [1, 3, 4]
    assert rows_to_recompute([1, 2], set(), {1, 2}, {}, {}) == []


def test_rows_are_ordered_again_only_when_the_order_may_have_changed() -> None:
    assert not order_may_change("rank", {5}, rows_changed=False)  # a running run advanced: same place
    assert not order_may_change("id", set(), rows_changed=False)
    assert order_may_change("rank", {5}, rows_changed=True)  # a run appeared or was filtered out
    assert order_may_change("rank", None, rows_changed=False)  # the view changed (sort key, filter, flip)
    assert order_may_change("loss", {5}, rows_changed=False) and order_may_change("step", {5}, rows_changed=False)
    assert order_may_change("params", {5}, rows_changed=False)  # a queued run's params arrive when it starts


def test_cell_width_counts_terminal_columns() -> None:
    assert cell_width(12) == 2 and cell_width("30/60") == 5 and cell_width(Text("Δ▲")) == 2


def _reference_downsample(steps: Sequence[int], values: Sequence[float], buckets: int
                          ) -> tuple[list[int], list[float]]:
    """The rule, written plainly: per bucket the first minimum and first maximum of the finite values,
    and every non-finite value, in step order."""
    n = len(values)
    if buckets <= 0 or n <= 2 * buckets:
        return list(steps), list(values)
    kept: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        finite = [i for i in range(lo, hi) if math.isfinite(values[i])]
        extremes = {i for i in range(lo, hi) if not math.isfinite(values[i])}
        if finite:
            extremes |= {min(finite, key=values.__getitem__), max(finite, key=values.__getitem__)}
        kept += sorted(extremes)
    return [steps[i] for i in kept], [values[i] for i in kept]


@pytest.mark.parametrize("n,buckets", [(1000, 7), (997, 100), (5000, 60), (41, 20), (300, 149)])
def test_downsample_minmax_keeps_what_the_plain_rule_keeps(n: int, buckets: int) -> None:
    rng = random.Random(n * buckets)
    values = [rng.choice([rng.random(), 0.5, math.nan, math.inf, -math.inf]) if rng.random() < 0.1
              else round(rng.random(), 2) for _ in range(n)]  # ties, NaN and infinities
    steps = [3 * i for i in range(n)]
    got_steps, got_values = downsample_minmax(steps, values, buckets)
    want_steps, want_values = _reference_downsample(steps, values, buckets)
    assert got_steps == want_steps
    assert [repr(v) for v in got_values] == [repr(v) for v in want_values]  # NaN == NaN here


def test_the_group_faint_curves_get_one_bucket_per_column_the_selected_run_two() -> None:
    state = SweepState()
    for run_id, key in [(1, TRAIN), (1, TEST), (2, TEST), (3, TEST)]:
        series = state.series[(run_id, key)] = Series()
        series.extend(range(1000), [1.0 + 0.001 * (i % 7) for i in range(1000)])
    curves = _curves(state, 1, [2, 3], buckets=40, log_y=True, smooth=False)
    faint = [c for c in curves if c.marker == "dot"]
    drawn = {c.label: c for c in curves if c.label}
    assert len(faint) == 2 and all(20 <= len(c.points) <= 40 for c in faint)  # 20 buckets, min and max
    assert 40 < len(drawn["train"].points) <= 80 and 40 < len(drawn["test"].points) <= 80


# --------------------------------------------------------------------------- the app, one snapshot per tick


class Spy:
    """Counts the screen's paints, the runs table's patched cells and the loss pane's redraws."""

    def __init__(self, app: ScaleApp, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paints = 0
        self.cells: list[tuple[int, str]] = []
        self.plots = 0
        screen = app.main
        paint = screen._compositor_refresh

        def counted_paint() -> None:
            paint()
            self.paints += 1

        screen._compositor_refresh = counted_paint  # type: ignore[method-assign]
        set_cell, show = RunsTable._set_cell, LossPane.show

        def spied_set_cell(table: RunsTable, run_id: int, column: str, cell: object) -> None:
            self.cells.append((run_id, column))
            set_cell(table, run_id, column, cell)

        def spied_show(pane: LossPane, *args: Any, **kwargs: Any) -> None:
            self.plots += 1
            show(pane, *args, **kwargs)

        monkeypatch.setattr(RunsTable, "_set_cell", spied_set_cell)
        monkeypatch.setattr(LossPane, "show", spied_show)

    def reset(self) -> None:
        self.paints, self.cells, self.plots = 0, [], 0


async def tick(app: ScaleApp, pilot: Pilot[int]) -> None:
    """One poll, applied as the poll loop's message would be, and everything it set off."""
    app.apply_snapshot(app.polling.poller.poll())
    await pilot.pause()
    await pilot.pause()


async def opened(app: ScaleApp, pilot: Pilot[int]) -> None:
    """Rows read, the running run selected, its curves read (the second poll), all painted."""
    await tick(app, pilot)
    assert app.view.selected == RUNNING
    await tick(app, pilot)
    assert (RUNNING, "train_loss") in app.state.series


def screen_text(app: ScaleApp) -> str:
    return "\n".join(strip.text for strip in app.main._compositor.render_strips())


def test_a_tick_that_changed_nothing_paints_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, autopoll=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await opened(app, pilot)
            spy = Spy(app, monkeypatch)
            await tick(app, pilot)
            assert (spy.paints, spy.cells, spy.plots) == (0, [], 0)

    asyncio.run(go())


def test_a_running_run_that_advanced_updates_its_own_cells_and_the_screen_shows_them(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, autopoll=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await opened(app, pilot)
            assert "30/60" in screen_text(app)
            spy = Spy(app, monkeypatch)
            sweepdb.extend_run(db, RUNNING, SPEC, 31, 45)
            await tick(app, pilot)
            assert spy.cells and {run_id for run_id, _ in spy.cells} == {RUNNING}
            assert {"step", "train"} <= {column for _, column in spy.cells} <= {"step", "train", "test", "best"}
            assert spy.plots == 1  # the selected run's curve grew
            shown = screen_text(app)
            assert "45/60" in shown and "30/60" not in shown  # the patched row is painted anew, not from cache

    asyncio.run(go())


def test_the_loss_plot_is_not_redrawn_when_another_run_advanced(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        app = ScaleApp(db, clock=lambda: NOW, autopoll=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await opened(app, pilot)
            table = app.query_one(RunsTable)
            table.move_cursor(row=table.get_row_index("1"))  # the user selects a finished run
            await pilot.pause()  # the highlight event: the poller is asked for its curves
            await tick(app, pilot)
            assert app.view.selected == 1 and (1, "train_loss") in app.state.series
            spy = Spy(app, monkeypatch)
            sweepdb.extend_run(db, RUNNING, SPEC, 31, 45)
            await tick(app, pilot)
            assert {run_id for run_id, _ in spy.cells} == {RUNNING} and spy.plots == 0
            assert "45/60" in screen_text(app)

    asyncio.run(go())
