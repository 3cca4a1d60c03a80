"""The runner's alert monitor on a real database: records go in through StoreSink exactly as a worker
writes them, one monitor pass runs, and the `alerts` table is checked."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scaletui.analysis.diagnose import Thresholds
from scaletui.core.config import Sweep, build_sweep
from scaletui.core.records import LayerStats, MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import EventKind, RunStatus
from scaletui.services import monitor as monitor_module
from scaletui.services.monitor import FinishedRun, SweepMonitor, group_alerts, group_tables
from scaletui.store.reader import Reader
from scaletui.store.writer import Store, StoreSink
from tests.conftest import run_cli, tiny_sweep

PARAMS = 1_000


def make(tmp_path: Path, **sections: dict[str, Any]) -> Sweep:
    doc = tiny_sweep(tmp_path, tmp_path / "data", **sections)
    return build_sweep(doc, tmp_path / "experiments.toml")


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    """Two widths x two depths, two seeds: 8 runs (only their specs; records are written by hand)."""
    return make(tmp_path, train={"seeds": [0, 1]})


@pytest.fixture
def registered(sweep: Sweep) -> Iterator[tuple[Store, int, dict[RunSpec, int]]]:
    with Store(sweep.db) as store:
        exp = store.upsert_experiment(sweep.name, None, None, sweep.loss_rule)
        ids = {spec: run_id for run_id, spec in store.register_runs(exp, sweep.runs, fresh=False)}
        yield store, exp, ids


def healthy_loss(step: int) -> float:
    return 0.5 + 1.8 * math.exp(-step / 30)


def feed(db: Path, run_id: int, steps: range, loss: Callable[[int], float] = healthy_loss, *,
         started: bool = True, eval_every: int = 20, log_every: int = 10) -> None:
    """What a worker's StoreSink writes for these steps: train loss every step, an evaluation every
    `eval_every`, per-layer statistics of 3 layers every `log_every`."""
    with StoreSink(db, run_id) as sink:
        if started:
            sink.started(ModelInfo(PARAMS, 2 * PARAMS, ("0", "1", "2"), 3e-3), resumed_from=0)
        for step in steps:
            sink.metrics([MetricRecord(step, "train_loss", loss(step))])
            if step % eval_every == 0:
                sink.metrics([MetricRecord(step, "test_loss", loss(step) + 0.05)])
            if step % log_every == 0:
                sink.layer_stats([LayerStats(step, layer, str(layer), 0.5 + 0.2 * layer, 1.0, 1e-3, 0)
                                  for layer in range(3)])


def alert_rows(db: Path, active: int = 1) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select run_id, subject, kind, severity, step from alerts where active = ? "
                            "order by id", [active]).fetchall()


def finish(store: Store, run_id: int, loss: float, status: RunStatus = RunStatus.DONE) -> None:
    store.finish_run(run_id, RunOutcome(status, step=60, final_test_loss=loss, best_test_loss=loss))


def run_id_of(ids: dict[RunSpec, int], width: int, depth: int, seed: int = 0) -> int:
    [run_id] = [i for s, i in ids.items() if (s.model.width, s.model.depth, s.seed) == (width, depth, seed)]
    return run_id


def test_a_diverging_running_run_gets_a_critical_alert_at_its_step(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    bad, good = run_id_of(ids, 8, 1), run_id_of(ids, 16, 1)
    for run_id in (bad, good):
        store.mark_running(run_id, 1, "host")
    feed(sweep.db, good, range(1, 61))
    feed(sweep.db, bad, range(1, 41))
    monitor = SweepMonitor(sweep, exp, ids.values())
    try:
        monitor.run_pass()
        assert alert_rows(sweep.db) == []  # healthy so far, both of them
        feed(sweep.db, bad, range(41, 61), lambda step: 1e4 * (step - 40), started=False)
        monitor.run_pass()
    finally:
        monitor.close()
    [(run_id, subject, kind, severity, step)] = alert_rows(sweep.db)
    assert (run_id, subject, kind, severity) == (bad, f"run:{bad}", "divergence", "critical")
    assert 41 <= step <= 41 + Thresholds().divergence_window  # the blow-up starts at 41, sustained for 5 steps


def test_a_pass_without_new_records_writes_nothing(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    bad = run_id_of(ids, 8, 1)
    store.mark_running(bad, 1, "host")
    feed(sweep.db, bad, range(1, 31), lambda step: float("nan") if step > 20 else healthy_loss(step))
    monitor = SweepMonitor(sweep, exp, ids.values())
    try:
        monitor.run_pass()
        with Reader(sweep.db) as reader:
            cursor, rows = reader.alerts_since(0)
            assert [r.kind for r in rows] == ["divergence"] and rows[0].step == 21
            monitor.run_pass()
            assert reader.alerts_since(cursor) == (cursor, [])
    finally:
        monitor.close()


def test_an_evaluation_flushed_after_its_steps_train_loss_is_read(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    run = run_id_of(ids, 8, 1)
    store.mark_running(run, 1, "host")
    feed(sweep.db, run, range(1, 20), eval_every=1000)
    with StoreSink(sweep.db, run) as sink:  # step 20's train loss in one flush ...
        sink.metrics([MetricRecord(20, "train_loss", 0.9)])
    monitor = SweepMonitor(sweep, exp, ids.values())
    try:
        monitor.run_pass()
        with StoreSink(sweep.db, run) as sink:  # ... its evaluation in the next
            sink.metrics([MetricRecord(20, "test_loss", 0.95)])
        monitor.run_pass()
        assert monitor._tracks[run].metrics[(20, "test_loss")].value == 0.95
    finally:
        monitor.close()


def test_finished_runs_get_group_alerts_and_they_fade_with_new_evidence(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    losses = {(8, 1): 1.0, (8, 2): 1.3, (16, 1): 0.9, (16, 2): 0.8}  # width 8: depth 2 worse than depth 1
    for spec, run_id in ids.items():
        finish(store, run_id, losses[(spec.model.width, spec.model.depth)] + 0.01 * spec.seed)
    monitor = SweepMonitor(sweep, exp, ())
    try:
        monitor.run_pass()
        assert [(r[0], r[1], r[2]) for r in alert_rows(sweep.db)] == [(None, "width=8,depth_large=2", "non_monotonic")]
        finish(store, run_id_of(ids, 8, 2, seed=0), 0.85)  # the run is redone and the "trend" dissolves
        finish(store, run_id_of(ids, 8, 2, seed=1), 0.85)
        monitor._group_dirty = True  # as when a watched run finishes
        monitor.run_pass()
    finally:
        monitor.close()
    assert alert_rows(sweep.db) == []
    assert [r[2] for r in alert_rows(sweep.db, active=0)] == ["non_monotonic"]


def test_a_watched_run_finishing_triggers_the_group_pass(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    losses = {(8, 1): 1.0, (8, 2): 1.3, (16, 1): 0.9, (16, 2): 0.8}
    last = run_id_of(ids, 8, 2, seed=1)
    for spec, run_id in ids.items():
        if run_id != last:
            finish(store, run_id, losses[(spec.model.width, spec.model.depth)] + 0.01 * spec.seed)
    store.mark_running(last, 1, "host")
    monitor = SweepMonitor(sweep, exp, [last])
    try:
        monitor.run_pass()
        assert [r[2] for r in alert_rows(sweep.db)] == ["non_monotonic"]  # w8 d2 seed 0 alone already says so
        feed(sweep.db, last, range(1, 61))
        finish(store, last, 1.31)
        monitor.run_pass()
    finally:
        monitor.close()
    [(_, _, kind, _, _)] = alert_rows(sweep.db)
    assert kind == "non_monotonic"
    with Reader(sweep.db) as reader:
        [row] = reader.alerts(sweep.name)
    assert row.evidence["seeds_large"] == 2.0  # updated with the last seed


def test_a_failing_pass_is_an_event_once_and_never_raises(sweep: Sweep, registered: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store, exp, ids = registered
    run = run_id_of(ids, 8, 1)
    store.mark_running(run, 1, "host")

    def broken(*args: object, **kwargs: object) -> list:
        raise RuntimeError("detector bug")

    monkeypatch.setattr(monitor_module, "diagnose_run", broken)
    monitor = SweepMonitor(sweep, exp, ids.values())
    try:
        feed(sweep.db, run, range(1, 21))
        monitor.safe_pass()
        feed(sweep.db, run, range(21, 41), started=False)
        monitor.safe_pass()
    finally:
        monitor.close()
    with Reader(sweep.db) as reader:
        errors = [e.message for e in reader.events_since(0) if e.kind == EventKind.MONITOR_ERROR]
    assert errors == ["alert monitor: RuntimeError: detector bug"]


def test_a_run_left_interrupted_by_an_earlier_sweep_waits_for_its_restart(sweep: Sweep, registered: Any) -> None:
    store, exp, ids = registered
    run = run_id_of(ids, 8, 1)
    store.mark_running(run, 1, "host")
    feed(sweep.db, run, range(1, 31), lambda step: float("nan") if step > 20 else healthy_loss(step))
    store.mark_interrupted(run, "earlier sweep stopped")
    monitor = SweepMonitor(sweep, exp, ids.values())
    try:
        monitor.run_pass()
        assert alert_rows(sweep.db) == []  # old records of a run about to resume from its checkpoint
        store.mark_running(run, 2, "host")
        feed(sweep.db, run, range(21, 41), started=False, loss=lambda step: float("nan"))
        monitor.run_pass()
    finally:
        monitor.close()
    assert [r[2] for r in alert_rows(sweep.db)] == ["divergence"]


def finished(sweep: Sweep, loss: Callable[[RunSpec], float]) -> list[FinishedRun]:
    return [FinishedRun(i, spec, loss(spec)) for i, spec in enumerate(sweep.runs)]


def test_each_size_is_judged_at_its_best_nuisance_setting(tmp_path: Path) -> None:
    sweep = make(tmp_path, model={"width": 8, "depth": [1, 2]}, train={"lr": [1e-3, 1e-2], "seeds": [0, 1]})
    # depth 2 is bad at lr 1e-2 but the best of all at 1e-3: tuned per size the trend is monotone
    runs = finished(sweep, lambda s: {(1, 1e-3): 1.0, (1, 1e-2): 1.1, (2, 1e-3): 0.8, (2, 1e-2): 2.0}
                    [(s.model.depth, s.train.lr)] + 0.001 * s.seed)
    [rows] = group_tables(runs, sweep.axes).values()
    assert sorted((r.depth, r.seed, r.loss) for r in rows) == [(1, 0, 1.0), (1, 1, 1.001), (2, 0, 0.8), (2, 1, 0.801)]
    assert group_alerts(runs, sweep.axes, Thresholds()) == []


def test_group_axes_are_analysed_separately_and_named(tmp_path: Path) -> None:
    sweep = make(tmp_path, model={"width": 8, "depth": [1, 2]}, data={"label_noise": [0.0, 0.2]},
                 train={"seeds": [0, 1]})
    runs = finished(sweep, lambda s: (1.0 if s.model.depth == 1 else 1.5) + s.data.label_noise + 0.001 * s.seed)
    assert len(group_tables(runs, sweep.axes)) == 2
    [alert] = group_alerts(runs, sweep.axes, Thresholds())  # one row per subject and kind: merged
    assert alert.kind == "non_monotonic"
    assert alert.message.startswith("[data.label_noise=0.0] width 8: depth 2")
    assert alert.message.endswith("; also in [data.label_noise=0.2]")


@pytest.mark.slow
def test_headless_sweep_stores_a_divergence_alert_for_the_diverging_runs_only(
        make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(model={"width": 16, "depth": [1, 2]}, train={"lr": [3e-3, 1e4], "optimizer": "sgd"})
    out = run_cli("run", "--headless", str(sweep))
    assert out.returncode == 1, out.stdout + out.stderr
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as conn:
        runs = dict(conn.execute("select id, lr from runs").fetchall())
        alerts = conn.execute("select run_id, kind, severity from alerts where active = 1").fetchall()
        errors = conn.execute("select message from events where kind = 'monitor_error'").fetchall()
    assert errors == []
    run_alerts = [(runs[run_id], kind, severity) for run_id, kind, severity in alerts if run_id is not None]
    assert sorted(run_alerts) == [(1e4, "divergence", "critical")] * 2
    assert "divergence" in out.stdout  # the summary shows the alerts column


# --------------------------------------------------------------------------- pred. final: a size's peers

LUCK = {0: -0.10, 1: -0.05, 2: 0.05, 3: 0.10}  # each seed's log deviation from its size's loss early on
FINAL = {8: 1.9, 16: 1.7, 32: 1.5, 64: 1.35}  # every seed of a width ends here: the early luck fades


def _early_losses(width: int, seed: int, anchor: str) -> list[MetricRecord]:
    """What a run has logged before step 20 (its first evaluation; log windows of 10 steps): its luck
    in its test loss at step 20 (anchor test_loss) or in its train losses of steps 1-10 (train_loss)."""
    level = 1.3 * FINAL[width] * math.exp(LUCK[seed])
    if anchor == "test_loss":
        return [MetricRecord(0, "test_loss", 2.3), MetricRecord(20, "test_loss", level)]
    return [MetricRecord(0, "test_loss", 2.3)] + [MetricRecord(s, "train_loss", level) for s in range(1, 11)]


@pytest.mark.parametrize("anchor, at_step", [("test_loss", 20), ("train_loss", 10)])
def test_a_runs_early_luck_fades_into_its_sizes_mean_when_finished_runs_show_it_does(
        tmp_path: Path, anchor: str, at_step: int) -> None:
    """Finished widths 8-32 show that a seed's early deviation is gone by the end (slope 0), so the four
    running width-64 seeds, apart early by their luck alone, are all predicted at their size's final
    loss; carrying each one's luck forward (the forecast without peers) would put them 20% apart. Before
    any evaluation (train_loss) the prediction starts from the mean train loss of the last log window."""
    sweep = make(tmp_path, model={"width": list(FINAL), "depth": 1}, train={"seeds": list(LUCK)})
    with Store(sweep.db) as store:
        exp = store.upsert_experiment(sweep.name, None, None, sweep.loss_rule)
        ids = {spec: run_id for run_id, spec in store.register_runs(exp, sweep.runs, fresh=False)}
        running = []
        for spec, run_id in ids.items():
            width = spec.model.width
            store.mark_running(run_id, os.getpid(), socket.gethostname())
            with StoreSink(sweep.db, run_id) as sink:
                sink.started(ModelInfo(100 * width * width, 0, ("0",), 3e-3), resumed_from=0)
                sink.metrics(_early_losses(width, spec.seed, anchor))
                if width < 64:
                    sink.metrics([MetricRecord(s, "train_loss", 1.3 * FINAL[width] * math.exp(LUCK[spec.seed]))
                                  for s in range(1, 11)] + [MetricRecord(20, "test_loss", 1.3 * FINAL[width]
                                                                         * math.exp(LUCK[spec.seed])),
                                                            MetricRecord(60, "test_loss", FINAL[width])])
            if width < 64:
                finish(store, run_id, FINAL[width])
            else:
                running.append(run_id)
    monitor = SweepMonitor(sweep, exp, running)
    try:
        monitor.run_pass()
    finally:
        monitor.close()
    with sqlite3.connect(sweep.db) as conn:
        made = conn.execute("SELECT predicted, at_step, inputs_json FROM predictions WHERE kind = 'curve'").fetchall()
    assert len(made) == 4
    assert [p for p, _, _ in made] == pytest.approx([FINAL[64]] * 4, rel=1e-9)
    assert {step for _, step, _ in made} == {at_step}
    inputs = [json.loads(i) for _, _, i in made]
    assert {(i["shrink"], i["n_peers"], i["anchor"]) for i in inputs} == {(0.0, 3, anchor)}


def _finished_below_64(sweep: Sweep, records: Callable[[int], list[MetricRecord]]) -> tuple[int, list[int]]:
    """Register every run of `sweep`, mark it running and write `records(width)` for it; the widths below
    64 then finish at FINAL. Returns the experiment's id and the ids of the width-64 runs (still running)."""
    with Store(sweep.db) as store:
        exp = store.upsert_experiment(sweep.name, None, None, sweep.loss_rule)
        ids = {spec: run_id for run_id, spec in store.register_runs(exp, sweep.runs, fresh=False)}
        for spec, run_id in ids.items():
            width = spec.model.width
            store.mark_running(run_id, os.getpid(), socket.gethostname())
            with StoreSink(sweep.db, run_id) as sink:
                sink.started(ModelInfo(100 * width * width, 0, ("0",), 3e-3), resumed_from=0)
                sink.metrics(records(width))
            if width < 64:
                finish(store, run_id, FINAL[width])
    return exp, [run_id for spec, run_id in ids.items() if spec.model.width == 64]


