"""How fast is the scaling-law fitter on the Chinchilla replication data?

The fit pane refits while a sweep trains in worker processes, so the budget is set for a
2-core machine: (a) one two-variable fit from the full start grid in under 5 s, (b) 1,000
bootstrap resamples in under 30 s, (c) cancelling a bootstrap returns within a fraction of a
second with the resamples done so far (the app's thread worker must not hang on quit).

    .venv/bin/python benchmarks/fit_speed.py [--csv PATH] [--resamples 1000] [--cores 2]

By default the process is pinned to 2 CPUs (where the OS allows it) to match CI.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from scaletui.analysis.powerlaw import (
    BESIROGLU_2024,
    BootstrapResult,
    FitData,
    Form,
    bootstrap_law,
    fit_law,
    load_csv,
)

DEFAULT_CSV = Path(__file__).resolve().parents[1] / "tests" / "analysis" / "data" / "chinchilla_svg_extracted_data.csv"
GOALS = {"fit": 5.0, "bootstrap": 30.0, "cancel": 0.5}


def pin_cores(n: int) -> str:
    """Restrict this process to its first n allowed CPUs, when the OS supports it."""
    if not hasattr(os, "sched_setaffinity"):
        return f"{os.cpu_count()} (affinity not supported)"
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:n])
    return f"{len(os.sched_getaffinity(0))} of {len(allowed)}"


def verdict(seconds: float, goal: float) -> str:
    return f"{seconds:7.2f} s  (goal < {goal:g} s: {'ok' if seconds < goal else 'MISSED'})"


def bench_fit(data: FitData) -> None:
    t0 = time.perf_counter()
    fit = fit_law(Form.TWO_VAR, data.xs, data.loss)
    dt = time.perf_counter() - t0
    print(f"(a) single fit, {fit.n_starts} L-BFGS-B starts from the grid: {verdict(dt, GOALS['fit'])}")
    got = "  ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
    ref = "  ".join(f"{k}={v:.4g}" for k, v in BESIROGLU_2024.items())
    print(f"    fit:        {got}  objective={fit.objective:.6g}  converged={fit.converged}")
    print(f"    Besiroglu:  {ref}")


def bench_bootstrap(data: FitData, n: int) -> None:
    fit = fit_law(Form.TWO_VAR, data.xs, data.loss)
    t0 = time.perf_counter()
    boot = bootstrap_law(Form.TWO_VAR, data.xs, data.loss, n_resamples=n, rng=0, fit=fit)
    dt = time.perf_counter() - t0
    goal = GOALS["bootstrap"] * n / 1000
    print(f"(b) bootstrap, {boot.n_done} resamples ({boot.n_failed} failed): {verdict(dt, goal)}"
          f"  [{1e3 * dt / max(1, boot.n_done):.1f} ms/resample]")
    se = "  ".join(f"{k}={v:.4g}" for k, v in boot.std_errors.items())
    print(f"    standard errors: {se}")
    print("    Besiroglu SEs:   E=0.0257  A=124.6  alpha=0.0154  B=1293  beta=0.0206")


def bench_cancel(data: FitData, after: float = 1.0) -> None:
    """Run the bootstrap in a thread, as the app does, and stop it after `after` seconds."""
    fit = fit_law(Form.TWO_VAR, data.xs, data.loss)
    stop = threading.Event()
    out: list[BootstrapResult] = []
    worker = threading.Thread(target=lambda: out.append(bootstrap_law(
        Form.TWO_VAR, data.xs, data.loss, n_resamples=100_000, rng=0, fit=fit, should_stop=stop.is_set)))
    worker.start()
    time.sleep(after)
    t0 = time.perf_counter()
    stop.set()
    worker.join()
    dt = time.perf_counter() - t0
    boot = out[0]
    print(f"(c) cancel after {after:g} s: returned in {1e3 * dt:.1f} ms (goal < {1e3 * GOALS['cancel']:g} ms: "
          f"{'ok' if dt < GOALS['cancel'] else 'MISSED'})"
          f"  stopped={boot.stopped}, partial results from {boot.n_done} resamples,"
          f" alpha SE so far {boot.std_errors['alpha']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    print(f"CPUs used: {pin_cores(args.cores)}")
    data = load_csv(args.csv, n="Model Size", compute="Training FLOP", loss="loss", drop_highest=5)
    print(f"Chinchilla data: n = {data.loss.size} (5 highest-loss points dropped), D = C / (6N)")
    bench_fit(data)
    bench_bootstrap(data, args.resamples)
    bench_cancel(data)


if __name__ == "__main__":
    main()
