"""How well does `pred. final` predict a run's final test loss from the first 10 / 30 / 50% of its steps?

Replays a finished sweep in the order it trained: for each run, the moment it had done a fraction f of
its steps is placed between its started_at and finished_at; the runs of the same training plan that had
finished by then are what the live monitor would have learned from (analysis.curve_forecast), and the
run's loss at its last evaluation at or before f is what it would have seen (before its first evaluation,
the mean train loss of its last complete log window: services.curve_forecasts.anchor_of), with its peers'
losses at that step (runs of its size and plan that had reached it by then, their progress likewise
placed between their start and finish: a bundle's members reach it together). Reported per depth: the
median relative error of the predicted final test loss, how many runs had a prediction (the first runs
of a sweep have no finished runs to learn from), the coverage of the 90% band, and what the predictions
started from (test_loss: an evaluation; train_loss: a log window), and `other seeds`: the median error of
predicting the same runs' final loss by the (log) mean final loss of the other seeds of their size, what
is left when the law and the size's place in it are known exactly and the seed's own luck is not. It
says how much of a depth's error is the seeds' rather than the law's (a forecast can beat it a little:
a seed's deviation at step t carries over to its end with a slope of 0.1-0.2).

    .venv/bin/python benchmarks/curve_forecast.py --db runs/scaletui.db [--experiment NAME] [--order ORDER]

`--order largest-first` or `ends-first` replays the sweep as if its tasks had started in that order
(services/schedule.py) instead of the order they trained in: each task (a run, or a bundle's runs, which
start together) keeps its recorded duration and starts when a worker is free, on as many workers as ran
at once. The makespan of each order, so simulated, is printed first, so the schedule's cost in throughput
is measured side by side on the same tasks.

The database is only read. The default sweep's (`scaletui run --headless`) is the one the issue's goal
is stated on: median error <= 3% from the first 30% of steps, coverage near 90%.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from scaletui.analysis.curve_forecast import Finished, forecast_final  # noqa: E402
from scaletui.core.vocabulary import (  # noqa: E402
    OK,
    TEST_LOSS_METRIC,
    TRAIN_LOSS_METRIC,
)
from scaletui.services.curve_forecasts import LiveRun, anchor_of, first_evaluation  # noqa: E402
from scaletui.services.runner import Task  # noqa: E402
from scaletui.services.schedule import ends_first, largest_first  # noqa: E402
from scaletui.store import Reader  # noqa: E402

FRACTIONS = (0.1, 0.3, 0.5)
AS_TRAINED = "as-trained"
ORDERS = {"largest-first": largest_first, "ends-first": ends_first}


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def load(db: Path, experiment: str | None) -> list[dict]:
    """Every finished run: size, steps, start/finish time, test-loss evaluations (step -> loss), and its
    train losses up to its first evaluation with its log cadence (for the train-loss anchor)."""
    with Reader(db) as reader:
        runs = [r for r in reader.runs(experiment) if r.status in OK and r.started_at and r.finished_at
                and r.params and r.depth and r.steps]
        out = []
        for r in runs:
            spec = reader.run_spec(r.id)
            if spec is None:  # the monitor forecasts only runs whose configuration it can read
                continue
            first = first_evaluation(spec)
            evals = {p.step: p.value for p in reader.metric_series(r.id, TEST_LOSS_METRIC)}
            train = {p.step: p.value for p in reader.metrics_since(r.id, TRAIN_LOSS_METRIC, 0, up_to=first)}
            out.append({"id": r.id, "live": LiveRun(r, spec, evals, train), "params": float(r.params or 0),
                        "depth": int(r.depth or 0), "steps": int(r.steps or 0), "start": _seconds(r.started_at or ""),
                        "end": _seconds(r.finished_at or ""), "evals": evals})
        return out


def tasks_of(runs: list[dict]) -> list[list[dict]]:
    """The sweep's tasks as they trained: runs of one point (seeds of one size) that started within a
    second of each other were one bundle."""
    tasks: list[list[dict]] = []
    for run in sorted(runs, key=lambda r: r["start"]):
        task = next((t for t in reversed(tasks) if t[0]["live"].spec.point_key == run["live"].spec.point_key
                     and run["start"] - t[0]["start"] < 1.0), None)
        if task is None:
            tasks.append([run])
        else:
            task.append(run)
    return tasks


def concurrency(tasks: list[list[dict]]) -> int:
    """How many tasks ran at once at most: the sweep's workers."""
    edges = sorted([(t[0]["start"], 1) for t in tasks] + [(max(r["end"] for r in t), -1) for t in tasks])
    level = peak = 0
    for _, step in edges:  # a finish and a start at the same instant: the finish first (-1 sorts first)
        level += step
        peak = max(peak, level)
    return peak


def reschedule(runs: list[dict], order: str) -> tuple[list[dict], float]:
    """The runs with the start and finish times they would have had with their tasks started in `order`
    (ORDERS), each task keeping its duration, on as many workers as ran at once; and that makespan."""
    tasks = tasks_of(runs)
    members_of = {t[0]["id"]: t for t in tasks}  # a task by its first run's id, as `Task.run_id` names it
    as_tasks = [Task(t[0]["id"], t[0]["live"].spec, tuple((r["id"], r["live"].spec) for r in t[1:])) for t in tasks]
    origin = min(r["start"] for r in runs)
    free = [origin] * concurrency(tasks)
    moved: list[dict] = []
    for task in ORDERS[order](as_tasks):
        members = members_of[task.run_id]
        began, ended = min(r["start"] for r in members), max(r["end"] for r in members)
        worker = min(range(len(free)), key=free.__getitem__)
        start = free[worker]
        free[worker] = start + ended - began
        moved.extend({**r, "start": r["start"] - began + start, "end": r["end"] - began + start} for r in members)
    return moved, max(free) - origin


