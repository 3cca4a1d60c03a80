"""The runner's side of batched training: which runs become bundles, how a worker reports them, and
that a batched sweep writes the database a sweep of runs trained alone writes.

(Real processes killed and signalled are in tests/faults/test_batched_faults.py.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.config import load_sweep
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.services import runner
from scaletui.services.runner import Task, _WorkerStop, plan_tasks, run_sweep
from scaletui.services.schedule import largest_first
from scaletui.services.stop_requests import requests_folder, take_stop_requests

REL, ABS = 1e-4, 1e-5  # as tests/engine/test_batched.py: float reduction order only


def spec_of(seed: int = 0, width: int = 16, arch: str = "mlp", lr: float = 1e-3, **train: Any) -> RunSpec:
    dataset = "cifar10" if arch == "resnet" else "mnist1d"
    return RunSpec("t", DataSpec(dataset=dataset), ModelSpec(arch=arch, width=width), TrainSpec(lr=lr, **train), seed)


def members(tasks: list[Task]) -> list[list[int]]:
    return sorted(sorted(run_id for run_id, _ in task.members) for task in tasks)


# --------------------------------------------------------------------------- planning


def test_runs_that_differ_only_in_seed_lr_or_weight_decay_share_a_bundle() -> None:
    todo = [(1, spec_of(0)), (2, spec_of(1)), (3, spec_of(0, lr=1e-2)), (4, spec_of(0, weight_decay=0.1)),
            (5, spec_of(0, width=32)), (6, spec_of(1, width=32)), (7, spec_of(0, optimizer="sgd"))]
    assert members(plan_tasks(todo, workers=1, batch_runs=True)) == [[1, 2, 3, 4], [5, 6], [7]]


def test_batch_runs_false_and_resnet_train_every_run_alone() -> None:
    todo = [(1, spec_of(0)), (2, spec_of(1))]
    assert members(plan_tasks(todo, workers=1, batch_runs=False)) == [[1], [2]]
    resnets = [(1, spec_of(0, arch="resnet")), (2, spec_of(1, arch="resnet"))]
    assert members(plan_tasks(resnets, workers=1, batch_runs=True)) == [[1], [2]]


def test_runs_too_big_to_gain_from_batching_on_a_cpu_train_alone() -> None:
    """Width 256 at batch 128: batched matmuls that size are no faster, and the bundle's working set
    costs cache (measured 0.84-0.88x); width 128 and below gain."""
    wide = [(1, spec_of(0, width=256, batch_size=128, device="cpu")), (2, spec_of(1, width=256, batch_size=128,
                                                                                   device="cpu"))]
    assert members(plan_tasks(wide, workers=1, batch_runs=True)) == [[1], [2]]
    narrow = [(1, spec_of(0, width=128, batch_size=128, device="cpu")), (2, spec_of(1, width=128, batch_size=128,
                                                                                     device="cpu"))]
    assert members(plan_tasks(narrow, workers=1, batch_runs=True)) == [[1, 2]]


def test_a_bundle_is_capped_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    todo = [(i, spec_of(i)) for i in range(1, 8)]
    monkeypatch.setattr(runner, "bundle_capacity", lambda spec, workers: 3)
    assert members(plan_tasks(todo, workers=1, batch_runs=True)) == [[1, 4, 7], [2, 5], [3, 6]]


def test_bundle_capacity_follows_the_memory_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    from scaletui.engine.models import training_memory_bytes

    spec = spec_of(0, width=256)
    need = training_memory_bytes(spec.model, (40,), 10, spec.train.optimizer, spec.train.batch_size)
    monkeypatch.setattr(runner, "available_memory_bytes", lambda: 2 * 2 * 5 * need)  # half, per 2 workers: 5 runs
    assert runner.bundle_capacity(spec, workers=2) == 5
    monkeypatch.setattr(runner, "available_memory_bytes", lambda: 1)
    assert runner.bundle_capacity(spec, workers=2) == 1
    monkeypatch.setattr(runner, "available_memory_bytes", lambda: 2**50)
    assert runner.bundle_capacity(spec_of(0, width=8), workers=2) == runner.BUNDLE_MAX_RUNS


def test_bundles_are_split_so_no_worker_idles() -> None:
    todo = [(i, spec_of(i)) for i in range(1, 9)]
    assert members(plan_tasks(todo, workers=2, batch_runs=True)) == [[1, 3, 5, 7], [2, 4, 6, 8]]
    assert members(plan_tasks(todo[:2], workers=4, batch_runs=True)) == [[1], [2]]
    assert plan_tasks([], workers=2, batch_runs=True) == []


def test_a_bundle_costs_the_sum_of_its_runs_when_ordering() -> None:
    big, small = Task(1, spec_of(0, width=64)), Task(2, spec_of(0, width=16), tuple((i, spec_of(i, width=16))
                                                                                    for i in range(3, 20)))
    assert [t.run_id for t in largest_first([big, small])] == [2, 1]


# --------------------------------------------------------------------------- stopping one run of a bundle


class _Flag:
    value = 0


def test_sigusr1_with_a_request_stops_only_the_runs_it_names(tmp_path: Path) -> None:
    stop = _WorkerStop(_Flag(), os.getppid())
    stop.new_task(Task(1, spec_of(0), ((2, spec_of(1)), (3, spec_of(2)))))
    take_stop_requests(os.getpid())
    folder = requests_folder(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "2").touch()
    (folder / "99").touch()  # a run this worker does not train (it ended): ignored
    stop.stop_current_run(signal.SIGUSR1, None)
    assert [stop.member(run_id).is_set() for run_id in (1, 2, 3)] == [False, True, False]
    assert not list(folder.iterdir()), "requests are consumed"
    assert stop.is_set(), "the task as a whole has a run to stop"


def test_a_bare_sigusr1_stops_everything_the_worker_trains() -> None:
    stop = _WorkerStop(_Flag(), os.getppid())
    stop.new_task(Task(1, spec_of(0), ((2, spec_of(1)),)))
    take_stop_requests(os.getpid())
    stop.stop_current_run(signal.SIGUSR1, None)
    assert [stop.member(run_id).is_set() for run_id in (1, 2)] == [True, True]
    stop.new_task(Task(3, spec_of(0)))
    assert not stop.is_set(), "a new task starts unstopped"
    stop.stop_current_run(signal.SIGUSR1, None)  # arrives while the worker is between tasks
    stop.new_task(Task(4, spec_of(0)))
    assert not stop.is_set(), "a stop meant for an earlier task does not stop the next one"


# --------------------------------------------------------------------------- the database, batched or not


def _records(db: Path) -> dict[str, Any]:
    """Per run key: its row's outcome, its metrics and layer stats, the kinds of its events."""
    conn = sqlite3.connect(db)
    try:
        out: dict[str, Any] = {}
        for run_id, key, status, step, params, flops, loss in conn.execute(
                "SELECT id, key, status, step, params, flops_per_example, final_test_loss FROM runs"):
            metrics = conn.execute("SELECT step, key, value FROM metrics WHERE run_id = ? ORDER BY step, key",
                                   [run_id]).fetchall()
            layers = conn.execute("SELECT step, layer, name, grad_norm FROM layer_stats WHERE run_id = ? "
                                  "ORDER BY step, layer", [run_id]).fetchall()
            kinds = [k for (k,) in conn.execute("SELECT kind FROM events WHERE run_id = ? ORDER BY id", [run_id])]
            out[key] = {"row": (status, step, params, flops), "loss": loss, "metrics": metrics, "layers": layers,
                        "events": kinds}
        return out
    finally:
        conn.close()


