"""Modal screens: the help (every key), the quit confirmation, and a text panel (configurator)."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Static


class HelpScreen(ModalScreen[None]):
    """Every key of the app, generated from its bindings (so help and footer never disagree)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, keys: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("scaletui keys (escape closes)", classes="modal-title")
            table: DataTable[str] = DataTable(id="help-table", cursor_type="none", zebra_stripes=True)
            table.add_columns("key", "what it does")
            for key, description in self.keys:
                table.add_row(key, description)
            yield table


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
