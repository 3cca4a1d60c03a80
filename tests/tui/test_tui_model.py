"""The app's pure view logic and its incremental poller, without a terminal.

Rules worth pinning: the delta compares a run with the next *shallower* run of the same width and
seed and flags "deeper is worse"; downsampling never hides a spike; the EMA is debiased (its first
value is the first point, not a tenth of it); the poller re-reads nothing it already has.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from scaletui.core.records import ModelInfo
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import NOISE_SCALE_METRIC, AlertKind, RunStatus, Severity
from scaletui.store.writer import Store, StoreSink
from scaletui.tui.model import (
    bucket_max,
    debiased_ema,
    downsample_minmax,
    eta_seconds,
    grid_cells,
    human_duration,
    matches,
    order_runs,
    robust_y_range,
    run_to_show,
    shade,
    size_deltas,
)
from scaletui.tui.poller import Poller
from scaletui.tui.state import SweepState, alert_badges
from tests.tui import sweepdb
from tests.tui.rows import alert, point, run


def test_rank_groups_by_width_then_depth_and_flips() -> None:
    runs = [run(1, 16, 2), run(2, 8, 4), run(3, 8, 1), run(4, 16, 1)]
    assert order_runs(runs, {}, "rank", "width") == [3, 2, 4, 1]
    assert order_runs(runs, {}, "rank", "depth") == [3, 4, 1, 2]


def test_sort_by_loss_puts_missing_last_and_reverses() -> None:
    runs = [run(1, 8, 1), run(2, 8, 2), run(3, 8, 4)]
    losses = {1: 0.5, 2: None, 3: 0.2}
    assert order_runs(runs, losses, "loss", "width") == [3, 1, 2]
    assert order_runs(runs, losses, "id", "width", reverse=True) == [3, 2, 1]


def test_delta_against_next_shallower_run_marks_deeper_worse() -> None:
    runs = [run(1, 8, 1, 1.0), run(2, 8, 2, 0.8), run(3, 8, 4, 0.9), run(4, 16, 1, 0.7),
            run(5, 8, 2, 0.1, seed=1), run(6, 8, 8, None, status=RunStatus.RUNNING)]
    deltas = size_deltas(runs, "depth")
    assert deltas[2].value == pytest.approx(-0.2) and not deltas[2].worse
    assert deltas[3].value == pytest.approx(0.1) and deltas[3].worse  # d4 vs d2, same width and seed
    assert {1, 4, 5, 6}.isdisjoint(deltas)  # shallowest, other width, other seed, unfinished
    across_width = size_deltas(runs, "width")
    assert across_width[4].value == pytest.approx(-0.3)  # w16 d1 vs w8 d1


def test_filter_terms_all_match() -> None:
    r = run(1, 64, 8, status=RunStatus.RUNNING)
    assert matches(r, "DIV", "w64 run")
    assert matches(r, "DIV", "div")
    assert not matches(r, "", "w64 done")


def test_downsample_keeps_a_spike_and_bounds_the_points() -> None:
    steps = list(range(10_000))
    values = [1.0] * 10_000
    values[4321] = 50.0
    values[777] = -3.0
    out_steps, out_values = downsample_minmax(steps, values, 100)
    assert len(out_values) <= 200
    assert 50.0 in out_values and -3.0 in out_values
    assert out_steps == sorted(out_steps)
    assert downsample_minmax([1, 2], [3.0, 4.0], 100) == ([1, 2], [3.0, 4.0])


def test_downsample_keeps_nan_visible_as_an_extreme() -> None:
    values = [1.0] * 1000
    values[500] = math.nan
    _, out = downsample_minmax(list(range(1000)), values, 10)
    assert any(math.isnan(v) for v in out)


def test_debiased_ema_starts_at_the_first_value() -> None:
    smoothed = debiased_ema([2.0, 2.0, 2.0])
    assert smoothed == pytest.approx([2.0, 2.0, 2.0])
    smoothed = debiased_ema([1.0, math.nan, 3.0], beta=0.5)
    assert smoothed[0] == 1.0 and smoothed[1] == 1.0
    assert smoothed[2] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.25))


def test_bucket_max_shows_gradient_spikes() -> None:
    values = [0.1] * 1000
    values[10] = 9.0
    assert max(bucket_max(values, 50)) == 9.0
    assert len(bucket_max(values, 50)) == 50


def test_grid_shades_best_to_worst_and_marks_where_bigger_was_worse() -> None:
    cells = grid_cells([point(1, 8, 1.0, 0.9, 1.1), point(2, 8, 1.2), point(1, 16, 0.8), point(2, 16, 0.9)])
    assert cells[(1, 16)].shade == 0.0 and cells[(2, 8)].shade == 1.0
    assert cells[(2, 8)].worse_than_shallower and not cells[(2, 8)].worse_than_narrower
    assert cells[(2, 16)].worse_than_shallower  # 0.9 > 0.8
    assert not cells[(1, 16)].worse_than_narrower
    assert cells[(1, 8)].spread == pytest.approx(0.2)
    assert shade(5.0, 1.0, 1.0) == 0.0


def test_grid_takes_each_size_at_its_best_setting() -> None:
    cells = grid_cells([point(1, 8, 1.0), point(1, 8, 0.7), point(1, 8, None)])
    assert cells[(1, 8)].mean == 0.7


def test_eta_from_finished_durations_and_work_left() -> None:
    done = run(1, 8, 1, 1.0, started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:01:40.000Z")
    running = run(2, 8, 2, None, status=RunStatus.RUNNING, step=50, steps=100)
    queued = run(3, 8, 4, None, status=RunStatus.QUEUED)
    assert eta_seconds([done, running, queued]) == pytest.approx(150.0)  # (1 + 0.5) x 100 s over 1 running
    assert eta_seconds([done]) is None
    assert human_duration(150) == "2m30s" and human_duration(7300) == "2h01m"


def test_the_run_shown_first_is_a_running_one_else_the_latest() -> None:
    early = "2026-01-01T10:00:00.000Z"
    late = "2026-01-01T11:00:00.000Z"
    queued = run(1, 8, 1, None, status=RunStatus.QUEUED)
    done_early = run(2, 8, 2, 1.0, started_at=early, finished_at=early)
    done_late = run(3, 8, 4, 1.0, started_at=early, finished_at=late)
    running_early = run(4, 16, 1, None, status=RunStatus.RUNNING, started_at=early)
    running_late = run(5, 16, 2, None, status=RunStatus.RUNNING, started_at=late)
    assert run_to_show([queued, done_early, done_late, running_early, running_late]) == 5
    assert run_to_show([queued, done_early, running_early]) == 4
    assert run_to_show([queued, done_late, done_early]) == 3
    assert run_to_show([queued]) is None and run_to_show([]) is None


def test_y_range_leaves_out_the_first_steps_when_they_squash_the_rest() -> None:
    steps = list(range(0, 1001, 10))
    loss = [2.3 if s == 0 else 1.0 - s / 2000 for s in steps]  # the step-0 loss towers over the curve
    lo, hi = robust_y_range(list(zip(steps, loss, strict=True)))  # type: ignore[misc]
    assert lo <= 0.5 and 0.5 - lo < 0.05  # the minimum stays in view
    assert 0.975 <= hi < 1.05  # the top is the curve after its first 5% of steps (0.975), plus a margin
    flat = [(s, 1.0 - s / 2000) for s in steps]  # nothing towers: the whole range is shown
    assert robust_y_range(flat) is None
    spike = [(s, 5.0 if s == 900 else v) for s, v in zip(steps, loss, strict=True)]  # a late spike must stay visible
    assert robust_y_range(spike) is None
    assert robust_y_range([(0, 2.3), (1, 1.0)]) is None  # too few points to judge


def test_alert_badges_most_severe_first() -> None:
    alerts = [alert(1, 3, AlertKind.PLATEAU, Severity.INFO),
              alert(2, 3, AlertKind.DIVERGENCE, Severity.CRITICAL),
              alert(3, None, AlertKind.NON_MONOTONIC, Severity.WARNING)]
    assert alert_badges(alerts) == {3: "DIV PLAT"}


# --------------------------------------------------------------------------- the poller, on a real file


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)
    return path


def test_first_poll_reads_everything_then_nothing(db: Path) -> None:
    poller = Poller(db, clock=lambda: 0.0)
    first = poller.poll()
    assert len(first.runs) == 6 and first.final_losses and first.experiments == ("tiny",)
    assert len(first.alerts) == 2 and first.events
    again = poller.poll()
    assert again.empty
    poller.close()


def test_poll_reads_only_new_rows_of_tracked_and_running_runs(db: Path) -> None:
    labels = sweepdb.build(db.with_name("other.db"))  # same ids as `db`
    running_id = labels["mlp w16 d2 s0"]
    spec = next(s for s in sweepdb.specs((16,), (2,), (0,), 60))
    poller = Poller(db)
    poller.track(running_id, [labels["mlp w16 d1 s0"]])
    first = poller.poll()
    train = next(u for u in first.series if u.run_id == running_id and u.key == "train_loss")
    assert train.reset and train.steps == tuple(range(0, 31))
    assert first.layers[0].reset and first.layers[0].rows[-1].step == 30
    sweepdb.extend_run(db, running_id, spec, 31, 40)
    second = poller.poll()
    assert [r.id for r in second.runs] == [running_id]
    train = next(u for u in second.series if u.run_id == running_id and u.key == "train_loss")
    assert not train.reset and train.steps == tuple(range(31, 41))
    assert next(u for u in second.series if u.key == "test_loss" and u.run_id == running_id).steps == (40,)
    assert second.live[0].train == (40, pytest.approx(sweepdb.curve(16, 2, 40, 60)))
    assert {row.step for row in second.layers[0].rows} == {40}
    assert not any(u.run_id == labels["mlp w16 d1 s0"] for u in second.series)  # unchanged: not re-read
    poller.close()


def test_missing_database_is_reported_not_raised(tmp_path: Path) -> None:
    snap = Poller(tmp_path / "nope.db").poll()
    assert snap.error and "no database yet" in snap.error and snap.empty


def test_state_applies_snapshots_and_switches_tracked_runs(db: Path) -> None:
    poller = Poller(db)
    state = SweepState()
    poller.track(1, [2, 3])
    changes = state.apply(poller.poll())
    assert changes.added == set(state.runs) and changes.grid and changes.alerts
    assert len(state.series[(1, "train_loss")].values) == 61 and (2, "test_loss") in state.series
    assert state.badges == {3: "VANISH"}
    poller.track(4, [])
    state.apply(poller.poll())
    assert set(state.series) == {(4, "train_loss"), (4, "test_loss"), (4, NOISE_SCALE_METRIC)}
    assert state.layers_of == 4
    running = state.runs[5]
    assert state.test_loss(running) == pytest.approx(sweepdb.curve(16, 2, 20, 60) + 0.05)  # latest evaluation
    assert state.test_loss(state.runs[1]) == state.runs[1].loss  # finished: the loss rule's value
    assert state.group_of(1, "width") == [2, 3] and state.group_of(1, "depth") == [4]
    finished = replace(running, status=RunStatus.DONE, loss=1.0, rev=999)
    from scaletui.tui.poller import Snapshot

    assert state.apply(Snapshot(0.0, runs=(finished,), tracked=(4, frozenset()))).finished == {5}
    poller.close()


def test_the_app_and_its_first_frame_never_import_torch() -> None:
    """`scaletui` must draw before torch could even load: nothing on the app's import path needs it."""
    import json
    import subprocess
    import sys

    code = ("import sys, json; import scaletui.tui.app, scaletui.cli; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "textual" in loaded and "torch" not in loaded and "scipy" not in loaded


def test_a_run_that_stops_shows_the_databases_latest_values(db: Path) -> None:
    """Seen: 1.3924 at step 3200 shown for an interrupted run while the database had 1.4049 at 3400."""
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]
    poller, state = Poller(db), SweepState()
    state.apply(poller.poll())  # run 5 is running at step 30
    sweepdb.extend_run(db, 5, spec, 31, 45)  # its last flush, then it is stopped: both land between two polls
    with Store(db) as store:
        store.mark_interrupted(5, "stopped by the test")
    state.apply(poller.poll())
    for view in (state, _fresh_view(db)):  # the app that watched it stop, and one opened afterwards
        run5 = view.runs[5]
        assert run5.status is RunStatus.INTERRUPTED
        assert view.train_loss(run5) == pytest.approx(sweepdb.curve(16, 2, 45, 60))
        assert view.test_loss(run5) == pytest.approx(sweepdb.curve(16, 2, 40, 60) + 0.05)
    poller.close()


