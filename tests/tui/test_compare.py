"""Runs compared side by side, without an app: the metric rules, the marks' colours, the legend's packing,
and the poller learning the compared runs' metric names incrementally over a real SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scaletui.core.records import MetricRecord
from scaletui.store.writer import StoreSink
from scaletui.tui.compare import (
    LABEL_WIDTH,
    LegendEntry,
    entry_text,
    legend_lines,
    line_width,
    metric_order,
    next_metric,
    short_labels,
    shown_metric,
)
from scaletui.tui.poller import Poller
from scaletui.tui.state import SweepState
from scaletui.tui.view import View
from tests.tui import sweepdb


def log_cost(path: Path, run_id: int, steps: range, offset: float = 0.0) -> None:
    """A custom metric, as a run of your own loop logs it (`run.log({"cost": ...})`)."""
    with StoreSink(path, run_id) as sink:
        sink.metrics([MetricRecord(s, "cost", offset - 0.01 * s) for s in steps])


# --------------------------------------------------------------------------- the metric


def test_losses_cycle_first_then_custom_metrics_by_name() -> None:
    assert metric_order({"cost", "test_loss", "lr", "train_loss"}) == ["train_loss", "test_loss", "cost", "lr"]
    assert next_metric({"train_loss", "test_loss", "cost"}, "test_loss") == "cost"
    assert next_metric({"train_loss", "test_loss", "cost"}, "cost") == "train_loss"
    assert next_metric({"cost"}, "test_loss") == "cost"  # the one shown was not logged: the first one


def test_the_metric_shown_before_a_choice_is_the_test_loss_else_what_was_logged() -> None:
    assert shown_metric({"train_loss", "test_loss", "cost"}, None) == "test_loss"
    assert shown_metric({"cost", "reward"}, None) == "cost"
    assert shown_metric(set(), None) is None
    assert shown_metric({"train_loss", "cost"}, "cost") == "cost"
    assert shown_metric({"train_loss"}, "cost") == "train_loss"  # a choice no marked run logged


# --------------------------------------------------------------------------- marks


def test_a_mark_keeps_its_colour_while_others_come_and_go() -> None:
    view = View()
    for run_id in (1, 2, 3):
        view.toggle_mark(run_id)
    view.toggle_mark(2)
    view.toggle_mark(4)  # takes the colour 2 gave back
    assert view.marks == {1: 0, 3: 2, 4: 1}


def test_marking_a_group_marks_all_of_it_and_again_unmarks_it() -> None:
    view = View()
    view.toggle_mark(2)
    view.toggle_marks([1, 2, 3])
    assert set(view.marks) == {1, 2, 3} and view.marks[2] == 0
    view.toggle_marks([1, 2, 3])
    assert view.marks == {}


# --------------------------------------------------------------------------- the legend


def test_labels_lose_the_words_they_all_share_and_are_cut() -> None:
    assert short_labels(["mlp w8 d1 s0", "mlp w8 d2 s0"]) == ["w8 d1 s0", "w8 d2 s0"]
    assert short_labels(["mlp w8 d1 s0"]) == ["mlp w8 d1 s0"]  # alone: nothing to compare against
    long = short_labels(["ppo sweep lr3e-4 w256 d4 s0", "ppo sweep lr1e-3 w512 d8 s1"])
    assert all(len(label) <= LABEL_WIDTH for label in long) and long[0].endswith("…")


def test_a_legend_too_long_for_its_lines_ends_with_how_many_are_left_out() -> None:
    entries = [LegendEntry(i, f"w{8 * (i + 1)} d{i % 4} s0", 1.2345 + i) for i in range(12)]
    lines = legend_lines(entries, 78, 2)
    assert len(lines) == 2 and all(line_width(line) <= 78 for line in lines)
    shown = [x for line in lines for x in line if isinstance(x, LegendEntry)]
    assert lines[-1][-1] == f"+{12 - len(shown)} more" and shown == entries[:len(shown)]


def test_a_legend_that_fits_is_whole_and_a_tiny_one_is_just_the_count() -> None:
    entries = [LegendEntry(0, "w8 d1 s0", 0.5), LegendEntry(1, "w8 d2 s0", None)]
    assert legend_lines(entries, 80, 1) == [entries]
    assert entry_text(entries[1]) == "● w8 d2 s0 -"
    assert legend_lines(entries, 12, 1) == [["+2 more"]]


# --------------------------------------------------------------------------- the poller


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def test_the_poller_learns_the_compared_runs_metrics_from_where_it_stopped(db: Path) -> None:
    poller = Poller(db, clock=lambda: 0.0)
    calls: list[tuple[int, int]] = []
    read = poller.tracker.reader.metric_keys_since

    def spy(run_id: int, after_step: int) -> Any:
        calls.append((run_id, after_step))
        return read(run_id, after_step)

    poller.tracker.reader.metric_keys_since = spy  # type: ignore[method-assign]
    state = SweepState()
    poller.compare({1}, "test_loss")
    state.apply(poller.poll())
    assert state.metric_keys == {1: frozenset({"train_loss", "test_loss"})} and len(calls) == 1
    assert list(state.series[(1, "test_loss")].steps) == [0, 20, 40, 60]
    assert not poller.poll().metric_keys and len(calls) == 1  # the run did not change: not read again

    log_cost(db, 1, range(61, 64), offset=-1.0)
    changes = state.apply(poller.poll())
    assert changes.metric_keys and state.compared_metrics([1]) == {"train_loss", "test_loss", "cost"}
    assert calls[-1] == (1, 59)  # from its last step (60) on, not from the start

    poller.compare({1}, "cost")
    snap = poller.poll()
    state.apply(snap)
    assert [(u.run_id, u.key, u.steps) for u in snap.series] == [(1, "cost", (61, 62, 63))]
    assert (1, "test_loss") not in state.series  # no longer read: not kept
    log_cost(db, 1, range(64, 66), offset=-1.0)
    update = poller.poll().series[0]
    assert (update.reset, update.steps) == (False, (64, 65))  # only the new points
    poller.close()


def test_unmarked_runs_are_forgotten_and_read_whole_when_marked_again(db: Path) -> None:
    poller = Poller(db, clock=lambda: 0.0)
    state = SweepState()
    poller.compare({1, 2}, "test_loss")
    state.apply(poller.poll())
    poller.compare({2}, "test_loss")
    state.apply(poller.poll())
    assert set(state.metric_keys) == {2} and (1, "test_loss") not in state.series
    poller.compare({1, 2}, "test_loss")
    snap = poller.poll()
    assert [run_id for run_id, _ in snap.metric_keys] == [1]
    assert [(u.run_id, u.reset) for u in snap.series] == [(1, True)]
    poller.close()
