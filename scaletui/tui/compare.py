"""Runs compared side by side: which metric, which colour, and a legend that fits the pane.

Marked runs (`m` one run, `M` its group) are drawn together in the loss pane, each in its own colour,
one metric at a time (`v` cycles through the metrics the marked runs logged: the losses first, then any
custom metric such as `cost`). The rules are plain functions, no textual: the order the metrics
cycle in, which metric is shown before the user picks one, the colour of each mark (kept while
other runs are marked and unmarked, so a curve never changes colour under the user's eyes), and the
legend packed into the pane's width with "+N more" when it does not all fit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from scaletui.tui.poller import TEST, TRAIN

FIRST_METRICS = (TRAIN, TEST)  # cycled first, in this order; the rest alphabetically
#: One colour per marked run (Okabe-Ito first: told apart also with red-green colour blindness);
#: a 13th mark takes the first colour again.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (86, 180, 233), (230, 159, 0), (0, 158, 115), (240, 228, 66), (204, 121, 167), (213, 94, 0),
    (0, 114, 178), (170, 170, 255), (140, 220, 140), (255, 110, 110), (160, 120, 255), (200, 200, 200),
)  # fmt: skip
LABEL_WIDTH = 14  # a legend label longer than this is cut (with "…")
MORE = "+{n} more"


def color_of(slot: int) -> tuple[int, int, int]:
    return PALETTE[slot % len(PALETTE)]


def rich_color(slot: int) -> str:
    """The same colour as a Rich style (the legend and the runs table's mark)."""
    r, g, b = color_of(slot)
    return f"rgb({r},{g},{b})"


def free_slot(used: Collection[int]) -> int:
    """The lowest colour slot no marked run holds."""
    return next(i for i in range(len(used) + 1) if i not in used)


# --------------------------------------------------------------------------- the metric


def metric_order(keys: Iterable[str]) -> list[str]:
    """The metrics `v` cycles through: train and test loss first (those present), then the rest by name."""
    present = set(keys)
    return [k for k in FIRST_METRICS if k in present] + sorted(present - set(FIRST_METRICS))


def shown_metric(present: Collection[str], chosen: str | None) -> str | None:
    """The metric drawn: the user's choice while a marked run logged it; else the test loss (what runs are
    compared by), else the train loss, else the first logged metric (a run of your own loop may log
    only `cost`). None while no marked run logged anything."""
    if chosen is not None and chosen in present:
        return chosen
    order = metric_order(present)
    return TEST if TEST in order else (order[0] if order else None)


def next_metric(present: Collection[str], current: str | None) -> str | None:
    """The metric after `current` in `metric_order` (the first when `current` is not present)."""
    order = metric_order(present)
    if not order:
        return current
    if current not in order:
        return order[0]
    return order[(order.index(current) + 1) % len(order)]


# --------------------------------------------------------------------------- the legend


@dataclass(frozen=True)
class LegendEntry:
    """One marked run in the legend: its colour slot, its short label and its last value."""

    slot: int
    label: str
    last: float | None  # None: nothing logged for this metric (yet)


def short_labels(labels: Sequence[str]) -> list[str]:
    """Labels without the leading names every one of them shares (`mlp w8 d1 s0`, `mlp w8 d2 s0` ->
    `w8 d1 s0`, `w8 d2 s0`), each cut to LABEL_WIDTH. Words with a digit are sizes and settings
    (`w8`, `lr3e-4`): kept, so each entry still says what the run is."""
    words = [label.split() for label in labels]
    common = 0
    while len(words) > 1 and all(len(w) > common + 1 and w[common] == words[0][common] for w in words) \
            and not any(c.isdigit() for c in words[0][common]):
        common += 1
    return [cut(" ".join(w[common:]), LABEL_WIDTH) for w in words]


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf: shown as they are
    return f"{value:.4g}"


def entry_text(entry: LegendEntry) -> str:
    """`● w8 d2 s0 0.4813`: the marker, the label, the last value."""
    return f"● {entry.label} {fmt_value(entry.last)}"


def legend_lines(entries: Sequence[LegendEntry], width: int, max_lines: int) -> list[list[LegendEntry | str]]:
    """Entries packed into at most `max_lines` lines of `width` columns, two spaces apart; when they do
    not all fit, the last line ends with "+N more" (N: the entries left out). A line holds entries
    and, last, possibly that one string."""
    lines: list[list[LegendEntry | str]] = []
    used: list[int] = []
    for i, entry in enumerate(entries):
        size = len(entry_text(entry))
        if lines and used[-1] + 2 + size <= width:
            lines[-1].append(entry)
            used[-1] += 2 + size
        elif len(lines) < max_lines and size <= width:
            lines.append([entry])
            used.append(size)
        else:
            _end_with_more(lines, len(entries) - i, width)
            break
    return lines


def _end_with_more(lines: list[list[LegendEntry | str]], left: int, width: int) -> None:
    """End the last line with "+N more", dropping entries from its end until that fits."""
    if not lines:
        lines.append([])
    last = lines[-1]
    while last and line_width([*last, MORE.format(n=left)]) > width:
        last.pop()
        left += 1
    last.append(MORE.format(n=left))


def line_width(line: Sequence[LegendEntry | str]) -> int:
    """The columns a legend line takes (what `legend_lines` packed against the width)."""
    return sum(len(entry_text(x)) if isinstance(x, LegendEntry) else len(x) for x in line) + 2 * (len(line) - 1)
