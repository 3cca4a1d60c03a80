"""How fast the app redraws after a poll on a big database (frame time), and how much memory it needs.

The database: 500 runs x 20,000 steps (train loss every step, test loss every 100 steps, per-layer
statistics every 25 steps; 490 finished, 5 running, 5 queued), about 10.6 million metric rows and
1.6 million layer rows. It is built once with direct batched inserts and cached under /tmp (one file per
schema version: a newer scaletui builds its own).

Each terminal size is measured in its own child process (so its peak RSS is the app's, not the
builder's): the real app, headless (`App.run_test`), with its poll loop off; the benchmark plays the
poll thread. The user has selected a running run, so its curves and layers grow on every tick. Each
tick appends 50 steps to each of the 5 running runs through StoreSink (as their workers would; not
timed), times `Poller.poll()` (the worker thread's part), then posts the snapshot as the poll loop does
(`SnapshotReady`) and times the frame: from posting it to the end of the last paint it set off (the
screen's compositor rendering the dirty regions and writing them to the driver), with the process's CPU
time over the same span. `apply` is `ScaleApp.apply_snapshot` inside the frame (state and widgets; the
paint comes after). Goals: frame median < 50 ms at 160x48; tick (poll + apply) < 25 ms; peak < 300 MB.

`--baseline DIR` measures another checkout of scaletui (for example the commit before a change) the
same way in the same run, alternating with this one per size. `--profile PATH` writes a cProfile of the
frames per size (slower frames; for finding hot spots, not for the numbers).

    .venv/bin/python benchmarks/app_poll.py [--ticks 40] [--sizes 80x24,160x48] [--baseline DIR]
        [--profile PATH] [--rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The checkout measured: this one, or (in a child measuring a baseline) the one after --code.
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else REPO
sys.path.insert(0, str(CODE))

from scaletui.core.records import LayerStats, MetricRecord  # noqa: E402
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec  # noqa: E402
from scaletui.core.vocabulary import LossRule, RunStatus  # noqa: E402
from scaletui.store.schema import SCHEMA_VERSION  # noqa: E402
from scaletui.store.writer import Store, StoreSink  # noqa: E402

CACHE = Path(f"/tmp/scaletui-bench/app_poll-v{SCHEMA_VERSION}.db")
N_RUNS, STEPS, EVAL_EVERY, LOG_EVERY = 500, 20_000, 100, 25
N_RUNNING, N_QUEUED, APPEND = 5, 5, 50
WIDTHS = (16, 32, 64, 128, 256)
DEPTHS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20)


def curve(run: int, step: int) -> float:
    return 0.5 + 2.0 * math.exp(-step / 4000) + 0.01 * math.sin(step + run)


def sweep_specs() -> list[RunSpec]:
    base = RunSpec("bench", DataSpec(), ModelSpec(), TrainSpec(steps=STEPS, eval_every=EVAL_EVERY, log_every=LOG_EVERY))
    specs = [replace(base, model=replace(base.model, width=w, depth=d), seed=s)
             for s in range(N_RUNS // (len(WIDTHS) * len(DEPTHS))) for w in WIDTHS for d in DEPTHS]
    return specs[:N_RUNS]


def build(path: Path) -> None:
    """Register the runs through Store, then bulk-insert their records with executemany."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    specs = sweep_specs()
    with Store(path) as store:
        experiment = store.upsert_experiment("bench", None, None, LossRule.FINAL)
        registered = store.register_runs(experiment, specs, fresh=False)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    n_unfinished = N_RUNNING + N_QUEUED
    for i, (run_id, spec) in enumerate(registered):
        if i >= len(registered) - N_QUEUED:
            continue
        last = STEPS if i < len(registered) - n_unfinished else STEPS // 2
        _insert_records(conn, run_id, spec.model.depth, last)
        _finish_row(conn, run_id, spec, last, running=i >= len(registered) - n_unfinished)
    conn.commit()
    conn.close()


def _insert_records(conn: sqlite3.Connection, run_id: int, depth: int, last: int) -> None:
    with conn:
        conn.executemany("INSERT INTO metrics VALUES (?, ?, 'train_loss', ?)",
                         ((run_id, s, curve(run_id, s)) for s in range(last + 1)))
        conn.executemany("INSERT INTO metrics VALUES (?, ?, 'test_loss', ?)",
                         ((run_id, s, curve(run_id, s) + 0.05) for s in range(0, last + 1, EVAL_EVERY)))
        conn.executemany("INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                         ((run_id, s, layer, f"layer.{layer}", 0.1 * math.exp(-s / STEPS), 3.0, 1e-3)
                          for s in range(0, last + 1, LOG_EVERY) for layer in range(depth + 1)))


