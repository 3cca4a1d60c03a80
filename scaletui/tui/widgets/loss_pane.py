"""Loss of the selected run (train and test), with its group's test losses drawn faint.

Curves are downsampled to about two buckets per plot column keeping each bucket's minimum and
maximum, so drawing cost is bounded by the width of the terminal, not the length of the run, and a
spike is never averaged away. Log scale is drawn by hand (log10 of the values on linear axes with
ticks labelled in loss units): plotext's own log axis cannot show values below 1, where losses live.
Smoothing adds a debiased EMA of the train loss over the raw curve, which stays visible (dimmer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from scaletui.tui.model import debiased_ema, downsample_minmax, log10_safe
from scaletui.tui.state import Series, ViewState

FAINT = "gray"
MAX_GROUP_CURVES = 8  # beyond this the faint curves are noise, not context


class LossPane(Widget):
    """Title line plus a plotext plot; `show()` redraws from the view state."""

    def compose(self) -> ComposeResult:
        yield Static("no run selected", id="loss-title", markup=False)
        yield PlotextPlot(id="loss-plot")

    def show(self, state: ViewState, run_id: int | None, group: Sequence[int], *, log_y: bool, smooth: bool) -> None:
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        run = state.runs.get(run_id) if run_id is not None else None
        if run is None:
            self.query_one("#loss-title", Static).update("no run selected")
            plot.refresh()
            return
        buckets = max(20, 2 * max(plot.size.width - 10, 10))  # ~2 buckets per column of the plot area
        ys: list[float] = []
        for other in list(group)[:MAX_GROUP_CURVES]:
            ys += _draw(plt, state.series.get((other, "test_loss")), buckets, log_y, color=FAINT, marker="dot")
        train = state.series.get((run_id, "train_loss"))  # type: ignore[arg-type]
        ys += _draw(plt, train, buckets, log_y, color="blue+" if not smooth else "blue", label="train", marker="braille")
        if smooth and train is not None and len(train.values):
            smoothed = Series()
            smoothed.extend(train.steps, debiased_ema(train.values))
            ys += _draw(plt, smoothed, buckets, log_y, color="cyan+", label="train EMA", marker="braille")
        ys += _draw(plt, state.series.get((run_id, "test_loss")), buckets, log_y, color="orange+", label="test",
                    marker="braille")  # type: ignore[arg-type]
        _axes(plt, ys, log_y)
        scale = "log y" if log_y else "linear y"
        extra = " + EMA" if smooth else ""
        shown = min(len(group), MAX_GROUP_CURVES)
        self.query_one("#loss-title", Static).update(
            f"{run.label} · {scale}{extra} · gray: test loss of {shown} other run(s) of its group")
        plot.refresh()


def _draw(plt: object, series: Series | None, buckets: int, log_y: bool, *, color: str, marker: str,
          label: str | None = None) -> list[float]:
    """Plot one series (downsampled, optionally log10); returns the y values drawn."""
    if series is None or not len(series.values):
        return []
    steps, values = downsample_minmax(series.steps, series.values, buckets)
    ys = log10_safe(values) if log_y else [v if math.isfinite(v) else math.nan for v in values]
    points = [(x, y) for x, y in zip(steps, ys) if not math.isnan(y)]
    if not points:
        return []
    xs, ys_drawn = zip(*points)
    plt.plot(list(xs), list(ys_drawn), color=color, marker=marker, label=label)  # type: ignore[attr-defined]
    return list(ys_drawn)


def _axes(plt: object, ys: list[float], log_y: bool) -> None:
    plt.xlabel("step")  # type: ignore[attr-defined]
    finite = [y for y in ys if math.isfinite(y)]
    if not log_y or not finite:
        return
    lo, hi = min(finite), max(finite)
    ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
    plt.yticks(ticks, [f"{10**t:.3g}" for t in ticks])  # type: ignore[attr-defined]
    plt.ylabel("loss (log)")  # type: ignore[attr-defined]
