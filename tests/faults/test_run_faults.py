"""Runs that go wrong on their own: each ends with its true status and error, the sweep goes on.

One sweep holds a run that raises inside a training step, one that raises MemoryError there (what
the device's own out-of-memory looks like to the loop), one that diverges (a real learning rate of
1e4), one too big for `experiment.memory_limit_mb` (refused before it allocates), and one healthy
run. Then: checkpoints that are truncated or garbage make the next start fall back, with an event
that says why, and never crash.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.conftest import (
    Sweep,
    assert_complete_without_duplicates,
    assert_intact,
    events,
    kill_everything,
    rows,
)
from tests.waiting import wait_for

# (width, depth, lr) of each run, advancing together (zipped axes take distinct values);
# the w2048 d5 MLP needs ~130 MiB with SGD, far over the 4 MiB limit.
RUNS = [(8, 1, 0.03), (12, 2, 0.02), (16, 3, 1e4), (24, 4, 0.04), (2048, 5, 0.05)]
FAULTS = "raise:RuntimeError:8:1:15;raise:MemoryError:12:2:25"


@pytest.mark.slow
def test_each_broken_run_gets_its_true_status_and_error(fault_sweep: Callable[..., Sweep]) -> None:
    width, depth, lr = (list(axis) for axis in zip(*RUNS, strict=True))
    sweep = fault_sweep(
        experiment={"zip": [["model.width", "model.depth", "train.lr"]], "memory_limit_mb": 4},
        model={"width": width, "depth": depth},
        train={"lr": lr, "optimizer": "sgd", "steps": 60},
    )
    out = sweep.run(FAULTS)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr

    assert_intact(sweep.db)
    got = {width: (status, error or "", step) for width, status, error, step in
           rows(sweep.db, "SELECT width, status, error, step FROM runs")}
    assert got[8][:2] == ("failed", "RuntimeError: injected fault in training step 15")
    # the steps up to the last logging step (every 10) before the fault are stored, with no gap
    assert got[8][2] == 10
    assert rows(sweep.db, "SELECT count(*), max(m.step) FROM metrics m JOIN runs r ON r.id = m.run_id"
                          " WHERE r.width = 8 AND m.key = 'train_loss'") == [(10, 10)]
    assert got[12][0] == "failed"
    assert got[12][1] == "OutOfMemory: cpu ran out of memory (injected fault in training step 25)"
    assert got[16][0] == "diverged" and "train loss" in got[16][1]
    assert got[24][:2] == ("done", "")
    assert got[2048][0] == "failed" and got[2048][2] is None  # refused before step 1
    assert got[2048][1].startswith("OutOfMemory: needs ~")
    assert "over experiment.memory_limit_mb = 4" in got[2048][1]
    failed_events = [message for _, message in events(sweep.db, "failed")]
    assert len(failed_events) == 3 and all("\n" not in m for m in failed_events)


@pytest.mark.slow
def test_truncated_and_garbage_checkpoints_fall_back_with_a_reason(fault_sweep: Callable[..., Sweep],
                                                                   reap_sessions: list) -> None:
    sweep = fault_sweep(model={"width": [8, 16], "depth": 1}, experiment={"workers": 2},
                        train={"steps": 100, "checkpoint_every": 20, "eval_every": 50})
    proc = sweep.start("hold_checkpoint:60")  # park both runs with checkpoints 20 and 40 on disk
    reap_sessions.append(proc)
    wait_for(lambda: len(sweep.parked()) == 2, what="both workers parked at step 60")
    kill_everything(proc)

    truncated, garbage = sorted(p for p in sweep.run_checkpoints().iterdir())
    newest = truncated / "step_00000040.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    for path in garbage.glob("step_*.pt"):
        path.write_bytes(b"not a checkpoint at all")

    out = sweep.run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert_intact(sweep.db)
    assert_complete_without_duplicates(sweep.db)
    reasons = [message for _, message in events(sweep.db, "checkpoint")]
    assert any(m.startswith("step_00000040.pt unreadable") and m.endswith("using step_00000020.pt")
               for m in reasons), reasons
    assert any(m.startswith("step_00000020.pt unreadable") and m.endswith("using a fresh start")
               for m in reasons), reasons
    assert sorted(m.split(";")[0] for _, m in events(sweep.db, "resumed")) == ["from step 20"]
    assert (truncated / "step_00000040.pt.corrupt").exists()
    assert len(list(garbage.glob("step_*.pt.corrupt"))) == 2


@pytest.mark.parametrize("arch", ["mlp", "resmlp"])
def test_the_memory_estimate_counts_weights_gradients_optimizer_state_and_activations(arch: str) -> None:
    from scaletui.core.specs import ModelSpec
    from scaletui.engine.models import build_model, count_params, training_memory_bytes

    spec = ModelSpec(arch=arch, width=64, depth=2)
    params = count_params(build_model(spec, (40,), 10))

    def estimate(optimizer: str, batch: int) -> int:
        return training_memory_bytes(spec, (40,), 10, optimizer, batch)

    assert estimate("momentum", 32) - estimate("sgd", 32) == 4 * params  # one momentum buffer, float32
    assert estimate("adam", 32) - estimate("sgd", 32) == 8 * params  # two moments
    per_example = estimate("sgd", 33) - estimate("sgd", 32)
    assert per_example > 4 * (64 + 64 + 10)  # at least every hidden and output activation
    assert estimate("sgd", 32) == 4 * 2 * params + 32 * per_example