def _same_size(a: dict, b: dict) -> bool:
    return (a["params"], a["depth"], a["steps"]) == (b["params"], b["depth"], b["steps"])


def anchor(run: dict, fraction: float) -> tuple[str, int] | None:
    """What the live monitor starts from after `fraction` of the run: services.curve_forecasts.anchor_of
    on what the run had logged by then."""
    live, limit = run["live"], int(fraction * run["steps"])
    def upto(series: Mapping[int, float]) -> dict[int, float]:
        return {s: v for s, v in series.items() if s <= limit}
    return anchor_of(replace(live, test=upto(live.test), train=upto(live.train)))


def other_seeds_error(run: dict, runs: list[dict]) -> float | None:
    """|error| of the run's final loss predicted by the log mean of its size's other seeds' final losses;
    None when its size has no other finished seed."""
    others = [o["evals"][o["steps"]] for o in runs if o is not run and _same_size(o, run) and o["steps"] in o["evals"]]
    if not others:
        return None
    return abs(math.exp(float(np.mean(np.log(others)))) / run["evals"][run["steps"]] - 1)


Outcome = tuple[float, bool, float | None]  # relative error, truth inside the band, other_seeds_error


def replay(runs: list[dict], fraction: float, level: float) -> tuple[dict[int, list[Outcome]], set[str]]:
    """depth -> [(relative error, truth inside the band, other_seeds_error)] for every run that had a prediction,
    and the anchors the predictions started from."""
    out: dict[int, list[Outcome]] = defaultdict(list)
    kinds: set[str] = set()
    for run in runs:
        start = anchor(run, fraction)
        if start is None or run["steps"] not in run["evals"]:
            continue
        kind, step = start
        now = run["live"].at(kind, step)
        moment = run["start"] + fraction * (run["end"] - run["start"])
        refs = [Finished(o["params"], o["depth"], v, o["evals"][o["steps"]]) for o in runs
                if o["end"] < moment and o["steps"] == run["steps"] and o["steps"] in o["evals"]
                and (v := o["live"].at(kind, step)) is not None]
        peers = [v for o in runs if o is not run and _same_size(o, run)
                 and o["start"] + step / o["steps"] * (o["end"] - o["start"]) <= moment
                 and (v := o["live"].at(kind, step)) is not None]
        forecast = None if now is None else forecast_final(now, run["params"], run["depth"], refs, level, peers)
        if forecast is None:
            continue
        kinds.add(kind)
        truth = run["evals"][run["steps"]]
        out[run["depth"]].append((abs(forecast.predicted / truth - 1), forecast.lo <= truth <= forecast.hi,
                                  other_seeds_error(run, runs)))
    return out, kinds


def _summary(outcomes: list[Outcome]) -> str:
    """Median error, band coverage and median `other_seeds_error` of some predictions, as the table prints them."""
    others = [o for _, _, o in outcomes if o is not None]
    other = f"{np.median(others):>11.2%}" if others else f"{'-':>11}"
    return f"{np.median([e for e, _, _ in outcomes]):>10.2%} {np.mean([c for _, c, _ in outcomes]):>8.0%} {other}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--experiment")
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--order", choices=[AS_TRAINED, *ORDERS], default=AS_TRAINED,
                        help="replay the runs as trained, or as if their tasks had started in this order")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = load(args.db, args.experiment)
    if not runs:
        sys.exit(f"{args.db}: no finished runs to replay")
    print(f"{args.db}: {len(runs)} finished runs; {args.level:.0%} bands; replayed {args.order}")
    trained = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    spans = {order: reschedule(runs, order)[1] for order in ORDERS}
    print(f"makespan: {trained:.0f} s as trained on {concurrency(tasks_of(runs))} workers; simulated from the "
          f"tasks' durations: " + ", ".join(f"{order} {span:.0f} s" for order, span in spans.items()))
    if args.order != AS_TRAINED:
        runs = reschedule(runs, args.order)[0]
    print(f"{'from':>5} {'depth':>5} {'runs':>9} {'median err':>10} {'coverage':>8} {'other seeds':>11}  anchor")
    for fraction in FRACTIONS:
        result, kinds = replay(runs, fraction, args.level)
        every = [e for d in result.values() for e in d]
        for depth in sorted(result):
            total = sum(1 for r in runs if r["depth"] == depth)
            print(f"{fraction:>5.0%} {depth:>5} {len(result[depth]):>4}/{total:<4} {_summary(result[depth])}"
                  f"  {'/'.join(sorted(kinds))}")
        if every:
            print(f"{fraction:>5.0%} {'all':>5} {len(every):>4}/{len(runs):<4} {_summary(every)}")
        else:
            print(f"{fraction:>5.0%}: no run had a train-loss window or an evaluation, and finished runs to learn from")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