def test_before_its_first_evaluation_a_run_is_predicted_once_per_tenth_of_its_steps(tmp_path: Path) -> None:
    """Evaluated only at its end, with log windows of 5 of 60 steps: the window ending at 30 (tenth 5) is
    recorded, the one at 35 (still tenth 5) is not, the one at 40 (tenth 6) is."""
    sweep = make(tmp_path, model={"width": list(FINAL), "depth": 1}, train={"seeds": list(LUCK), "eval_every": 60,
                                                                          "log_every": 5})
    def records(width: int) -> list[MetricRecord]:
        if width == 64:
            return []
        return ([MetricRecord(s, "train_loss", 2.0 * FINAL[width] - s / 60) for s in range(1, 61)]
                + [MetricRecord(60, "test_loss", FINAL[width])])
    exp, big = _finished_below_64(sweep, records)
    monitor = SweepMonitor(sweep, exp, big)
    recorded = []
    try:
        for first, last in ((1, 30), (31, 35), (36, 40)):
            for run_id in big:
                with StoreSink(sweep.db, run_id) as sink:
                    sink.metrics([MetricRecord(s, "train_loss", 2.0 * FINAL[64] - s / 60)
                                  for s in range(first, last + 1)])
            monitor.run_pass()
            with sqlite3.connect(sweep.db) as conn:
                recorded.append(sorted(conn.execute("SELECT at_step FROM predictions WHERE kind = 'curve'").fetchall()))
    finally:
        monitor.close()
    assert recorded == [[(30,)] * 4, [(30,)] * 4, [(30,)] * 4 + [(40,)] * 4]


