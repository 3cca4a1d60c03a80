"""SIGINT and SIGTERM sent to the whole process group, as a terminal's Ctrl-C and a service
manager's stop (systemd's default KillMode) send them: every process gets the signal at once.

A clean stop means exit code 130, no run left `running`, each stopped run `interrupted` with a
checkpoint at the step where it stopped, so the rerun resumes exactly there and redoes nothing.
(tests/test_cli_e2e.py sends SIGTERM to the runner alone, as `kill PID` does.)

Both runs are parked mid-run (fault `hold_step`) before the signal is sent: on an idle machine a
run of a few hundred tiny steps takes well under a second, so waiting for "both running" by polling could
miss the moment, or a run could finish before the signal landed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.faults.conftest import Sweep, assert_complete_without_duplicates, assert_intact, events, rows
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stops_cleanly(fault_sweep: Callable[..., Sweep], reap_sessions: list,
                                                     signum: int) -> None:
    # two runs at once, each stopped midway
    sweep = fault_sweep(model={"width": [32, 48], "depth": 1}, experiment={"workers": 2},
                        train={"steps": 200, "checkpoint_every": 100, "eval_every": 50, "log_every": 10})
    proc = sweep.start("hold_step:20")
    reap_sessions.append(proc)
    wait_for(lambda: len(sweep.parked()) == 2, what="both runs parked at step 20")
    assert rows(sweep.db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(2,)]
    os.killpg(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert_intact(sweep.db)
    stopped = dict(rows(sweep.db, "SELECT id, step FROM runs WHERE status = 'interrupted'"))
    assert stopped == {1: 20, 2: 20}, sweep.statuses()  # each finished the step it was in, then stopped
    assert not [m for _, m in events(sweep.db, "interrupted") if "died" in m], "a worker was killed, not stopped"

    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_complete_without_duplicates(sweep.db)
    resumed = {run_id: int(m.split()[2].rstrip(";")) for run_id, m in events(sweep.db, "resumed")}
    assert resumed == stopped  # each picked up at the step where it stopped
