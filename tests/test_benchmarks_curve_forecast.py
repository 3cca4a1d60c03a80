"""benchmarks/curve_forecast.py: the `other seeds` column and the replay under another order (pure logic on
synthetic runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from curve_forecast import concurrency, other_seeds_error, reschedule, tasks_of

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec


def run(params: float, depth: int, final: float | None, steps: int = 100) -> dict:
    evals = {50: 3.0} if final is None else {50: 3.0, steps: final}
    return {"params": params, "depth": depth, "steps": steps, "evals": evals}


def test_a_run_is_predicted_by_the_log_mean_of_its_sizes_other_seeds() -> None:
    me = run(1000, 2, 2.5)
    runs = [me, run(1000, 2, 1.0), run(1000, 2, 4.0)]  # log mean 2.0
    assert other_seeds_error(me, runs) == pytest.approx(abs(2.0 / 2.5 - 1))


def test_other_sizes_plans_and_unfinished_seeds_do_not_count() -> None:
    me = run(1000, 2, 2.0)
    runs = [me, run(1000, 2, 3.0), run(2000, 2, 0.1), run(1000, 3, 0.1), run(1000, 2, 0.1, steps=200),
            run(1000, 2, None)]
    assert other_seeds_error(me, runs) == pytest.approx(0.5)


def test_a_size_with_one_seed_has_no_figure() -> None:
    me = run(1000, 2, 2.0)
    assert other_seeds_error(me, [me, run(2000, 2, 1.0)]) is None


# --------------------------------------------------------------------------- replaying under another order


def timed(run_id: int, width: int, start: float, end: float, seed: int = 0) -> dict:
    spec = RunSpec("exp", DataSpec(), ModelSpec(width=width, depth=2), TrainSpec(steps=100), seed=seed)
    return {"id": run_id, "live": SimpleNamespace(spec=spec), "start": start, "end": end}


def test_seeds_of_one_size_that_started_together_are_one_task() -> None:
    bundle = [timed(1, 64, 0.0, 10.0, seed=0), timed(2, 64, 0.2, 10.0, seed=1)]
    alone = [timed(3, 32, 0.0, 4.0), timed(4, 32, 4.0, 8.0, seed=1)]  # the same size, one after the other
    tasks = tasks_of([*alone, *bundle])
    assert sorted(sorted(r["id"] for r in t) for t in tasks) == [[1, 2], [3], [4]]
    assert concurrency(tasks) == 2


def test_a_replayed_order_keeps_each_tasks_duration_and_starts_it_when_a_worker_is_free() -> None:
    # trained largest first on two workers: 64 on one, 32 then 16 on the other
    runs = [timed(1, 64, 0.0, 10.0), timed(2, 32, 0.0, 4.0), timed(3, 16, 4.0, 5.0)]
    moved, span = reschedule(runs, "ends-first")  # 16, the smallest width, right after 64, then 32
    times = {r["id"]: (r["start"], r["end"]) for r in moved}
    assert times == {1: (0.0, 10.0), 3: (0.0, 1.0), 2: (1.0, 5.0)}
    assert span == 10.0
    assert reschedule(runs, "largest-first")[0] == runs
