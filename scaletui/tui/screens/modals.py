"""Modal screens: the help (every key), the quit confirmation, and a text panel (configurator)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class HelpScreen(ModalScreen[None]):
    """Every key of the app and of the fit pane, generated from their bindings (so help and footer never
    disagree). Descriptions wrap to the terminal's width, and the list scrolls (up/down, pgup/pgdn)
    when the terminal is shorter than it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = list(sections)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("scaletui keys (esc closes; up/down scroll)", classes="modal-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(self._table(), id="help-keys")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()

    def _table(self) -> Table:
        table = Table(box=None, expand=True, show_edge=False, pad_edge=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does", ratio=1)
        for title, rows in self.sections:
            if title:
                table.add_row("", Text(title, style="bold underline"))
            for key, description in rows:
                table.add_row(key, description)
        return table


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True for yes."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="modal-box"):
            yield Static(self.question, id="confirm-question", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TextScreen(ModalScreen[None]):
    """A titled block of text, e.g. the configurator's proposal and its TOML fragment."""

    BINDINGS = [Binding("escape,q", "dismiss", "close")]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(id="text-box", classes="modal-box"):
            yield Static(self.title_text, classes="modal-title", markup=False)
            with VerticalScroll():
                yield Static(self.body, id="text-body", markup=False)
