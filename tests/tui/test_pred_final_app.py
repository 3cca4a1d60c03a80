"""`pred. final` in the app: the runs table's `pred` column and the dashed continuation of the selected
run's loss plot, read incrementally from the predictions ledger as the monitor adds to it."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from scaletui.core.vocabulary import CURVE_FORM, LossRule, PredictionKind, PredictionSource
from scaletui.store.predictions import NewPrediction
from scaletui.store.writer import Store
from scaletui.tui.app import ScaleApp
from scaletui.tui.model import debiased_ema
from scaletui.tui.poller import TRAIN
from scaletui.tui.widgets.loss_pane import LossPane
from tests.tui import sweepdb
from tests.tui.test_app_pilot import NOW, cell, loaded
from tests.waiting import until

RUNNING = 5  # sweepdb's running run: w16 d2, at step 30 of 60, predicted at step 20


def _predict_again(path: Path, at_step: int, predicted: float) -> None:
    """What the monitor records at the run's next evaluation."""
    with Store(path) as store:
        store.add_prediction(NewPrediction(
            store.experiment_id(sweepdb.EXPERIMENT) or 0, PredictionSource.MONITOR, 16, 2, "params", 1.0, "depth=2",
            LossRule.FINAL.value, predicted, predicted - 0.01, predicted + 0.01, 0.9, None, {}, {},
            kind=PredictionKind.CURVE, run_id=RUNNING, at_step=at_step, steps=60, form=CURVE_FORM))


def first_dash(app: ScaleApp) -> tuple[float, float] | None:
    """Where the dashed continuation starts on the loss plot (step, loss or log10 loss), if drawn."""
    dashes = [c for c in app.query_one(LossPane).curves if c.color == "orange"]
    return dashes[0].points[0] if dashes else None


def test_the_latest_prediction_shows_in_the_table_and_continues_the_plot(tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    sweepdb.build(path)

    async def go() -> None:
        app = ScaleApp(path, clock=lambda: NOW)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, loaded(app))
            await until(pilot, lambda: cell(app, RUNNING, "pred") == "1.4079")
            assert cell(app, 1, "pred") == ""  # finished before any prediction: nothing to show
            app.view.selected = RUNNING
            await until(pilot, lambda: any(c.label == "pred. final" for c in app.query_one(LossPane).curves))
            sweepdb.extend_run(path, RUNNING, sweepdb.specs((16,), (2,), (0,), 60)[0], 31, 40)
            _predict_again(path, 40, 1.3)
            await until(pilot, lambda: cell(app, RUNNING, "pred") == "1.3000")
            dashes = [c for c in app.query_one(LossPane).curves if c.color == "orange"]
            assert dashes[0].points[0][0] == 40 and dashes[-1].points[0][0] == 60  # from step 40; the band at 60
            # Predicted between evaluations (from the train loss, as before a run's first evaluation): the
            # dashes leave the train curve's EMA at that step.
            sweepdb.extend_run(path, RUNNING, sweepdb.specs((16,), (2,), (0,), 60)[0], 41, 45)
            _predict_again(path, 45, 1.2)
            await until(pilot, lambda: cell(app, RUNNING, "pred") == "1.2000")
            await until(pilot, lambda: first_dash(app) is not None and first_dash(app)[0] == 45)
            train = app.state.series[(RUNNING, TRAIN)]
            ema = dict(zip(train.steps, debiased_ema(train.values), strict=True))[45]
            assert first_dash(app)[1] in (pytest.approx(ema), pytest.approx(math.log10(ema)))

    asyncio.run(go())
