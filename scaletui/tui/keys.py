"""Keys that more than one place needs: the fit pane binds them, the help screen lists them.

The fit pane imports numpy and the fitting code, which the app loads only when the fit view is first
opened; the help screen must list the pane's keys before that, so they live here, in a module that
imports nothing heavy. A binding's `description` is its short footer label, its `tooltip` the
sentence the help screen shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.binding import Binding

FIT_KEYS: list[Binding] = [
    Binding("x", "cycle_x", "axis", tooltip="x axis: params, width, depth, flops, examples, steps"),
    Binding("g", "cycle_grouping", "group", tooltip="one curve for all runs, one per depth, or one per width"),
    Binding("l", "cycle_rule", "rule", tooltip="loss rule: the experiment's, final, best, smoothed"),
    Binding("f", "toggle_form", "form", tooltip="form: with the offset E (E + A·x^-alpha) or without (A·x^-alpha)"),
    Binding("w", "cycle_view", "view", tooltip="view: the law; strategies (width, depth, both) at equal "
                                                 "FLOPs; the law per training length; the compute-optimal "
                                                 "frontier; the predictions ledger"),
    Binding("P", "predict_next", "predict", show=False,
            tooltip="record the law's prediction for the next size (next width, deepest depth): scored when "
                    "it is trained; `w` to the predictions view shows the track record"),
]

KEY_NAMES = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc"}


def key_label(keys: str) -> str:
    """`escape,q` -> `esc, q`: how a binding's keys are written in the help."""
    return ", ".join(KEY_NAMES.get(k, k) for k in keys.split(","))


def help_rows(bindings: Iterable[Binding]) -> list[tuple[str, str]]:
    """(keys, what they do) per binding: the tooltip when there is one, else the footer label."""
    return [(key_label(b.key), b.tooltip or b.description) for b in bindings]
