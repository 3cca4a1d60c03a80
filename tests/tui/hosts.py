"""Minimal Textual apps that host one widget, for tests that drive a widget without the whole app."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.widget import Widget

from scaletui.tui.fit_pane import FitPane


class WidgetHost(App[None]):
    """One widget, full screen."""

    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


class FitHost(App[None]):
    """The fit pane of one database (and experiment, else the pane's own choice), full screen."""

    def __init__(self, db: Path, experiment: str | None = None) -> None:
        super().__init__()
        self.db, self.experiment = db, experiment

    def compose(self) -> ComposeResult:
        yield FitPane(self.db, self.experiment, id="fit")