def _finish_row(conn: sqlite3.Connection, run_id: int, spec: RunSpec, last: int, *, running: bool) -> None:
    final = curve(run_id, last) + 0.05
    rev = conn.execute("SELECT MAX(rev) + 1 FROM runs").fetchone()[0]
    conn.execute(
        "UPDATE runs SET status = ?, step = ?, params = ?, pid = ?, host = 'elsewhere', started_at = ?,"
        " finished_at = ?, final_train_loss = ?, final_test_loss = ?, best_test_loss = ?, rev = ? WHERE id = ?",
        [(RunStatus.RUNNING if running else RunStatus.DONE).value, last, 1000 * spec.model.width * spec.model.depth, 1,
         "2026-01-01T00:00:00.000Z", None if running else "2026-01-01T00:10:00.000Z", None if running else final - 0.05,
         None if running else final, None if running else final, rev, run_id])


def append(db: Path, run_id: int, depth: int, first: int) -> None:
    """What a worker's flush does: APPEND more steps of one run through StoreSink."""
    with StoreSink(db, run_id) as sink:
        steps = range(first, first + APPEND)
        sink.metrics([MetricRecord(s, "train_loss", curve(run_id, s)) for s in steps]
                     + [MetricRecord(s, "test_loss", curve(run_id, s)) for s in steps if s % EVAL_EVERY == 0])
        sink.layer_stats([LayerStats(s, layer, f"layer.{layer}", 0.05, 3.0, 1e-3, 0)
                          for s in steps if s % LOG_EVERY == 0 for layer in range(depth + 1)])


class FrameClock:
    """When the main screen last finished painting: its `_compositor_refresh` (the compositor's render of
    the dirty regions and the write to the terminal driver) is wrapped, so the end of every real paint is
    seen, whether the screen's update timer or a layout triggered it."""

    def __init__(self, screen: Any) -> None:
        self.paints = 0
        self.last_end = 0.0
        self.last_cpu = 0.0
        paint = screen._compositor_refresh

        def timed_paint() -> None:
            paint()
            self.paints += 1
            self.last_end, self.last_cpu = time.perf_counter(), time.process_time()

        screen._compositor_refresh = timed_paint