def test_evaluations_that_arrive_between_two_passes_are_each_predicted_and_recorded(tmp_path: Path) -> None:
    """A small run evaluates faster than the monitor looks: its evaluations at steps 20 and 40 of 60 both
    land before the next pass, and both get a prediction in the ledger, each from the run as it stood
    then (its loss at that step), not only the latest one."""
    sweep = make(tmp_path, model={"width": list(FINAL), "depth": 1}, train={"seeds": list(LUCK)})
    def loss(width: int, step: int) -> float:
        return FINAL[width] * {20: 1.3, 40: 1.1, 60: 1.0}[step]
    exp, big = _finished_below_64(sweep, lambda width: [MetricRecord(0, "test_loss", 2.3)] + (
        [MetricRecord(s, "test_loss", loss(width, s)) for s in (20, 40, 60)] if width < 64 else []))
    monitor = SweepMonitor(sweep, exp, big)
    try:
        monitor.run_pass()  # nothing evaluated yet: nothing to predict from
        for run_id in big:
            with StoreSink(sweep.db, run_id) as sink:
                sink.metrics([MetricRecord(s, "test_loss", loss(64, s)) for s in (20, 40)])
        monitor.run_pass()
    finally:
        monitor.close()
    with sqlite3.connect(sweep.db) as conn:
        made = conn.execute("SELECT run_id, at_step, predicted FROM predictions WHERE kind = 'curve'").fetchall()
    assert sorted((run_id, step) for run_id, step, _ in made) == sorted((r, s) for r in big for s in (20, 40))
    # every finished width fell by the same ratio from each step, so each prediction lands on the truth
    assert [p for _, _, p in made] == pytest.approx([FINAL[64]] * len(made), rel=1e-9)


