"""The fit view's region: the fit pane, mounted the first time the view is opened.

The pane imports numpy, scipy and the fitting code; the app's first frame must not wait for them, so
the region starts empty and `open` mounts the pane. Until then the region's other calls (runs finished,
another experiment) have nothing to tell: the pane fits what is there when it mounts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.containers import Container

if TYPE_CHECKING:
    from scaletui.tui.fit_pane import FitPane


class FitView(Container):
    """Holds the fit pane once it has been opened."""

    def __init__(self, db_path: Path, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.db_path = db_path
        self.pane: FitPane | None = None

    def open(self, experiment: str | None) -> None:
        """Mount the pane (fitting `experiment`) on first use, and focus it, so its keys work."""
        if self.pane is None:
            from scaletui.tui.fit_pane import FitPane

            self.pane = FitPane(self.db_path, experiment, id="fit-pane")
            self.mount(self.pane)
        self.call_after_refresh(self.pane.focus)

    def runs_changed(self) -> None:
        if self.pane is not None:
            self.pane.runs_changed()

    def set_experiment(self, name: str | None) -> None:
        if self.pane is not None:
            self.pane.set_experiment(name)
