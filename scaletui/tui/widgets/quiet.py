"""Updating a line of text without laying out the whole screen again, when its size cannot change.

`Static.update` asks for a layout by default, and a layout reflows every widget and repaints the whole
screen: with the status bar, the loss pane's title and the gradient pane's labels updated on every
poll, each tick repainted the 500-run table and rebuilt the loss plot even when neither changed
(measured: benchmarks/app_poll.py). Text that did not change is not updated at all; text that changed
asks for a layout only when the widget's size may follow its content (an `auto` width, or an `auto`
height whose wrapped line count changed); otherwise it repaints just that widget.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def update_text(widget: Static, content: str | Text) -> None:
    """Show `content` in `widget`, repainting only it unless its size may change (then a layout too)."""
    if widget.content == content:
        return
    if not widget.is_mounted or (widget.styles.width is not None and widget.styles.width.is_auto):
        widget.update(content)
        return
    width = widget.content_size.width
    lines_before = _content_lines(widget, width)
    widget.update(content, layout=False)
    height = widget.styles.height  # unset: conservatively, as if it followed the content
    if (height is None or height.is_auto) and _content_lines(widget, width) != lines_before:
        widget.refresh(layout=True)


def _content_lines(widget: Static, width: int) -> int:
    """Lines the widget's content takes at `width` (what an auto height would be)."""
    return widget.get_content_height(widget.size, widget.app.size, width) if width else 0
