"""The order in which a sweep's tasks start: largest first, except that each size ladder's smallest size
starts right after the first task of its largest.

Largest first (LPT scheduling) keeps the big runs from starting last and leaving a worker idle while one
straggler finishes, which cost ~40% of a 2-worker sweep's throughput in benchmarks/throughput.py.

Why a ladder's smallest size is pulled forward. A ladder is the runs of one training plan and depth,
which differ only in width (and seed, device, logging cadence): one depth of the default sweep. Trained
strictly largest first, every size of a ladder is forecast (`pred. final`, analysis/curve_forecast.py) by
extrapolating the ladder's law down from the bigger sizes already finished, and a law that bends misses
there: on seven runs of the default sweep, depth 6's width 96 was predicted from widths 128 and 160
alone, 4.6-6.1% low on four of them. With the smallest size trained second, every later size lies between
two finished ones and its forecast interpolates; `train.stop_when_hopeless` gets a finished smaller run
to compare with inside the same sweep. The smallest sizes are cheap (4% of the default sweep's compute),
so the sweep is not slower: benchmarks/curve_forecast.py replays a sweep under either order from its
recorded task durations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol, TypeVar

from scaletui.core.plans import plan_hash, plan_of
from scaletui.core.specs import RunSpec

__all__ = ["ends_first", "estimated_cost", "ladder_key", "largest_first"]


class Scheduled(Protocol):
    """A task: one run or a bundle of runs, (run id, spec) each."""

    @property
    def members(self) -> tuple[tuple[int, RunSpec], ...]: ...


T = TypeVar("T", bound=Scheduled)


def estimated_cost(spec: RunSpec) -> float:
    """A relative training cost for ordering runs: examples seen x width^2 x depth (no torch needed).

    Dense layers cost ~width^2 per example and residual/conv stages scale the same way in width
    and depth, so this ranks runs of one sweep correctly enough for scheduling.
    """
    return float(spec.train.steps) * spec.train.batch_size * spec.model.width**2 * spec.model.depth


def task_cost(task: Scheduled) -> float:
    """A bundle costs the sum of its runs."""
    return sum(estimated_cost(spec) for _, spec in task.members)


def ladder_key(spec: RunSpec) -> tuple[str, int]:
    """What a run shares with the other sizes of its ladder: its training plan (core.plans, the runs the
    curve forecaster learns from) and its depth."""
    return plan_hash(plan_of(spec, None)), spec.model.depth


def largest_first(tasks: Sequence[T]) -> list[T]:
    """Largest tasks first; ties keep the sweep file's order."""
    return sorted(tasks, key=lambda task: -task_cost(task))


def ends_first(tasks: Sequence[T]) -> list[T]:
    """`largest_first`, with the tasks of each ladder's smallest width moved to just after the first task
    of that ladder (its largest width). A ladder of one width, or a task whose runs span ladders, stays
    where largest first puts it."""
    ordered = largest_first(tasks)
    ladders: dict[tuple[str, int], list[T]] = defaultdict(list)
    for task in ordered:
        keys = {ladder_key(spec) for _, spec in task.members}
        if len(keys) == 1:
            ladders[keys.pop()].append(task)
    follows: dict[int, list[T]] = {}  # id of a ladder's first task -> its smallest width's tasks
    moved: set[int] = set()
    for ladder in ladders.values():
        widths = {task.members[0][1].model.width for task in ladder}
        if len(widths) < 2:
            continue
        smallest = [task for task in ladder if task.members[0][1].model.width == min(widths)]
        follows[id(ladder[0])] = smallest
        moved.update(id(task) for task in smallest)
    out: list[T] = []
    for task in ordered:
        if id(task) in moved:
            continue
        out.append(task)
        out.extend(follows.get(id(task), []))
    return out
