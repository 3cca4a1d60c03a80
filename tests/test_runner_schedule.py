"""The runner hands out the largest runs first, so no big run starts last and leaves a worker idle."""

from __future__ import annotations

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.services.runner import Task, estimated_cost, longest_first


def _task(run_id: int, width: int, depth: int, steps: int = 100) -> Task:
    spec = RunSpec("exp", DataSpec(), ModelSpec(width=width, depth=depth), TrainSpec(steps=steps))
    return Task(run_id, spec)


def test_cost_grows_with_width_depth_and_steps() -> None:
    base = estimated_cost(_task(1, 64, 2).spec)
    assert estimated_cost(_task(2, 128, 2).spec) == 4 * base
    assert estimated_cost(_task(3, 64, 4).spec) == 2 * base
    assert estimated_cost(_task(4, 64, 2, steps=200).spec) == 2 * base


def test_largest_first_and_ties_keep_file_order() -> None:
    tasks = [_task(1, 32, 1), _task(2, 256, 1), _task(3, 64, 8), _task(4, 32, 1), _task(5, 256, 1)]
    assert [t.run_id for t in longest_first(tasks)] == [2, 5, 3, 1, 4]
