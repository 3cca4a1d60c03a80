"""Loss of the selected run (train and test), with its group's test losses drawn faint; or, while runs
are marked, one metric of every marked run overlaid, each in its own colour, with a legend.

Curves are downsampled to about two buckets per plot column keeping each bucket's minimum and
maximum, so drawing cost is bounded by the width of the terminal, not the length of the run, and a
spike is never averaged away. The group's faint curves get one bucket per column: they are drawn
with the `dot` marker, one character per point, so a column shows at most its bucket's minimum and
maximum anyway; at 500 runs, 160x48, their 8 x 200 test points were half of plotext's time per frame.
Log scale is drawn by hand (log10 of the values on linear axes with ticks labelled in loss units):
plotext's own log axis cannot show values below 1, where losses live.
Smoothing adds a debiased EMA of the train loss over the raw curve, which stays visible (dimmer).

The default view shows the interesting part: log y (the app starts with it; `l` switches), and a
y-range that leaves out the first 5% of steps when the loss there towers over the rest
(`robust_y_range`): those points are still drawn and leave the plot at the top, and the title says so.

Comparing marked runs: the legend is drawn by this pane, not by plotext (whose legend covers the curves
and does not shorten): one line per few runs under the title, each entry the run's colour, its label
without the words all labels share, and its last value; "+N more" when the pane is too small for all.
A metric that is zero or negative somewhere (a reward, a cost difference) cannot be drawn in log y:
the plot is linear then, and the title says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.events import Resize
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from scaletui.tui.compare import LegendEntry, color_of, fmt_value, legend_lines, rich_color, short_labels
from scaletui.tui.model import EARLY_FRACTION, debiased_ema, downsample_minmax, log10_safe, robust_y_range
from scaletui.tui.poller import TEST, TRAIN, Forecast
from scaletui.tui.state import Series, SweepState
from scaletui.tui.widgets.quiet import update_text

FAINT = "gray"
MAX_GROUP_CURVES = 8  # beyond this the faint curves are noise, not context
MAX_LEGEND_LINES = 4  # a tall pane's legend; a short one gets fewer (at 80x24: one), the plot keeps the rest


@dataclass(frozen=True)
class Comparison:
    """The marked runs as (run id, colour slot), in legend order, and the metric drawn for them (None:
    none of them logged one yet)."""

    runs: tuple[tuple[int, int], ...]
    metric: str | None


class LossPane(Widget):
    """Title line plus a plotext plot; `show()` redraws from the view state, and the pane draws again
    whenever its size changes (the buckets and the ticks depend on it): a pane that was hidden or not
    yet laid out when a run was selected is drawn at its real size as soon as it has one."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: tuple[SweepState, int | None, tuple[int, ...], bool, bool, Comparison | None] | None = None
        self.drawn_at = Size(0, 0)  # the plot's size at the last draw
        self.curves: list[Curve] = []  # what the last draw plotted, back to front

    def compose(self) -> ComposeResult:
        yield Static("no run selected", id="loss-title", markup=False)
        legend = Static("", id="loss-legend", markup=False)
        legend.display = False  # only while comparing marked runs
        yield legend
        yield PlotextPlot(id="loss-plot")

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self._draw_again)

    def _draw_again(self) -> None:
        if self._shown is not None and self.query_one(PlotextPlot).size != self.drawn_at:
            state, run_id, group, log_y, smooth, comparison = self._shown
            self.show(state, run_id, group, log_y=log_y, smooth=smooth, comparison=comparison)

    def show(self, state: SweepState, run_id: int | None, group: Sequence[int], *, log_y: bool, smooth: bool,
             comparison: Comparison | None = None) -> None:
        """Draw the selected run's losses, or (given a comparison with runs) the marked runs' metric."""
        self._shown = (state, run_id, tuple(group), log_y, smooth, comparison)
        plot = self.query_one(PlotextPlot)
        self.drawn_at = plot.size
        plot.plt.clear_data()
        plot.plt.clear_figure()
        legend = self.query_one("#loss-legend", Static)
        legend.display = comparison is not None and bool(comparison.runs)
        if comparison is not None and comparison.runs:
            self._show_comparison(state, comparison, log_y, plot, legend)
        else:
            self._show_run(state, run_id, group, log_y, smooth, plot)
        plot.refresh()

    def _show_run(self, state: SweepState, run_id: int | None, group: Sequence[int], log_y: bool, smooth: bool,
                  plot: PlotextPlot) -> None:
        plt = plot.plt
        run = state.runs.get(run_id) if run_id is not None else None
        if run is None:
            self.curves = []
            update_text(self.query_one("#loss-title", Static), "no run selected")
            return
        buckets = max(20, 2 * max(plot.size.width - 10, 10))  # ~2 buckets per column of the plot area
        curves = _curves(state, run.id, group, buckets, log_y, smooth)
        y_range = robust_y_range([p for c in curves for p in c.points])
        self.curves = curves
        for curve in curves:
            _draw(plt, curve, y_range)
        _axes(plt, [y for c in curves for _, y in c.points], log_y, y_range, y_tick_count(plot.size.height))
        scale = ("log y" if log_y else "linear y") + (" + EMA" if smooth else "")
        top = f" · y from {EARLY_FRACTION:.0%} of steps" if y_range else ""
        shown = min(len(group), MAX_GROUP_CURVES)
        update_text(self.query_one("#loss-title", Static),
            f"{run.label} · {scale}{top} · gray: test loss of {shown} more run(s) of its group")

    def _show_comparison(self, state: SweepState, comparison: Comparison, log_y: bool, plot: PlotextPlot,
                         legend: Static) -> None:
        metric, n = comparison.metric, len(comparison.runs)
        if metric is None:
            self.curves = []
            update_text(self.query_one("#loss-title", Static), f"{n} marked run(s) · no metric logged yet")
            update_text(legend, "")
            return
        series = [state.series.get((run_id, metric)) for run_id, _ in comparison.runs]
        log_y = log_y and all(v > 0 for s in series if s is not None for v in s.values if math.isfinite(v))
        buckets = max(20, 2 * max(plot.size.width - 10, 10))
        curves = [Curve(_points(s, buckets, log_y), color_of(slot), "braille", run_id=run_id)
                  for s, (run_id, slot) in zip(series, comparison.runs, strict=True)]
        self.curves = curves = [c for c in curves if c.points]
        y_range = robust_y_range([p for c in curves for p in c.points])
        for curve in curves:
            _draw(plot.plt, curve, y_range)
        _axes(plot.plt, [y for c in curves for _, y in c.points], log_y, y_range, y_tick_count(plot.size.height),
              name=metric)
        top = f" · y from {EARLY_FRACTION:.0%} of steps" if y_range else ""
        update_text(self.query_one("#loss-title", Static),
            f"{metric} of {n} marked run(s) · {'log y' if log_y else 'linear y'}{top} · v: next metric")
        width = self.size.width or 80
        lines = max(1, min(MAX_LEGEND_LINES, (self.size.height - 8) // 3))  # one per 3 rows over a usable plot
        update_text(legend, legend_text(legend_entries(state, comparison.runs, series), width, lines))


@dataclass(frozen=True)
class Curve:
    """One line of the plot: its points (downsampled, log10 when log y) and how it is drawn."""

    points: list[tuple[float, float]]
    color: str | tuple[int, int, int]
    marker: str
    label: str | None = None
    run_id: int | None = None  # of a compared run's curve (its legend entry is the pane's, not plotext's)


def _curves(state: SweepState, run_id: int, group: Sequence[int], buckets: int, log_y: bool, smooth: bool
            ) -> list[Curve]:
    """Back to front: the group's test losses (faint, one bucket per column: `buckets // 2`), train, its
    EMA, test. Empty series are left out."""
    curves = [Curve(_points(state.series.get((other, TEST)), buckets // 2, log_y), FAINT, "dot")
              for other in list(group)[:MAX_GROUP_CURVES]]
    train = state.series.get((run_id, TRAIN))
    curves.append(Curve(_points(train, buckets, log_y), "blue" if smooth else "blue+", "braille", "train"))
    smoothed = Series()
    if train is not None and len(train.values):
        smoothed.extend(train.steps, debiased_ema(train.values))
    if smooth and len(smoothed.values):
        curves.append(Curve(_points(smoothed, buckets, log_y), "cyan+", "braille", "train EMA"))
    test = state.series.get((run_id, TEST))
    curves.append(Curve(_points(test, buckets, log_y), "orange+", "braille", "test"))
    run = state.runs.get(run_id)
    forecast = state.forecasts.get(run_id)
    if run is not None and not run.finished and forecast is not None:
        # From the test loss it was predicted from; a prediction made before the first evaluation started
        # from the train loss (services.curve_forecasts), so its dashes leave the train curve (its EMA).
        start = _value_at(test, forecast.at_step)
        curves.extend(continuation(forecast, start if start is not None else _value_at(smoothed, forecast.at_step),
                                   log_y))
    return [c for c in curves if c.points]


def _value_at(series: Series | None, step: int) -> float | None:
    if series is None:
        return None
    return next((v for s, v in zip(series.steps, series.values, strict=True) if s == step), None)


DASHES = 6  # drawn pieces of the predicted continuation


def continuation(forecast: Forecast, start: float | None, log_y: bool) -> list[Curve]:
    """`pred. final` on the plot: dashes from the loss where it was predicted (`start`, at its step) to the
    predicted final loss at the run's last step (geometric in between: the loss falls by a factor), and
    the band there as a vertical bar. Nothing without a start (that step not read yet)."""
    if start is None or not (start > 0 and forecast.predicted > 0) or forecast.steps <= forecast.at_step:
        return []
    span, ratio = forecast.steps - forecast.at_step, forecast.predicted / start

    def point(t: float) -> tuple[float, float]:
        y = start * ratio**t
        return forecast.at_step + t * span, math.log10(y) if log_y else y

    pieces = [Curve([point(2 * i / (2 * DASHES - 1)), point((2 * i + 1) / (2 * DASHES - 1))], "orange", "braille",
                    "pred. final" if i == 0 else None) for i in range(DASHES)]
    if forecast.lo is not None and forecast.hi is not None and forecast.lo > 0:
        ends = [forecast.lo, forecast.hi]
        pieces.append(Curve([(float(forecast.steps), math.log10(y) if log_y else y) for y in ends], "orange",
                            "braille"))
    return pieces


def _points(series: Series | None, buckets: int, log_y: bool) -> list[tuple[float, float]]:
    """A series downsampled (optionally log10), without the points that cannot be drawn."""
    if series is None or not len(series.values):
        return []
    steps, values = downsample_minmax(series.steps, series.values, buckets)
    ys = log10_safe(values) if log_y else [v if math.isfinite(v) else math.nan for v in values]
    return [(float(x), y) for x, y in zip(steps, ys, strict=True) if not math.isnan(y)]


def _draw(plt: Any, curve: Curve, y_range: tuple[float, float] | None) -> None:
    """Plot one curve. A curve with no point inside the y-range gets no legend entry: plotext cannot
    draw the legend of a series it clipped away (early on, the test loss is one point at step 0)."""
    inside = y_range is None or any(y_range[0] <= y <= y_range[1] for _, y in curve.points)
    xs, ys = zip(*curve.points, strict=True)
    plt.plot(list(xs), list(ys), color=curve.color, marker=curve.marker,
             label=curve.label if inside else None)


def y_tick_count(rows: int) -> int:
    """Ticks at least two rows apart on a plot `rows` high (4 rows go to the frame and the x axis):
    plotext drops colliding ticks, and not always the same one."""
    return max(2, min(5, (rows - 4) // 2 + 1))


def _axes(plt: Any, ys: list[float], log_y: bool, y_range: tuple[float, float] | None, n_ticks: int,
          name: str = "loss") -> None:
    """Label the axes and apply the y-range (in log y: `n_ticks` ticks labelled in loss units)."""
    plt.xlabel("step")
    if y_range is not None:
        plt.ylim(*y_range)
    if log_y and ys:
        lo, hi = y_range or (min(ys), max(ys))
        ticks = [lo + (hi - lo) * i / (n_ticks - 1) for i in range(n_ticks)] if hi > lo else [lo]
        plt.yticks(ticks, [f"{10**t:.3g}" for t in ticks])
        plt.ylabel(f"{name} (log)")


def legend_entries(state: SweepState, runs: Sequence[tuple[int, int]], series: Sequence[Series | None]
                   ) -> list[LegendEntry]:
    """One entry per marked run: its colour slot, short label (`#id` before its row is read), last value."""
    labels = short_labels([state.runs[r].label if r in state.runs else f"#{r}" for r, _ in runs])
    return [LegendEntry(slot, label, s.values[-1] if s is not None and len(s.values) else None)
            for (_, slot), label, s in zip(runs, labels, series, strict=True)]


def legend_text(entries: Sequence[LegendEntry], width: int, max_lines: int) -> Text:
    """The legend as coloured text: each entry's marker in its run's colour, "+N more" dim."""
    text = Text(no_wrap=True, overflow="crop")
    for i, line in enumerate(legend_lines(entries, width, max_lines)):
        if i:
            text.append("\n")
        for j, item in enumerate(line):
            if j:
                text.append("  ")
            if isinstance(item, LegendEntry):
                text.append("●", style=rich_color(item.slot))
                text.append(f" {item.label} {fmt_value(item.last)}")
            else:
                text.append(item, style="dim")
    return text
