"""`pred. final` end to end: a real sweep's monitor predicts a running run's final loss at a third of its
steps from the runs that finished before it, and the runner scores it when the run ends.

The runs of the follow-up sweep are paused (tests/faults/inject: `pause_step`) right after their
evaluation at step 20 of 60 is in the database, so the test waits on the prediction appearing, never
on timing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.faults.conftest import fault_env, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

WIDTHS = [8, 12, 16, 24]
SECTIONS = {"experiment": {"batch_runs": False}, "model": {"width": WIDTHS, "depth": 1},
            "train": {"seeds": [0, 1]}}


def test_a_running_run_is_predicted_at_a_third_and_scored_at_its_end(make_sweep: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    first = run_cli("run", "--headless", str(make_sweep(**SECTIONS)))
    assert first.returncode == 0, first.stdout + first.stderr
    db = tmp_path / "runs.db"
    # Only the new width: the monitor learns from the runs the first sweep finished in this experiment.
    follow_up = make_sweep("next.toml", **{**SECTIONS, "model": {"width": [32], "depth": 1},
                                          "experiment": {**SECTIONS["experiment"], "workers": 2}})  # both at once
    marks = tmp_path / "marks"
    proc = subprocess.Popen([sys.executable, "-m", "scaletui", "run", "--headless", str(follow_up)], cwd=REPO,
                            env=fault_env("pause_step:25", marks), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        query = ("SELECT p.run_id, p.at_step, p.steps, p.predicted, p.lo, p.hi, p.curve, p.status FROM predictions p"
                 " JOIN runs r ON r.id = p.run_id WHERE p.kind = 'curve' AND r.width = 32")
        made = wait_for(lambda: len(rows(db, query)) == 2 and rows(db, query), timeout=120,
                        what="the monitor's predictions for both width-32 runs")
        assert {(at, steps, curve, status) for _, at, steps, _, _, _, curve, status in made} == {
            (20, 60, "depth=1", "open")}
        assert all(lo < predicted < hi for _, _, _, predicted, lo, hi, _, _ in made)
        (marks / "release").write_text("go")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    scored = rows(db, "SELECT p.status, p.truth, p.error, p.predicted, r.final_test_loss FROM predictions p"
                      " JOIN runs r ON r.id = p.run_id WHERE p.kind = 'curve' AND r.width = 32")
    assert len(scored) == 2
    for status, truth, error, predicted, final in scored:
        assert status == "scored" and truth == pytest.approx(final)
        assert error == pytest.approx((predicted - truth) / truth)