@pytest.mark.slow
def test_a_batched_sweep_writes_what_an_unbatched_one_writes(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweeps = {}
    for mode in ("auto", False):
        path = make_sweep(f"{mode}.toml", experiment={"batch_runs": mode, "db": str(tmp_path / f"{mode}.db"),
                                                      "checkpoint_dir": str(tmp_path / f"{mode}-ckpt")},
                          model={"arch": "resmlp", "width": 16, "depth": 2, "norm": "layer", "dropout": 0.1},
                          train={"seeds": [0, 1, 2], "lr": [3e-3, 1e-2]})
        sweep = load_sweep(path)
        result = run_sweep(sweep)
        assert result.exit_code == 0
        sweeps[mode] = _records(sweep.db)
    batched, alone = sweeps["auto"], sweeps[False]
    assert sorted(batched) == sorted(alone) and len(batched) == 6
    for key, a in alone.items():
        b = batched[key]
        assert b["row"] == a["row"] and b["events"] == a["events"]
        assert b["loss"] == pytest.approx(a["loss"], rel=REL, abs=ABS)
        assert [m[:2] for m in b["metrics"]] == [m[:2] for m in a["metrics"]]
        assert [m[2] for m in b["metrics"]] == pytest.approx([m[2] for m in a["metrics"]], rel=REL, abs=ABS)
        assert [r[:3] for r in b["layers"]] == [r[:3] for r in a["layers"]]


@pytest.mark.slow
def test_a_bundle_member_that_fails_to_start_fails_the_bundle_not_the_worker(make_sweep: Callable[..., Path]) -> None:
    """The memory limit refuses every member before allocating: each run is failed with the reason."""
    sweep = load_sweep(make_sweep(experiment={"memory_limit_mb": 0.001, "workers": 1},
                                  model={"width": 8, "depth": 1}, train={"seeds": [0, 1]}))
    result = run_sweep(sweep)
    assert result.exit_code == 1 and set(result.statuses.values()) == {"failed"} and len(result.statuses) == 2
    conn = sqlite3.connect(sweep.db)
    errors = [e for (e,) in conn.execute("SELECT error FROM runs")]
    conn.close()
    assert all(e.startswith("OutOfMemory: needs ~") for e in errors), errors


def test_specs_with_another_device_do_not_share_a_bundle() -> None:
    a = spec_of(0)
    b = replace(spec_of(1), train=replace(spec_of(1).train, device="cpu"))
    assert members(plan_tasks([(1, a), (2, b)], workers=1, batch_runs=True)) == [[1], [2]]
