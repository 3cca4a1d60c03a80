"""The app on a sweep that launches the user's code (`train.entrypoint`), through its keys, with Pilot.

`r` starts the sweep as a real subprocess; a run that finishes shows its loss, which is the
experiment's own metric (`cost`, not test_loss); `k` on a running run stops that run alone (it
becomes `interrupted`, the function sees `run.should_stop`), and `X` stops the rest. Every wait is on
a condition of the database or the app, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from textual.widgets.data_table import CellDoesNotExist

from scaletui.core.vocabulary import RunStatus
from scaletui.store.reader import Reader
from scaletui.tui.app import ScaleApp
from scaletui.tui.model import fmt_loss
from scaletui.tui.widgets.runs_table import RunsTable
from tests.waiting import until

FUNCTION = '''
import time

def train(config, run):
    """Width 4 finishes; wider runs keep going (a step every 10 ms) until asked to stop."""
    step = -1 if run.last_step is None else run.last_step
    while config["width"] != 4 or step < 9:
        step += 1
        run.log({"train_loss": 1.0 / (step + 1), "cost": 3.0 / config["width"] + 1.0 / (step + 1)}, step=step)
        if run.should_stop:
            return
        if config["width"] != 4:
            time.sleep(0.01)
    run.summary(params=10 * config["width"])
'''


def entry_sweep(folder: Path) -> Path:
    (folder / "train.py").write_text(FUNCTION, encoding="utf-8")
    path = folder / "experiments.toml"
    path.write_text(textwrap.dedent(f'''
        [experiment]
        name = "entry-app"
        loss = "cost"
        workers = 3
        checkpoint_dir = "{folder / 'checkpoints'}"

        [train]
        entrypoint = "train.py:train"
        steps = 10
        seeds = [0]

        [model]
        width = [4, 8, 16]
        '''), encoding="utf-8")
    return path


def loss_cell(table: RunsTable, run_id: int) -> str | None:
    """The run's cell in the loss column, or None while the table has no row for it yet."""
    try:
        return str(table.get_cell(str(run_id), "test"))
    except CellDoesNotExist:
        return None


@pytest.mark.slow
def test_the_app_runs_an_entrypoint_sweep_shows_its_loss_and_stops_one_run(tmp_path: Path) -> None:
    sweep, db = entry_sweep(tmp_path), tmp_path / "runs.db"

    def by_width() -> dict[int, tuple[int, RunStatus, float | None]]:
        if not db.exists():
            return {}
        with Reader(db) as reader:
            return {r.width or 0: (r.id, r.status, r.loss) for r in reader.runs("entry-app")}

    def state(width: int) -> RunStatus:
        return by_width()[width][1]

    async def go() -> None:
        app = ScaleApp(db, sweep, experiment="entry-app", poll_interval=0.2)
        async with app.run_test(size=(160, 48)) as pilot:
            try:
                await steps(app, pilot)
            finally:  # a failed check must not leave the sweep running (the app's exit waits for it)
                if app.sweep.proc is not None:
                    app.sweep.proc.kill()

    async def steps(app: ScaleApp, pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("r")
        await until(pilot, lambda: len(by_width()) == 3 and state(4) == RunStatus.DONE
                    and state(8) == state(16) == RunStatus.RUNNING, timeout=90)
        done_id, _, cost = by_width()[4]
        assert cost == 3.0 / 4 + 1.0 / 10  # "the loss" is the experiment's cost, at its last step
        table = app.query_one(RunsTable)
        await until(pilot, lambda: loss_cell(table, done_id) == fmt_loss(cost), timeout=60)
        running = {by_width()[8][0]: 8, by_width()[16][0]: 16}
        await until(pilot, lambda: all(app.state.runs.get(i) is not None
                                       and app.state.runs[i].status == RunStatus.RUNNING for i in running), timeout=60)
        for _ in range(len(table.rows)):  # the cursor to a running run's row
            if app.view.selected in running:
                break
            await pilot.press("down")
        victim = running.pop(app.view.selected)  # type: ignore[arg-type]
        survivor = next(iter(running.values()))
        await pilot.press("k")
        await until(pilot, lambda: state(victim) == RunStatus.INTERRUPTED, timeout=30)
        assert state(survivor) == RunStatus.RUNNING  # only that run stopped
        await pilot.press("X")
        await until(pilot, lambda: app.sweep.proc is None, timeout=60)
        assert state(survivor) == RunStatus.INTERRUPTED and state(4) == RunStatus.DONE

    asyncio.run(go())
