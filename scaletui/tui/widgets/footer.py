"""A footer that never cuts a key in half: the keys that do not fit are left out, whole.

Textual's footer lays its keys out in a row and cuts the row at the terminal's edge, so at 80 columns
the last key reads "space pau". This one measures each key and shows only those that fit, in binding
order: the focused widget's keys first (the fit pane's, in the fit view), then the app's, most used
first. Every key, shown here or not, is listed by the help screen (`?`).
"""

from __future__ import annotations

from textual.events import Resize
from textual.widgets import Footer


class KeysFooter(Footer):
    def __init__(self) -> None:
        super().__init__(show_command_palette=False)  # ctrl+p still opens it; the help says so

    async def recompose(self) -> None:
        await super().recompose()
        self.call_after_refresh(self.fit_keys)

    def on_resize(self, event: Resize) -> None:
        self.fit_keys()

    def fit_keys(self) -> None:
        """Show the leading keys that fit in the footer's width; hide the rest."""
        room = self.size.width
        for key in self.query("FooterKey"):  # by type name: textual does not export the class
            width = key.get_content_width(self.size, self.size) + key.styles.gutter.width + key.styles.margin.width
            key.display = width <= room
            room = room - width if key.display else 0  # after the first that does not fit, none fits
