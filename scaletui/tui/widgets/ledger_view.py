"""The fit pane's predictions view: the ledger's track record as a table, a plot and notes.

What a researcher asks of it: did the law's past predictions of the next size hold, by how much did
they miss, and did the band cover the truth? One row per prediction (the size, what was predicted with
its band, the truth once its runs finished, the error, whether the band held), a log-log plot of
predicted (with the band) against measured loss by size, and the summary line of `predict --list`.
Pure drawing helpers: the pane reads the ledger in its worker and calls these on the UI thread.
"""

from __future__ import annotations

import math
from typing import Any

from scaletui.core.rows import PredictionRow
from scaletui.core.vocabulary import PredictionStatus
from scaletui.services.predictions import TrackRecord

LEDGER_COLUMNS = ("#", "size", "predicted", "band", "truth", "error", "band held", "status")
NARROW_LEDGER_COLUMNS = ("#", "size", "predicted", "truth", "error", "held")


def ledger_summary(record: TrackRecord, experiment: str | None) -> str:
    scored = record.scored
    inside, banded = record.band_held
    err = record.median_abs_error
    head = (f"{experiment or 'every experiment'}: predictions ledger, {len(record.entries)} recorded, "
            f"{len(scored)} scored")
    if err is not None:
        head += f"; median |error| {err:.1%}, band held {inside} of {banded}"
    return head + " · P: predict the next size"


def _held(p: PredictionRow) -> str:
    return "-" if p.inside is None else ("yes" if p.inside else "NO")


def ledger_rows(record: TrackRecord, narrow: bool) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for p in record.entries:
        truth = "-" if p.truth is None else f"{p.truth:.4f}"
        error = "-" if p.error is None else f"{p.error:+.1%}"
        if narrow:
            rows.append((str(p.id), p.size_label, f"{p.predicted:.4f}", truth, error, _held(p)))
            continue
        band = "-" if p.lo is None or p.hi is None else f"[{p.lo:.4f}, {p.hi:.4f}]"
        rows.append((str(p.id), p.size_label, f"{p.predicted:.4f}", band, truth, error, _held(p), str(p.status)))
    return rows


def ledger_notes(record: TrackRecord) -> list[str]:
    """Why entries are unscorable, what scoring left out, and how to add one."""
    lines = [f"#{p.id} {p.size_label}: {p.note}" for p in record.entries if p.note]
    if not record.entries:
        lines.append("no predictions yet: P records the law's prediction for the next size "
                     "(or `scaletui predict --width W --depth D`)")
    open_ = [p for p in record.entries if p.status is PredictionStatus.OPEN]
    if open_:
        lines.append(f"{len(open_)} open: scored when every run of that size finishes in this experiment")
    return lines


def plot_ledger(plt: Any, record: TrackRecord) -> None:
    """Log-log by size: each prediction with its band, and the truth where it is known."""
    entries = [p for p in record.entries if p.x > 0 and p.predicted > 0]
    if not entries:
        return
    xs = [math.log10(p.x) for p in entries]
    plt.scatter(xs, [math.log10(p.predicted) for p in entries], marker="x", label="predicted")
    for p, x in zip(entries, xs, strict=True):
        if p.lo is not None and p.hi is not None and p.lo > 0:
            plt.plot([x, x], [math.log10(p.lo), math.log10(p.hi)], marker="braille", color="gray")
    known = [(x, p.truth) for p, x in zip(entries, xs, strict=True) if p.truth is not None and p.truth > 0]
    if known:
        plt.scatter([x for x, _ in known], [math.log10(t) for _, t in known], marker="o", label="measured")
    plt.xlabel("log10 params")
    plt.ylabel("log10 loss")
