"""The gradient pane's noise-scale line: the selected run's running B_simple, read by the poller with its
curves, drawn as a sparkline with its latest value."""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path

from textual.widgets import Label, Sparkline

from scaletui.core.records import MetricRecord, ModelInfo
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import NOISE_SCALE_METRIC
from scaletui.store.writer import Store, StoreSink
from scaletui.tui.poller import Poller
from scaletui.tui.state import LayerSeries, Series, SweepState
from scaletui.tui.widgets.grad_pane import GradPane, NoiseLine, noise_text
from tests.tui.hosts import WidgetHost


def state_with_noise(values: list[float]) -> SweepState:
    state = SweepState()
    state.layers_of = 7
    state.layers[0] = LayerSeries("fc1", array("q", [25]), array("d", [1.0]), array("d", [2.0]))
    series = Series()
    series.extend([50 * (i + 1) for i in range(len(values))], values)
    state.series[(7, NOISE_SCALE_METRIC)] = series
    return state


def test_noise_text_shows_the_latest_value_and_the_number_of_measurements() -> None:
    assert noise_text(state_with_noise([120.0, 340.5]).series[(7, NOISE_SCALE_METRIC)]) == "B 340 (2)"
    assert noise_text(state_with_noise([1901.4]).series[(7, NOISE_SCALE_METRIC)]) == "B 1901 (1)"
    assert noise_text(state_with_noise([3.14159]).series[(7, NOISE_SCALE_METRIC)]) == "B 3.14 (1)"
    assert noise_text(None) == noise_text(Series()) == "B -"


def test_the_pane_draws_the_selected_runs_noise_scale() -> None:
    async def go() -> None:
        pane = GradPane()
        async with WidgetHost(pane).run_test(size=(100, 20)) as pilot:
            pane.show(state_with_noise([100.0, 200.0, 400.0]))
            await pilot.pause()
            line = pane.query_one(NoiseLine)
            assert list(line.query_one(Sparkline).data or []) == [100.0, 200.0, 400.0]
            assert str(line.query(Label).last().render()) == "B 400 (3)"
            pane.show(SweepState())  # another run without measurements: nothing left of the last one
            await pilot.pause()
            assert not line.query_one(Sparkline).data
            assert str(line.query(Label).last().render()) == "B -"

    asyncio.run(go())


def test_the_poller_reads_the_selected_runs_noise_scale(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    spec = RunSpec("e", DataSpec(), ModelSpec(), TrainSpec(steps=100), 0)
    with Store(db) as store:
        ((run_id, _),) = store.register_runs(store.upsert_experiment("e", None, None, "final"), [spec], fresh=True)
        with StoreSink(db, run_id) as sink:
            sink.started(ModelInfo(10, 20, ("fc1",), 1e-3), resumed_from=0)
            sink.metrics([MetricRecord(50, NOISE_SCALE_METRIC, 123.0), MetricRecord(100, NOISE_SCALE_METRIC, 150.0)])
    poller = Poller(db)
    try:
        poller.track(run_id)
        snap = poller.poll()
    finally:
        poller.close()
    [update] = [u for u in snap.series if u.key == NOISE_SCALE_METRIC]
    assert (update.run_id, update.steps, update.values) == (run_id, (50, 100), (123.0, 150.0))
    state = SweepState()
    state.apply(snap)
    assert list(state.series[(run_id, NOISE_SCALE_METRIC)].values) == [123.0, 150.0]
