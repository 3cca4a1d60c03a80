"""Per-layer gradient norms of the selected run: one sparkline per layer, input layer at the top.

Each line shows the layer's name, its gradient-norm sparkline over steps (bucketed by maximum, so a
spike shows), the latest gradient norm and the latest weight norm. The header gives the ratio of the
first layer's gradient norm to the last one's (a tiny ratio is vanishing gradients in the early
layers, seen at a glance) and a red badge when any non-finite gradient value was counted.

Above the layers, one line shows the run's gradient noise scale: the running B_simple = tr(Sigma) / |G|^2
the training loop records every few logging steps (McCandlish et al. 2018: about the critical batch size,
past which a larger batch stops buying proportionally fewer steps), as a sparkline and its latest value
with the number of measurements. `scaletui suggest --batch` turns it into a batch size per model size.

Lines are reused across runs and ticks (a sparkline's `data` is swapped); only a change in the number
of layers mounts or removes lines at the end. A new line is built with its layer's data, so it draws
that data from its first frame, whenever it is mounted and laid out (not after some later update).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static

from scaletui.core.vocabulary import NOISE_SCALE_METRIC
from scaletui.tui.model import bucket_max
from scaletui.tui.state import LayerSeries, Series, SweepState
from scaletui.tui.widgets.quiet import update_text

SPARK_POINTS = 120  # bounded input for a sparkline, whatever the length of the run


def grad_ratio(layers: dict[int, LayerSeries]) -> float | None:
    """Latest first-layer gradient norm over latest last-layer gradient norm."""
    if len(layers) < 2:
        return None
    first, last = layers[min(layers)], layers[max(layers)]
    if not len(first.grad) or not len(last.grad):
        return None
    a, b = first.grad[-1], last.grad[-1]
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else None


def header_text(state: SweepState) -> str:
    layers = state.layers
    if not layers:
        return "gradients: no layer statistics yet"
    ratio = grad_ratio(layers)
    ratio_text = "-" if ratio is None else f"{ratio:.3g}"
    nonfinite = sum(layer.nonfinite for layer in layers.values())
    badge = f"  [b white on red] NONFINITE {nonfinite} [/]" if nonfinite else ""
    return f"grad norm first/last layer: [b]{ratio_text}[/]  ({len(layers)} layers){badge}"


def _latest(values: Sequence[float]) -> str:
    return f"{values[-1]:.3g}" if len(values) else "-"


class LayerLine(Horizontal):
    """name | sparkline | grad norm | weight norm"""

    def __init__(self, layer: int, series: LayerSeries) -> None:
        super().__init__(classes="layer-line")
        self.layer_index = layer
        self.series = series

    def compose(self) -> ComposeResult:
        yield Label(self._name_text(), classes="layer-name")
        yield Sparkline(self._spark_data(), classes="layer-spark")
        yield Label(self._values_text(), classes="layer-value")

    def show(self, layer: int, series: LayerSeries) -> None:
        """Show another layer (or new points); before compose, the children are built from these."""
        self.layer_index, self.series = layer, series
        if not self.children:
            return
        update_text(self.query_one(".layer-name", Label), self._name_text())
        self.query_one(Sparkline).data = self._spark_data()
        update_text(self.query_one(".layer-value", Label), self._values_text())

    def _name_text(self) -> str:
        return f"{self.layer_index:>2} {self.series.name[:12]}"

    def _spark_data(self) -> list[float]:
        return bucket_max(self.series.grad, SPARK_POINTS)

    def _values_text(self) -> str:
        flag = " [b red]![/]" if self.series.nonfinite else ""
        return f"g {_latest(self.series.grad)} w {_latest(self.series.weight)}{flag}"


def noise_series(state: SweepState) -> Series | None:
    """The running B_simple of the run whose layers the pane shows (None: none recorded, or no run)."""
    return None if state.layers_of is None else state.series.get((state.layers_of, NOISE_SCALE_METRIC))


def noise_text(series: Series | None) -> str:
    """The latest B_simple and how many measurements it averages, or why there is none."""
    if series is None or not len(series.values):
        return "B -"
    latest = series.values[-1]
    shown = f"{latest:.0f}" if abs(latest) >= 10 else f"{latest:.3g}"  # a batch size: no 1.9e+03
    return f"B {shown} ({len(series.values)})"


class NoiseLine(Horizontal):
    """noise scale | sparkline of B_simple | its latest value (measurements): a layer line's layout."""

    def __init__(self) -> None:
        super().__init__(id="grad-noise", classes="layer-line")

    def compose(self) -> ComposeResult:
        yield Label("noise scale", classes="layer-name")
        yield Sparkline([], classes="layer-spark")
        yield Label(noise_text(None), classes="layer-value")

    def show(self, series: Series | None) -> None:
        self.query_one(Sparkline).data = bucket_max(series.values, SPARK_POINTS) if series is not None else []
        update_text(self.query_one(".layer-value", Label), noise_text(series))


class GradPane(Widget):
    """Header plus one LayerLine per layer of the selected run."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)

    def compose(self) -> ComposeResult:
        yield Static("gradients: no run selected", id="grad-header")
        yield NoiseLine()
        yield VerticalScroll(id="grad-lines")

    def show(self, state: SweepState) -> None:
        update_text(self.query_one("#grad-header", Static), header_text(state))
        self.query_one(NoiseLine).show(noise_series(state))
        box = self.query_one("#grad-lines", VerticalScroll)
        lines = list(box.query(LayerLine))
        wanted = sorted(state.layers)
        for extra in lines[len(wanted):]:
            extra.remove()
        for line, layer in zip(lines, wanted, strict=False):
            line.show(layer, state.layers[layer])
        if len(lines) < len(wanted):
            box.mount_all([LayerLine(layer, state.layers[layer]) for layer in wanted[len(lines):]])
