"""`train.stop_when_hopeless` end to end through `scaletui run --headless`: a follow-up sweep's run that is
clearly worse than a finished smaller size of its group is ended `early_stopped` with the reason, stays
finished at the next `scaletui run`, and shows its reason in `scaletui ls`; with the key false the same run
trains to its end.

The scenario: widths 4 and 8 (two seeds, depth 1) at learning rate 0.03 finish first (a sweep of their own:
in one sweep the runner starts the largest width first, before any smaller one has finished); then
width 512 under the same training plan, where that rate makes its test loss climb (overfitting 512 examples
at 60x the parameters): its predicted final loss's band lies far above the smaller sizes' (lower end 3.4
against 1.8 when this test was written). No timing is waited on: with the key on, the run is held at step 41
(after its evaluation at 40 is in the database) until its worker is told to stop (tests/faults/inject:
`hold_step`), so it cannot end before the monitor has judged its evaluations; the monitor may judge it
hopeless from fewer of them, so it stops somewhere between the evaluation its reason names last and the
hold. With the key off, it pauses there until the monitor has predicted it (`pause_step`), then is released
to finish.

Inside one sweep, the runner trains each width ladder's smallest size right after its largest
(services/schedule.py), so a middle width can be judged hopeless against the smallest: the last test."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli
from tests.faults.conftest import fault_env, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

TRAIN = {"lr": 0.03, "steps": 100, "eval_every": 10, "checkpoint_every": 10, "log_every": 10, "seeds": [0, 1]}
SMALLER = {"experiment": {"workers": 1}, "model": {"width": [4, 8], "depth": 1}, "train": TRAIN}
HELD_AT = 41  # the step after an evaluation and a checkpoint (which flushes the evaluation to the database)
REASON = re.compile(r"hopeless: pred\. final test loss >= ([\d.]+) \(90%\), (\d+)x1 got ([\d.]+) \(mean of 2 seeds\); "
                    r"hopeless at steps [\d, ]+, band at step (\d+) \[([\d.]+), ([\d.]+)\]")


def bigger(on: bool, **experiment: Any) -> dict[str, dict[str, Any]]:
    """Width 512 alone, under the smaller runs' training plan (stop_when_hopeless is not part of it)."""
    return {"experiment": {"workers": 1, **experiment}, "model": {"width": [512], "depth": 1},
            "train": {**TRAIN, "seeds": 0, "stop_when_hopeless": on}}


