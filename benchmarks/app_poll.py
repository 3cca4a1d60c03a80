"""How long one poll-and-apply tick of the app takes on a big database, and how much memory the app needs.

The database: 500 runs x 20,000 steps (train loss every step, test loss every 100 steps, per-layer
statistics every 25 steps; 490 finished, 5 running, 5 queued), about 10.6 million metric rows and
1.6 million layer rows. It is built once with direct batched inserts and cached under /tmp (one file per
schema version: a newer scaletui builds its own).

The measurement runs in a child process (so its peak RSS is the app's, not the builder's): the app
at 160x48 with its poll loop off; the benchmark itself plays the poll thread. Each tick appends 50
steps to each of the 5 running runs through StoreSink (as their workers would; not timed), then
times `Poller.poll()` (the worker thread's part) and `ScaleApp.apply_snapshot()` (the UI thread's
part), and separately the redraw that follows. Goals: tick (poll + apply) < 25 ms median, peak < 300 MB.

    .venv/bin/python benchmarks/app_poll.py [--ticks 40] [--rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


async def measure(db: Path, ticks: int) -> dict[str, float]:
    from scaletui.tui.app import ScaleApp

    app = ScaleApp(db, autopoll=False)
    with sqlite3.connect(db) as conn:
        running = conn.execute("SELECT id, depth, step FROM runs WHERE status = ? ORDER BY id",
                               [RunStatus.RUNNING.value]).fetchall()
    async with app.run_test(size=(160, 48)) as pilot:
        t0 = time.perf_counter()
        first = app.polling.poller.poll()
        app.apply_snapshot(first)
        first_load = time.perf_counter() - t0
        if first.error:  # measuring an app that shows an error line would measure nothing
            raise SystemExit(f"benchmark: {first.error}")
        await pilot.pause()
        app.main.query_one("RunsTable").move_cursor(row=app.main.query_one("RunsTable").get_row_index(str(running[0][0])))
        await pilot.pause()
        app.apply_snapshot(app.polling.poller.poll())  # the selected running run's whole series (once per selection)
        await pilot.pause()
        polls, applies, renders = [], [], []
        step = {run_id: s + 1 for run_id, _, s in running}
        for _ in range(ticks):
            for run_id, depth, _ in running:
                append(db, run_id, depth, step[run_id])
                step[run_id] += APPEND
            t0 = time.perf_counter()
            snap = app.polling.poller.poll()
            t1 = time.perf_counter()
            app.apply_snapshot(snap)
            t2 = time.perf_counter()
            await pilot.pause()
            t3 = time.perf_counter()
            polls.append(t1 - t0)
            applies.append(t2 - t1)
            renders.append(t3 - t2)
    ticks_s = [p + a for p, a in zip(polls, applies, strict=True)]
    return {"first_load_ms": first_load * 1e3, "poll_ms": statistics.median(polls) * 1e3,
            "apply_ms": statistics.median(applies) * 1e3, "tick_ms": statistics.median(ticks_s) * 1e3,
            "tick_p90_ms": sorted(ticks_s)[int(0.9 * len(ticks_s))] * 1e3,
            "render_ms": statistics.median(renders) * 1e3,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child, args.ticks))))
        return
    if args.rebuild or not CACHE.exists():
        t0 = time.perf_counter()
        build(CACHE)
        print(f"built {CACHE} ({CACHE.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    work = CACHE.with_name("app_poll_work.db")  # the ticks append rows: measure on a copy
    work.unlink(missing_ok=True)
    _copy(CACHE, work)
    out = subprocess.run([sys.executable, __file__, "--child", str(work), "--ticks", str(args.ticks)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    _print(result)


def _copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def _print(r: dict[str, float]) -> None:
    goal = {"tick_ms": 25.0, "peak_rss_mb": 300.0}
    print(f"{N_RUNS} runs x {STEPS:,} steps, {N_RUNNING} running runs appending {APPEND} steps per tick")
    print(f"{'measure':<34}{'value':>10}  goal")
    rows = [("first load (poll + apply, once)", "first_load_ms", "ms"),
            ("poll (worker thread), median", "poll_ms", "ms"),
            ("apply (UI thread), median", "apply_ms", "ms"), ("tick = poll + apply, median", "tick_ms", "ms"),
            ("tick, 90th percentile", "tick_p90_ms", "ms"), ("redraw after a tick, median", "render_ms", "ms"),
            ("peak RSS of the app process", "peak_rss_mb", "MB")]
    for label, key, unit in rows:
        target = f"< {goal[key]:g} {unit}" if key in goal else ""
        print(f"{label:<34}{r[key]:>8.1f} {unit}  {target}")


if __name__ == "__main__":
    main()
