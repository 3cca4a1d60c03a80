"""The app's panes on their own, each in a tiny host app: what they draw on first display and after a resize.

Each test drives its own event loop with asyncio.run (no async test plugin is installed).
"""

from __future__ import annotations

import asyncio
from array import array

from textual.widgets import Label, Sparkline

from scaletui.core.vocabulary import RunStatus
from scaletui.tui.state import LayerSeries, SweepState
from scaletui.tui.widgets.grad_pane import GradPane, LayerLine
from tests.tui.hosts import WidgetHost


def layers(n: int) -> SweepState:
    """A state whose selected run has `n` layers, each with a falling gradient norm."""
    state = SweepState()
    for i in range(n):
        grad = array("d", [1.0 / (1 + j) for j in range(50)])
        state.layers[i] = LayerSeries(f"layer{i}", array("q", range(50)), grad, array("d", [2.0] * 50))
    return state


def blank_lines(pane: GradPane) -> list[int]:
    """Layer lines that are on screen but show no sparkline or no values."""
    return [line.layer_index for line in pane.query(LayerLine)
            if not line.query(Sparkline) or not line.query_one(Sparkline).data
            or not str(line.query(Label).last().render()).startswith("g ")]


def test_gradient_lines_are_never_blank_when_a_run_with_more_layers_is_selected() -> None:
    """Seen: selecting a deeper run after a shallower one left the new rows blank until new data came
    (for a finished run: forever). Each new line must draw its layer from its first frame on."""

    async def go() -> None:
        pane = GradPane()
        async with WidgetHost(pane).run_test(size=(100, 30)) as pilot:
            for n in (2, 5, 3, 6):
                pane.show(layers(n))
                await pilot.pause()
                await pilot.pause()
                assert len(pane.query(LayerLine)) == n
                assert blank_lines(pane) == []

    asyncio.run(go())


def loss_state(steps: int) -> SweepState:
    """One running run whose train loss starts at 2.3 and is below 1 after its first 5% of steps."""
    from scaletui.tui.state import Series
    from tests.tui.rows import run

    state = SweepState()
    state.runs[1] = run(1, 64, 2, None, status=RunStatus.RUNNING)
    train = Series()
    train.extend(range(steps), [0.5 + 1.8 * 0.5 ** (s / (steps / 100)) for s in range(steps)])
    state.series[(1, "train_loss")] = train
    return state


def test_the_loss_plot_shows_the_curve_past_its_first_steps_in_log_y_by_default() -> None:
    from scaletui.tui.widgets.loss_pane import LossPane

    async def go() -> None:
        pane = LossPane()
        async with WidgetHost(pane).run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            pane.show(loss_state(2000), 1, [], log_y=True, smooth=False)
            title = str(pane.query_one("#loss-title").render())
            assert "log y · y from 5% of steps" in title
            pane.show(loss_state(2000), 1, [], log_y=False, smooth=False)
            assert "linear y · y from 5% of steps" in str(pane.query_one("#loss-title").render())

    asyncio.run(go())


def test_a_test_loss_above_the_y_range_is_drawn_without_crashing_the_legend() -> None:
    """Early in a run its test loss is one point, at step 0, above the robust y-range: plotext cannot
    draw a legend entry for a series it clipped away (IndexError while rendering), so it gets none."""
    from scaletui.tui.state import Series
    from scaletui.tui.widgets.loss_pane import LossPane

    state = loss_state(200)
    test = Series()
    test.extend([0], [2.35])
    state.series[(1, "test_loss")] = test

    async def go() -> None:
        pane = LossPane()
        async with WidgetHost(pane).run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            pane.show(state, 1, [], log_y=True, smooth=False)
            await pilot.pause()
            assert "y from 5% of steps" in str(pane.query_one("#loss-title").render())

    asyncio.run(go())


def test_a_loss_plot_drawn_while_hidden_is_drawn_again_at_its_size_when_shown() -> None:
    """At 80 columns the loss pane can be hidden (another detail pane shown) when a run is selected;
    its downsampling and ticks depend on its size, so it must not stay drawn for a size of zero."""
    from scaletui.tui.widgets.loss_pane import LossPane

    async def go() -> None:
        pane = LossPane()
        async with WidgetHost(pane).run_test(size=(100, 30)) as pilot:
            pane.display = False
            await pilot.pause()
            pane.show(loss_state(2000), 1, [], log_y=True, smooth=False)
            assert pane.drawn_at.width == 0
            pane.display = True
            await pilot.pause()
            await pilot.pause()
            assert pane.drawn_at.width > 50 and pane.drawn_at.height > 10

    asyncio.run(go())
