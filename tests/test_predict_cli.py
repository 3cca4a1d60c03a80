"""`scaletui predict` in a subprocess: predict the next width of a real sweep (a trained width is refused), train
it, see it scored.

The scoring is the runner's: the follow-up sweep scores the ledger as its runs finish, so the table is
read here with plain SQL (not through `predict --list`, which would score it itself)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from scaletui.core.vocabulary import PredictionSource
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

WIDTHS = [8, 12, 16, 24, 32]


def _sql(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_predict_the_next_width_then_train_it_and_the_runner_scores_it(make_sweep: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    model = {"width": WIDTHS, "depth": 1}
    train = {"seeds": [0, 1]}
    first = run_cli("run", "--headless", str(make_sweep(model=model, train=train)))
    assert first.returncode == 0, first.stdout + first.stderr
    db = tmp_path / "runs.db"

    # a size the sweep trained is not a prediction: refused in one line, nothing written
    ledger = _sql(db, "SELECT * FROM predictions")  # the monitor's own curve predictions, if any
    refused = run_cli("predict", "--db", str(db), "-w", "16", "-d", "1")
    assert refused.returncode == 2 and "already trained" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _sql(db, "SELECT * FROM predictions") == ledger

    out = run_cli("predict", "--db", str(db), "-w", "48", "-d", "1", "--bootstrap", "200", "--json")
    assert out.returncode == 0, out.stderr
    recorded = json.loads(out.stdout)
    assert (recorded["status"], recorded["width"], recorded["truth"]) == ("open", 48, None)

    follow_up = make_sweep("next.toml", model={"width": [*WIDTHS, 48], "depth": 1}, train=train)
    second = run_cli("run", "--headless", str(follow_up))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "training 2 of 12 runs" in second.stdout  # only the new width trains

    [(status, truth, n_truth, error)] = _sql(  # the monitor's curve predictions of the new runs aside
        db, f"SELECT status, truth, n_truth, error FROM predictions WHERE source = '{PredictionSource.PREDICT}'")
    [(mean_loss,)] = _sql(db, "SELECT avg(loss) FROM run_summary WHERE width = 48")
    assert (status, n_truth) == ("scored", 2)
    assert truth == pytest.approx(mean_loss)
    assert error == pytest.approx((recorded["predicted"] - truth) / truth)

    listing = run_cli("predict", "--db", str(db), "--list")
    assert listing.returncode == 0, listing.stderr
    assert "1 prediction(s), 1 scored: median |error|" in listing.stdout
    assert "48x1" in listing.stdout and "scored" in listing.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-w", "48"], "give --width and --depth"),
    (["-w", "48", "-d", "1", "--db", "missing.db"], "no such database"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = run_cli("predict", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr

