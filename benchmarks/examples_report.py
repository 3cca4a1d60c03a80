"""Run one sweep file headless into its own database and print the numbers its header promises.

The README's "Reproducing the notes" quotes measured numbers for the default sweep and for every
example; this script is how they were measured, so anyone can re-measure them on their machine:

    python benchmarks/examples_report.py experiments.toml
    python benchmarks/examples_report.py examples/depth_dropout.toml --db /tmp/ex/depth_dropout.db
    python benchmarks/examples_report.py examples/seeds.toml --db runs/seeds.db --no-run   # report only

What it prints (each section only where the sweep has the axes it needs):
- wall time of `scaletui run --headless` and the load average before and after: the machine is
  often shared, and contention inflates wall time;
- one row per sweep point (the seeds averaged): mean +- sd of the final test loss, the best
  test loss and its step, the final train loss and train-test gap, test accuracy, diverged
  seeds, and at the first logged step the first layer's gradient norm and its ratio to the last
  layer's (gradient attenuation in early layers);
- monotonicity of the loss (under the sweep's loss_rule) in width within each depth and in
  depth within each width, judged by the project's own `check_monotone` against the seed
  spread, and how often single seeds would show a step of the trend backwards;
- the scaling law, through the product's own `services.fitting` (the form chosen by held-out error,
  every form's held-out error, the largest sizes held out point by point): L(params) per setting of the
  sweep's other axes, or L(N, D) when the sweep varies the training-set size.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.checks import check_monotone
from scaletui.analysis.heldout import HeldOutReport
from scaletui.analysis.solve import fit_law
from scaletui.core.config import ConfigError, Sweep, load_sweep
from scaletui.services.fitting import FitInputError, FitSpec, fit_experiment

OK_STATUSES = ("done", "early_stopped")
EXIT_SOME_RUNS_FAILED = 1  # `scaletui run`: finished, but not every run ended done
Row = dict[str, Any]
# "The loss of a run" under the sweep's loss_rule, as the run_summary view defines it.
LOSS_COLUMN = {"final": "final_test_loss", "best": "best_test_loss", "smoothed": "smoothed_test_loss"}


# ----------------------------------------------------------------------------- running


def run_headless(sweep_file: Path, db: Path) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """Train the sweep from scratch (a new database never resumes another's checkpoints); return (wall
    seconds, load average before, load average after)."""
    before = os.getloadavg()
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "scaletui", "run", "--headless", str(sweep_file), "--db", str(db)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, EXIT_SOME_RUNS_FAILED):  # the headless run's own last lines say why
        sys.exit(f"scaletui run failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if done.returncode == EXIT_SOME_RUNS_FAILED:  # diverged runs are results here (lr_width shows them)
        print("note: some runs did not finish as done (diverged or failed): see div/n below")
    return wall, before, os.getloadavg()


# ----------------------------------------------------------------------------- reading


def column_of(dotted: str) -> str:
    """The runs-table column of a sweep axis named as in the file (model.width -> width)."""
    return {"train.seeds": "seed", "train.early_stopping.metric": "es_metric"}.get(dotted, dotted.split(".")[-1])


def point_axes(sweep: Sweep) -> list[str]:
    """Columns that tell sweep points apart (every axis but the seed)."""
    return [column_of(k) for k in sweep.axes if k != "train.seeds"]


def read_runs(db: Path, sweep: Sweep) -> list[Row]:
    """This sweep's runs only, by config key: a database may also hold earlier settings' runs."""
    keys = {spec.key for spec in sweep.runs}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        con.row_factory = sqlite3.Row
        runs = [dict(r) for r in con.execute("SELECT * FROM runs").fetchall() if r["key"] in keys]
        for run in runs:
            run["loss"] = run[LOSS_COLUMN[sweep.loss_rule.value]]
            run["grad_first"], run["grad_ratio"] = first_gradients(con, run["id"])
    return runs


def first_gradients(con: sqlite3.Connection, run_id: int) -> tuple[float, float]:
    """At the first logged step: (first layer's gradient norm, its ratio to the last layer's).

    The first step shows what the initialisation does before the optimiser reshapes it."""
    row = con.execute(
        """SELECT f.grad_norm, f.grad_norm / NULLIF(l.grad_norm, 0) FROM layer_stats f JOIN layer_stats l
           ON l.run_id = f.run_id AND l.step = f.step
           AND l.layer = (SELECT MAX(layer) FROM layer_stats WHERE run_id = f.run_id)
           WHERE f.run_id = ? AND f.layer = 0
           AND f.step = (SELECT MIN(step) FROM layer_stats WHERE run_id = f.run_id)""",
        (run_id,),
    ).fetchone()
    return (float("nan"), float("nan")) if row is None else (row[0], row[1])


# ----------------------------------------------------------------------------- summarising


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else float("nan")


def group_points(runs: list[Row], axes: list[str]) -> dict[tuple[Any, ...], list[Row]]:
    points: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for run in runs:
        points[tuple(run[a] for a in axes)].append(run)
    return dict(sorted(points.items(), key=lambda kv: tuple(str(v) if not isinstance(v, (int, float)) else v
                                                              for v in kv[0])))


def point_line(key: tuple[Any, ...], runs: list[Row]) -> str:
    ok = [r for r in runs if r["status"] in OK_STATUSES]
    test, test_sd = mean_sd([r["final_test_loss"] for r in ok])
    train, _ = mean_sd([r["final_train_loss"] for r in ok])
    acc, _ = mean_sd([r["final_test_acc"] for r in ok])
    best, _ = mean_sd([r["best_test_loss"] for r in ok])
    best_step, _ = mean_sd([r["best_step"] for r in ok])
    ratio, _ = mean_sd([r["grad_ratio"] for r in runs])
    first, _ = mean_sd([r["grad_first"] for r in runs])
    diverged = sum(r["status"] == "diverged" for r in runs)
    cells = " ".join(f"{v!s:>10}" for v in key)
    params = statistics.fmean(r["params"] or 0 for r in runs)
    return (f"{cells}  {test:7.3f} +- {test_sd:5.3f}  {best:6.3f} @{best_step:5.0f}  {train:6.3f}"
            f"  {test - train:6.3f}  {acc:6.3f}  {diverged}/{len(runs):<3}  {first:6.3f} {ratio:6.3f}  {params:>9,.0f}")


def print_points(runs: list[Row], axes: list[str]) -> None:
    head = " ".join(f"{a:>10}" for a in axes)
    print(f"{head}  test loss (mean +- sd)    best @step   train    gap  t.acc  div/n  g0(1st) g0/gL  params")
    for key, point_runs in group_points(runs, axes).items():
        print(point_line(key, point_runs))


# ----------------------------------------------------------------------------- monotonicity


def print_monotonicity(runs: list[Row], axes: list[str]) -> bool:
    """check_monotone in width (grouped by depth) and in depth (grouped by width), per other setting."""
    others = [a for a in axes if a not in ("width", "depth")]
    all_ok = True
    for key, group in group_points([r for r in runs if r["status"] in OK_STATUSES], others).items():
        label = ", ".join(f"{a}={v}" for a, v in zip(others, key, strict=True)) or "all runs"
        for x, by in (("width", "depth"), ("depth", "width")):
            if len({r[x] for r in group}) < 2:
                continue
            mono = check_monotone([r[x] for r in group], [r["loss"] for r in group], [r[by] for r in group])
            all_ok &= mono.ok
            print(f"monotone in {x} within each {by} ({label}): {'yes' if mono.ok else 'NO'}")
            for v in mono.violations:
                print(f"    {by} {v.group}: {x} {v.x_small:g} -> {v.x_large:g}: {v.loss_small:.3f} -> "
                      f"{v.loss_large:.3f} (seed sd {v.spread:.3f}, beyond it: {v.exceeds_spread})")
    return all_ok


def print_seed_reversals(runs: list[Row], axes: list[str]) -> None:
    """For adjacent sizes, how often one seed of the larger model loses to one seed of the smaller:
    the odds that a one-seed-per-size sweep shows that step of the trend backwards."""
    ok = [r for r in runs if r["status"] in OK_STATUSES]
    if len({r["seed"] for r in ok}) < 4:
        return
    for x, by in (("width", "depth"), ("depth", "width")):
        if x not in axes:
            continue
        for g in sorted({r[by] for r in ok}):
            losses = defaultdict(list)
            for r in (r for r in ok if r[by] == g):
                losses[r[x]].append(r["loss"])
            for small, large in itertools.pairwise(sorted(losses)):
                pairs = list(itertools.product(losses[small], losses[large]))
                reversed_ = sum(b > a for a, b in pairs)
                print(f"  {by} {g}: {x} {small} -> {large}: seed range {_range(losses[small]):.3f} -> "
                      f"{_range(losses[large]):.3f}; one-seed comparisons reversed: {reversed_} of {len(pairs)}")


def _range(values: Sequence[float]) -> float:
    return max(values) - min(values)


# ----------------------------------------------------------------------------- fits


def print_heldout(check: HeldOutReport) -> None:
    for name, held in (("largest", check.leave_one), ("two largest", check.leave_two)):
        if held is None:
            continue
        parts = [f"x={x:,.0f}: predicted {p:.4f}, actual {a:.4f} ({e:.1%})"
                 for x, p, a, e in zip(held.x_out, held.predicted, held.actual, held.rel_error, strict=True)]
        print(f"  held out {name}: " + "; ".join(parts))
    for note in check.notes:
        print(f"  {note}")


def print_params_fits(db: Path, sweep: Sweep, others: list[str]) -> None:
    """L(params), one law per setting of the other axes, exactly as `scaletui fit` fits it."""
    group_by = ",".join(others) if len(others) == 1 else None  # the product groups by one config key
    try:
        result = fit_experiment(db, sweep.name, FitSpec(x="params", group_by=group_by, n_bootstrap=0))
    except FitInputError as exc:
        print(f"L(params): not fitted: {exc}")
        return
    for r in result.reports:
        scores = ", ".join(f"{s.form} {s.heldout_rel_error:.1%}" for s in r.scores if s.law is not None)
        params = " ".join(f"{k}={v:.4g}" for k, v in r.law.params.items())
        print(f"{r.group or 'all runs'}: {r.formula} ({r.law.form}, {r.chosen_by}): {params} "
              f"({r.n_points} runs, {r.n_sizes} sizes); held-out error by form: {scores}")
        print_heldout(r.heldout)
    for line in result.skipped:
        print(f"  skipped: {line}")


def print_data_fit(runs: list[Row]) -> None:
    """L(N, D) = E + A/N^alpha + B/D^beta over parameters N and training examples D."""
    ok = [r for r in runs if r["status"] in OK_STATUSES and r["params"] and r["train_size"]]
    n = np.array([r["params"] for r in ok], dtype=float)
    d = np.array([r["train_size"] for r in ok], dtype=float)
    y = np.array([r["loss"] for r in ok], dtype=float)
    p = fit_law("CHINCHILLA", (n, d), y).params
    print(f"L(N, D) = E + A/N^alpha + B/D^beta: E={p['E']:.4g} A={p['A']:.4g} alpha={p['alpha']:.4g} "
          f"B={p['B']:.4g} beta={p['beta']:.4g} ({len(ok)} runs)")


def print_fits(db: Path, sweep: Sweep, runs: list[Row], axes: list[str]) -> None:
    if "train_size" in axes:
        print_data_fit(runs)
        return
    print_params_fits(db, sweep, [a for a in axes if a not in ("width", "depth")])


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_file", type=Path)
    p.add_argument("--db", type=Path, help="database to train into (default: a fresh temporary file)")
    p.add_argument("--no-run", action="store_true", help="only report on what --db already holds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.no_run and args.db is None:
        sys.exit("--no-run reports on an existing database: give it with --db")
    try:
        sweep = load_sweep(args.sweep_file)
    except ConfigError as e:  # e.g. a dataset whose files are not there: the one line says where
        sys.exit(str(e))
    db = args.db or Path(tempfile.mkdtemp(prefix="scaletui-report-")) / "report.db"
    if not args.no_run:
        wall, before, after = run_headless(args.sweep_file, db)
        print(f"{args.sweep_file}: {len(sweep.runs)} runs, {sweep.workers} workers, wall {wall:.1f} s; "
              f"load average before {before[0]:.2f}, after {after[0]:.2f} (1 min)")
    axes = point_axes(sweep)
    runs = read_runs(db, sweep)
    print(f"experiment {sweep.name!r} in {db}: {len(runs)} runs; the loss of a run (monotonicity, fits): "
          f"{LOSS_COLUMN[sweep.loss_rule.value]}")
    print_points(runs, axes)
    if "width" in axes or "depth" in axes:
        print_monotonicity(runs, axes)
        print_seed_reversals(runs, axes)
    print_fits(db, sweep, runs, axes)


if __name__ == "__main__":
    main()