def resume_run_5_from_step_20(db: Path, spec: RunSpec) -> None:
    """Run 5 (16 x 2) is interrupted and resumed from its step-20 checkpoint: its records after step 20
    are deleted and steps 21-25 written again, as the runner does on a resume."""
    with Store(db) as store:
        store.mark_interrupted(5, "stopped by the test")
        store.mark_running(5, pid=4_000_005, host="gpu-box-elsewhere")
    with StoreSink(db, 5) as sink:
        sink.started(ModelInfo(sweepdb.params_of(16, 2), 1, tuple(sweepdb.layer_names(2)), 1e-3), 20)
    sweepdb.extend_run(db, 5, spec, 21, 25)


def test_a_resumed_run_reads_its_rewritten_steps(db: Path) -> None:
    """A resume deletes the records after the checkpoint and writes them again: the poller starts over."""
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]
    poller, state = Poller(db), SweepState()
    sweepdb.extend_run(db, 5, spec, 31, 45)
    state.apply(poller.poll())
    resume_run_5_from_step_20(db, spec)  # between two polls
    state.apply(poller.poll())
    assert state.train_loss(state.runs[5]) == pytest.approx(sweepdb.curve(16, 2, 25, 60))
    assert state.test_loss(state.runs[5]) == pytest.approx(sweepdb.curve(16, 2, 20, 60) + 0.05)
    poller.close()


