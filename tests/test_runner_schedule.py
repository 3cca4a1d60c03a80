"""The order a sweep's tasks start in: largest first, each width ladder's smallest size right after its largest."""

from __future__ import annotations

from dataclasses import replace

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.services.runner import Task
from scaletui.services.schedule import ends_first, estimated_cost, ladder_key, largest_first


def _spec(width: int, depth: int, steps: int = 100, seed: int = 0, lr: float = 1e-3) -> RunSpec:
    return RunSpec("exp", DataSpec(), ModelSpec(width=width, depth=depth), TrainSpec(steps=steps, lr=lr), seed=seed)


def _task(run_id: int, width: int, depth: int, steps: int = 100) -> Task:
    return Task(run_id, _spec(width, depth, steps))


def _ids(tasks: list[Task]) -> list[int]:
    return [t.run_id for t in tasks]


def test_cost_grows_with_width_depth_and_steps() -> None:
    base = estimated_cost(_task(1, 64, 2).spec)
    assert estimated_cost(_task(2, 128, 2).spec) == 4 * base
    assert estimated_cost(_task(3, 64, 4).spec) == 2 * base
    assert estimated_cost(_task(4, 64, 2, steps=200).spec) == 2 * base


def test_largest_first_and_ties_keep_file_order() -> None:
    tasks = [_task(1, 32, 1), _task(2, 256, 1), _task(3, 64, 8), _task(4, 32, 1), _task(5, 256, 1)]
    assert _ids(largest_first(tasks)) == [2, 5, 3, 1, 4]


def test_a_ladder_is_every_width_and_seed_of_one_configuration() -> None:
    assert ladder_key(_spec(48, 2, seed=0)) == ladder_key(_spec(160, 2, seed=7))
    assert ladder_key(_spec(48, 2)) != ladder_key(_spec(48, 3))
    assert ladder_key(_spec(48, 2)) != ladder_key(_spec(48, 2, steps=200))
    assert ladder_key(_spec(48, 2)) != ladder_key(_spec(48, 2, lr=3e-3))
    # the curve forecaster's grouping: logging cadence is not part of the plan
    chatty = _spec(160, 2)
    chatty = replace(chatty, train=replace(chatty.train, log_every=5))
    assert ladder_key(chatty) == ladder_key(_spec(48, 2))


def test_each_ladders_smallest_width_starts_right_after_its_largest() -> None:
    # two depths x three widths: largest first would start both width-16 runs last
    tasks = [_task(i, w, d) for i, (w, d) in enumerate([(16, 2), (32, 2), (64, 2), (16, 4), (32, 4), (64, 4)], 1)]
    assert _ids(largest_first(tasks)) == [6, 3, 5, 2, 4, 1]
    assert _ids(ends_first(tasks)) == [6, 4, 3, 1, 5, 2]


def test_every_task_of_the_smallest_width_moves_and_follows_the_first_of_the_largest() -> None:
    # width 64 trains as separate seeds, width 16 as two bundles: both bundles follow the first width-64 seed
    big = [Task(i, _spec(64, 2, seed=i)) for i in (1, 2)]
    small = [Task(3, _spec(16, 2, seed=0), ((4, _spec(16, 2, seed=1)),)), Task(5, _spec(16, 2, seed=2))]
    middle = [Task(6, _spec(32, 2))]
    assert _ids(ends_first([*small, *middle, *big])) == [1, 3, 5, 2, 6]


def test_a_ladder_of_one_width_and_a_bundle_across_ladders_keep_their_place() -> None:
    lone = Task(1, _spec(64, 8))
    # a bundle of two learning rates at the ladder's smallest width belongs to no one ladder: it stays
    mixed = Task(2, _spec(8, 2), ((3, replace(_spec(8, 2), train=TrainSpec(steps=100, lr=3e-3))),))
    ladder = [Task(4, _spec(64, 2)), Task(5, _spec(8, 2))]
    assert _ids(largest_first([lone, mixed, *ladder])) == [1, 4, 2, 5]
    assert _ids(ends_first([lone, mixed, *ladder])) == [1, 4, 5, 2]
