"""Depth x width grid of "the loss of a run": mean over seeds, spread, shaded best to worst.

Every cell where going deeper (same width) or wider (same depth) made the loss *worse* is marked,
because that is the question a scaling sweep exists to answer: larger models should be
consistently better, and every exception is worth a look.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import DataTable, Static

from scaletui.core.rows import FinalLoss
from scaletui.core.vocabulary import LossRule
from scaletui.tui.model import GridCell, grid_cells, shade_color
from scaletui.tui.state import SweepState
from scaletui.tui.view import View

LEGEND = "shade: green best .. red worst   ▼d worse than shallower   ◀w worse than narrower   ±: seed spread"


def cell_text(cell: GridCell | None) -> Text:
    if cell is None or cell.mean is None:
        diverged = f"{cell.n_diverged} div" if cell is not None and cell.n_diverged else "-"
        return Text(diverged, style="dim")
    marks = ("▼d" if cell.worse_than_shallower else "") + ("◀w" if cell.worse_than_narrower else "")
    spread = f"±{cell.spread / 2:.3f}" if cell.spread else ""
    style = f"bold white on {shade_color(cell.shade or 0.0)}"
    return Text(f"{cell.mean:.4f}{spread}{' ' + marks if marks else ''}", style=style)


class GridView(Widget, can_focus=False):
    """Title, the grid table and a legend, for the current experiment. It changes only when a run
    finishes or the experiment changes (`stale`), and is drawn only while it is shown."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stale = True

    def compose(self) -> ComposeResult:
        yield Static("grid: no finished runs yet", id="grid-title", markup=False)
        yield DataTable(id="grid-table", cursor_type="cell", zebra_stripes=False)
        yield Static(LEGEND, id="grid-legend", markup=False)

    def draw(self, state: SweepState, view: View) -> None:
        """The grid of the experiment shown (or the newest)."""
        experiment = view.fit_experiment(state.experiments)
        self.show([p for p in state.final_losses if experiment is None or p.experiment == experiment], experiment)

    def show(self, points: Sequence[FinalLoss], experiment: str | None) -> None:
        """The grid is small (sizes, not runs) and changes only when a run finishes: redraw it."""
        cells = grid_cells(points)
        table = self.query_one("#grid-table", DataTable)
        table.clear(columns=True)
        widths = sorted({w for _, w in cells})
        depths = sorted({d for d, _ in cells})
        table.add_column("depth \\ width", key="depth")
        for w in widths:
            table.add_column(f"w{w}", key=str(w))
        for d in depths:
            table.add_row(f"d{d}", *(cell_text(cells.get((d, w))) for w in widths), key=str(d))
        rule = points[0].loss_rule if points else LossRule.FINAL
        worse = sum(c.worse_than_shallower or c.worse_than_narrower for c in cells.values())
        title = (f"{experiment or 'all experiments'}: {rule.label}, mean over seeds; "
                 f"{worse} cell(s) where bigger was worse")
        self.query_one("#grid-title", Static).update(title if cells else "grid: no finished runs yet")
        self.stale = False