def timed_apply(app: Any) -> list[float]:
    """Times every `apply_snapshot` of `app` (the message handler calls it through the instance)."""
    durations: list[float] = []
    apply = app.apply_snapshot

    def timed(snapshot: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return apply(snapshot)
        finally:
            durations.append(time.perf_counter() - t0)

    app.apply_snapshot = timed
    return durations


async def settle(app: Any, pilot: Any) -> None:
    """Until the posted snapshot was applied and everything it set off (layout, resizes, the paints after
    them) is done: `pilot.pause` waits for the screen's queued messages and for the process to go idle."""
    while not app.polling.applied.is_set():
        await asyncio.sleep(0.001)
    await pilot.pause()
    await pilot.pause()


async def measure(db: Path, ticks: int, size: tuple[int, int], profile: Path | None) -> dict[str, Any]:
    from scaletui.tui.app import ScaleApp
    from scaletui.tui.messages import SnapshotReady

    app = ScaleApp(db, autopoll=False)
    with sqlite3.connect(db) as conn:
        running = conn.execute("SELECT id, depth, step FROM runs WHERE status = ? ORDER BY id",
                               [RunStatus.RUNNING.value]).fetchall()
    async with app.run_test(size=size) as pilot:
        t0 = time.perf_counter()
        first = app.polling.poller.poll()
        app.apply_snapshot(first)
        first_load = time.perf_counter() - t0
        if first.error:  # measuring an app that shows an error line would measure nothing
            raise SystemExit(f"benchmark: {first.error}")
        await pilot.pause()
        # by its CSS type name, so a baseline checkout (--code) is measured wherever its class lives
        table: Any = app.main.query_one("RunsTable")
        table.move_cursor(row=table.get_row_index(str(running[0][0])))  # the user selects a running run
        await pilot.pause()
        app.apply_snapshot(app.polling.poller.poll())  # the selected running run's whole series (once per selection)
        await pilot.pause()
        clock = FrameClock(app.main)
        applies = timed_apply(app)
        profiler = cProfile.Profile() if profile else None
        polls, frames, cpus, paints = [], [], [], []
        step = {run_id: s + 1 for run_id, _, s in running}
        for _ in range(ticks):
            for run_id, depth, _ in running:
                append(db, run_id, depth, step[run_id])
                step[run_id] += APPEND
            t0 = time.perf_counter()
            snap = app.polling.poller.poll()  # the poll thread's part (off the UI thread in the app)
            polls.append(time.perf_counter() - t0)
            await pilot.pause()  # nothing pending before the snapshot arrives
            painted = clock.paints
            app.polling.applied.clear()
            if profiler:
                profiler.enable()
            arrived, cpu0 = time.perf_counter(), time.process_time()
            app.post_message(SnapshotReady(snap))  # as the poll loop delivers it
            await settle(app, pilot)
            if profiler:
                profiler.disable()
            if clock.paints == painted:  # nothing changed on screen: the frame is the handler alone
                raise SystemExit("benchmark: a tick with five running runs advanced painted nothing")
            frames.append(clock.last_end - arrived)
            cpus.append(clock.last_cpu - cpu0)
            paints.append(clock.paints - painted)
    if profiler and profile:
        profiler.dump_stats(profile)
    ticks_s = [p + a for p, a in zip(polls, applies, strict=True)]
    return {"size": f"{size[0]}x{size[1]}", "first_load_ms": first_load * 1e3,
            "poll_ms": statistics.median(polls) * 1e3, "apply_ms": statistics.median(applies) * 1e3,
            "tick_ms": statistics.median(ticks_s) * 1e3, "frame_ms": statistics.median(frames) * 1e3,
            "frame_p90_ms": _p90(frames) * 1e3, "frame_cpu_ms": statistics.median(cpus) * 1e3,
            "paints": statistics.median(paints),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--sizes", default="80x24,160x48", help="terminal sizes, comma-separated")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the frames to PATH.SIZE.prof")
    parser.add_argument("--baseline", type=Path, help="another scaletui checkout, measured alternately in this run")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    if args.child:
        width, height = sizes[0]
        tag = "baseline." if CODE != REPO else ""
        profile = args.profile.with_suffix(f".{tag}{width}x{height}.prof") if args.profile else None
        print(json.dumps(asyncio.run(measure(args.child, args.ticks, (width, height), profile))))
        return
    if args.rebuild or not CACHE.exists():
        t0 = time.perf_counter()
        build(CACHE)
        print(f"built {CACHE} ({CACHE.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    work = CACHE.with_name("app_poll_work.db")  # the ticks append rows: measure on a copy
    work.unlink(missing_ok=True)
    _copy(CACHE, work)
    print(f"{N_RUNS} runs x {STEPS:,} steps, {N_RUNNING} running runs appending {APPEND} steps per tick, "
          f"{args.ticks} ticks per size; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    trees = [("baseline " + str(args.baseline), args.baseline.resolve())] if args.baseline else []
    trees.append(("this checkout", REPO))
    for width, height in sizes:
        for name, tree in trees:
            extra = ["--profile", str(args.profile)] if args.profile else []
            out = subprocess.run([sys.executable, __file__, "--child", str(work), "--ticks", str(args.ticks),
                                  "--sizes", f"{width}x{height}", "--code", str(tree), *extra],
                                 capture_output=True, text=True, check=True)
            _print(json.loads(out.stdout.strip().splitlines()[-1]), name if args.baseline else "")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def _print(r: dict[str, Any], tree: str) -> None:
    goal = {"frame_ms": 50.0, "tick_ms": 25.0, "peak_rss_mb": 300.0}
    print(f"at {r['size']}" + (f", {tree}" if tree else "") + ":")
    rows = [("first load (poll + apply, once)", "first_load_ms", "ms"),
            ("poll (worker thread), median", "poll_ms", "ms"),
            ("apply (UI thread), median", "apply_ms", "ms"), ("tick = poll + apply, median", "tick_ms", "ms"),
            ("frame: snapshot to painted, median", "frame_ms", "ms"),
            ("frame, 90th percentile", "frame_p90_ms", "ms"),
            ("frame CPU time (process), median", "frame_cpu_ms", "ms"),
            ("paints per frame, median", "paints", ""),
            ("peak RSS of the app process", "peak_rss_mb", "MB")]
    for label, key, unit in rows:
        target = f"< {goal[key]:g} {unit}" if key in goal else ""
        print(f"  {label:<36}{r[key]:>8.1f} {unit:<2}  {target}")


if __name__ == "__main__":
    main()
