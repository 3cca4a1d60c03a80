"""Active alerts of the sweep, most severe first, with the evidence and the usual fix.

Rows are keyed by alert id and follow the `alerts` table: an alert that later evidence dissolved
(`active = 0`) leaves the pane, a new one appears, a changed one is updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import DataTable, Static

from scaletui.core.rows import AlertRow
from scaletui.core.vocabulary import Severity

SEVERITY_STYLE: dict[Severity, str] = {Severity.CRITICAL: "bold white on red", Severity.WARNING: "bold yellow",
                                       Severity.INFO: "cyan"}
COLUMNS = (("severity", "sev"), ("subject", "subject"), ("kind", "kind"), ("step", "step"), ("message", "message"))


def alert_cells(a: AlertRow) -> tuple[object, ...]:
    severity = Text(a.severity.value, style=SEVERITY_STYLE.get(a.severity, ""))
    step = "-" if a.step is None else str(a.step)
    return (severity, a.subject, a.kind, step, a.message)


def evidence_text(alert: AlertRow, limit: int = 6) -> str:
    """The numbers behind an alert, `key=value` with 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" for k, v in list(alert.evidence.items())[:limit])


def alert_detail(a: AlertRow) -> str:
    evidence = evidence_text(a)
    lines = [f"{a.kind} on {a.subject}: {a.message}"]
    if a.suggestion:
        lines.append(f"try: {a.suggestion}")
    if evidence:
        lines.append(f"evidence: {evidence}")
    return "\n".join(lines)


def _order(cells: tuple[Text, str]) -> tuple[int, int]:
    """Most severe first, then by step (the table sorts by its severity and step cells)."""
    severity, step = cells
    return (Severity(severity.plain).rank, int(step) if step != "-" else 0)


class AlertsPane(Widget):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: dict[int, tuple[object, ...]] = {}
        self._alerts: dict[int, AlertRow] = {}

    def compose(self) -> ComposeResult:
        yield Static("alerts: none active", id="alerts-title", markup=False)
        table: DataTable[object] = DataTable(id="alerts-table", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("", id="alert-detail", markup=False)

    def show(self, alerts: Mapping[int, AlertRow], experiment: str | None) -> None:
        table = self.query_one("#alerts-table", DataTable)
        wanted = {i: a for i, a in alerts.items() if experiment is None or a.experiment in (None, experiment)}
        for gone in set(self._shown) - set(wanted):
            table.remove_row(str(gone))
            del self._shown[gone]
        for alert_id, a in wanted.items():
            self._show_row(table, alert_id, alert_cells(a))
        self._alerts = wanted
        table.sort("severity", "step", key=_order)
        n = len(wanted)
        self.query_one("#alerts-title", Static).update(f"alerts: {n} active" if n else "alerts: none active")
        self._show_detail()

    def _show_row(self, table: DataTable[object], alert_id: int, cells: tuple[object, ...]) -> None:
        old = self._shown.get(alert_id)
        if old is None:
            table.add_row(*cells, key=str(alert_id))
        elif old != cells:
            for (key, _), before, after in zip(COLUMNS, old, cells, strict=True):
                if before != after:
                    table.update_cell(str(alert_id), key, after, update_width=True)
        self._shown[alert_id] = cells

    def _show_detail(self) -> None:
        table = self.query_one("#alerts-table", DataTable)
        detail = self.query_one("#alert-detail", Static)
        if not table.row_count:
            detail.update("")
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        alert = self._alerts.get(int(key)) if key is not None else None
        detail.update(alert_detail(alert) if alert else "")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "alerts-table":
            event.stop()
            self._show_detail()