def _fresh_view(db: Path) -> SweepState:
    poller, state = Poller(db), SweepState()
    state.apply(poller.poll())
    poller.close()
    return state


def test_the_notice_says_why_runs_are_hidden_and_how_to_show_them() -> None:
    from scaletui.tui.widgets.status_bar import Shown, notice_text

    def shown(**kw: object) -> Shown:
        base: dict[str, object] = dict(in_database=6, in_experiment=6, visible=6, experiment=None, missing=None,
                                       query="", start_hint="r starts experiments.toml")
        return Shown(**{**base, **kw})  # type: ignore[arg-type]

    assert notice_text(shown()) is None
    assert notice_text(shown(in_database=0, in_experiment=0, visible=0)) == (
        "no runs in this database yet (r starts experiments.toml)")
    assert notice_text(shown(missing="small")) == (
        "experiment 'small' is not in this database; showing all (n: next experiment)")
    assert notice_text(shown(in_experiment=0, visible=0, experiment="new")) == (
        "experiment 'new' has no runs yet (n: next experiment)")
    assert notice_text(shown(visible=0, query="w999", missing="small")) == (
        "experiment 'small' is not in this database; showing all (n: next experiment); "
        "no run matches the filter 'w999' (/ edits it, esc clears it)")


def test_a_selected_run_that_resumes_draws_its_rewritten_curve_and_layers(db: Path) -> None:
    """A resume deletes the steps after its checkpoint and writes them again. Seen in review: the
    selected run's curve kept the deleted steps, and the rewritten ones (behind its cursor) never came."""
    spec = sweepdb.specs((16,), (2,), (0,), 60)[0]
    poller, state = Poller(db), SweepState()
    poller.track(5, [])
    sweepdb.extend_run(db, 5, spec, 31, 45)
    state.apply(poller.poll())
    assert list(state.series[(5, "train_loss")].steps) == list(range(46))
    resume_run_5_from_step_20(db, spec)  # between two polls
    state.apply(poller.poll())
    assert list(state.series[(5, "train_loss")].steps) == list(range(26))
    assert list(state.series[(5, "test_loss")].steps) == [0, 20]
    assert [list(layer.steps) for layer in state.layers.values()] == [[0, 10, 20]] * 3
    poller.close()


def test_a_poll_that_fails_half_way_reads_the_same_rows_next_time(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in review: a poll that failed after reading the changed runs (the file busy, or replaced)
    had moved the runs cursor past them already, so those runs were not shown until they changed."""
    import sqlite3

    from scaletui.store.reader import Reader

    real = Reader.metrics_since
    calls = []

    def fails_once(self: Reader, *args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Reader, "metrics_since", fails_once)
    poller = Poller(db)
    failed = poller.poll()
    assert failed.error == f"{db}: disk I/O error" and failed.empty
    again = poller.poll()
    assert len(again.runs) == 6 and again.experiments == ("tiny",) and len(again.alerts) == 2
    assert [live.run_id for live in again.live] == [5] and again.live[0].reset
    poller.close()