def test_a_train_loss_window_is_only_compared_with_windows_of_the_same_width(tmp_path: Path) -> None:
    """The plan leaves the logging cadence out, so a follow-up sweep logging every 5 steps shares it with
    finished runs that logged every 10; their windows ending at step 10 (steps 1-10) are not its (6-10),
    so its runs get no train-loss forecast from them (and one once they are the same width)."""
    finished = make(tmp_path, model={"width": [8, 16, 32], "depth": 1}, train={"seeds": list(LUCK)})
    with Store(finished.db) as store:
        exp = store.upsert_experiment(finished.name, None, None, finished.loss_rule)
        for run_id, spec in store.register_runs(exp, finished.runs, fresh=False):
            store.mark_running(run_id, os.getpid(), socket.gethostname())
            with StoreSink(finished.db, run_id) as sink:
                sink.started(ModelInfo(100 * spec.model.width ** 2, 0, ("0",), 3e-3), resumed_from=0)
                final = FINAL[spec.model.width]
                sink.metrics([MetricRecord(s, "train_loss", 2.0) for s in range(1, 21)]
                             + [MetricRecord(20, "test_loss", 1.9), MetricRecord(60, "test_loss", final)])
            finish(store, run_id, FINAL[spec.model.width])
    made = {}
    for log_every in (5, 10):
        follow_up = make(tmp_path, model={"width": [64], "depth": 1},
                         train={"seeds": [log_every], "log_every": log_every})  # a seed per case: new runs
        with Store(follow_up.db) as store:
            [(run_id, _)] = store.register_runs(exp, follow_up.runs, fresh=False)
            store.mark_running(run_id, os.getpid(), socket.gethostname())
        with StoreSink(follow_up.db, run_id) as sink:
            sink.started(ModelInfo(100 * 64 ** 2, 0, ("0",), 3e-3), resumed_from=0)
            sink.metrics([MetricRecord(s, "train_loss", 1.8) for s in range(1, 11)])
        monitor = SweepMonitor(follow_up, exp, [run_id])
        try:
            monitor.run_pass()
        finally:
            monitor.close()
        with sqlite3.connect(follow_up.db) as conn:
            made[log_every] = conn.execute("SELECT at_step FROM predictions WHERE run_id = ?", [run_id]).fetchall()
    assert made == {5: [], 10: [(10,)]}