def start(sweep: Path, fault: str, marks: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "scaletui", "run", "--headless", str(sweep)], cwd=REPO,
                            env=fault_env(fault, marks), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the sweep to end; a sweep that hangs (a held run never told to stop) is killed, session and all."""
    try:
        return proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise


def smaller_means(db: Path) -> dict[int, float]:
    """Width -> mean final test loss over its seeds, of the finished smaller sizes."""
    return {w: m for w, m in rows(db, "SELECT width, avg(final_test_loss) FROM runs WHERE width < 512 "
                                      "AND status = 'done' GROUP BY width")}


def test_a_hopeless_run_is_early_stopped_with_its_reason_only_when_the_key_says_so(
        make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    first = run_cli("run", "--headless", str(make_sweep(**SMALLER)))
    assert first.returncode == 0, first.stdout + first.stderr
    db, control = tmp_path / "runs.db", tmp_path / "control.db"
    with sqlite3.connect(db) as source, sqlite3.connect(control) as copy:
        source.backup(copy)  # the same finished smaller runs, for the sweep with the key off
    means = smaller_means(db)
    assert sorted(means) == [4, 8]

    # The key on: held at step 41 until its worker is told to stop; the monitor must do it.
    proc = start(make_sweep("on.toml", **bigger(True)), f"hold_step:{HELD_AT}", tmp_path / "marks-on")
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stdout + stderr  # early_stopped is a finished run: the sweep succeeded
    [(run_id, status, step, error)] = rows(db, "SELECT id, status, step, error FROM runs WHERE width = 512")
    found = REASON.fullmatch(error or "")
    assert status == "early_stopped" and found, (status, step, error)
    lo, width, baseline, judged_at, band_lo, band_hi = found.groups()
    assert int(judged_at) <= step <= HELD_AT, (step, error)  # stopped after the evidence, never past the hold
    assert float(lo) == float(band_lo) < float(band_hi)
    assert float(baseline) == pytest.approx(min(means.values()), rel=1e-3) and means[int(width)] == min(means.values())
    assert float(lo) > float(baseline)
    [(message,)] = rows(db, "SELECT message FROM events WHERE run_id = ? AND kind = 'early_stopped'", run_id)
    assert message.startswith(f"early_stopped at step {step}, test loss ") and message.endswith(error)
    assert f"early_stopped mlp w512 d1 s0 [run {run_id}] step {step}" in stdout and "hopeless: " in stdout

    listed = run_cli("ls", "--db", str(db))
    assert listed.returncode == 0 and error[:40] in listed.stdout, listed.stdout
    again = run_cli("run", "--headless", str(tmp_path / "on.toml"))  # finished: never resumed
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(db, "SELECT status, step, error FROM runs WHERE id = ?", run_id) == [("early_stopped", step, error)]

    # The key off: the same run, paused at step 41 until the monitor has predicted it, then released.
    marks = tmp_path / "marks-off"
    off = make_sweep("off.toml", **bigger(False, db=str(control), checkpoint_dir=str(tmp_path / "ckpt-off")))
    proc = start(off, f"pause_step:{HELD_AT}", marks)
    try:
        query = ("SELECT p.lo, p.hi FROM predictions p JOIN runs r ON r.id = p.run_id "
                 "WHERE p.kind = 'curve' AND r.width = 512 AND p.at_step = 40")
        [(off_lo, off_hi)] = wait_for(lambda: rows(control, query), timeout=120,
                                      what="the monitor's prediction at step 40 with the key off")
        assert min(means.values()) < off_lo < off_hi, "as hopeless as the run the key on stopped"
        (marks / "release").write_text("go")
    finally:
        stdout, stderr = finish(proc)
    assert proc.returncode == 0, stdout + stderr
    assert rows(control, "SELECT status, step, error FROM runs WHERE width = 512") == [("done", 100, None)]


def test_in_one_sweep_a_middle_width_is_judged_against_the_smallest_which_trains_second(
        make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    # One sweep of widths 4, 256 and 512 on one worker, each seed alone: the runner starts a 512 first,
    # then width 4, the ladder's smallest (services/schedule.py), so width 256 trains after both ends
    # have finished and is judged against width 4 (lower end 2.1 against 1.8 when this test was written).
    # Width 256 is held at step 41 until its worker is told to stop, so only the monitor can end it.
    sweep = make_sweep(experiment={"workers": 1, "batch_runs": False}, model={"width": [4, 256, 512], "depth": 1},
                       train={**TRAIN, "stop_when_hopeless": True})
    proc = start(sweep, f"hold_step:{HELD_AT}:256:1", tmp_path / "marks")
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stdout + stderr
    started = re.findall(r"^started  mlp w(\d+) d1 s(\d)", stdout, flags=re.MULTILINE)
    assert started == [("512", "0"), ("4", "0"), ("4", "1"), ("512", "1"), ("256", "0"), ("256", "1")], stdout
    db = tmp_path / "runs.db"
    assert rows(db, "SELECT width, status, step FROM runs WHERE width != 256 ORDER BY width, seed") == [
        (4, "done", 100), (4, "done", 100), (512, "done", 100), (512, "done", 100)]
    smallest = smaller_means(db)[4]
    for status, step, error in rows(db, "SELECT status, step, error FROM runs WHERE width = 256 ORDER BY seed"):
        found = REASON.fullmatch(error or "")
        assert status == "early_stopped" and found and step <= HELD_AT, (status, step, error)
        lo, width, baseline = found.group(1, 2, 3)
        assert width == "4" and float(baseline) == pytest.approx(smallest, rel=1e-3) and float(lo) > smallest
