"""How fast is the new fitting core (scaletui.analysis.solve / select)?

Goals (issue 13), on 2 CPU cores: the point fit with its held-out checks in under 0.5 s, and 1,000
bootstrap resamples in under 3 s, on (a) the Chinchilla replication data (240 points, the
two-variable law, Huber delta 1e-3 as Besiroglu et al.) and (b) a synthetic curve shaped like the
default sweep: 16 sizes x 4 seeds = 64 points from L = 2 + 300 x^-0.4 with 1% seed noise, fitted with
the automatic form selection (every form, rolling-origin held-out checks); its bootstrap resamples
all seeds of one size together. Each timing is the best of `--repeat` runs (the machine may be busy).

    .venv/bin/python benchmarks/fit_speed_core.py [--resamples 1000] [--repeat 3] [--cores 2]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`
import refdata
from paired import pin_cores

from scaletui.analysis.select import SelectOptions, heldout_scores, select_form
from scaletui.analysis.solve import FitOptions, LossSpec, bootstrap, fit_law

GOALS = {"fit": 0.5, "bootstrap": 3.0}
EPOCH = FitOptions(loss=LossSpec("log", 1e-3))  # Besiroglu et al.'s objective
T = TypeVar("T")


def best_of(repeat: int, fn: Callable[[], T]) -> tuple[float, T]:
    """(fastest wall time, last result) of `repeat` calls."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return min(times), out


def verdict(seconds: float, goal: float) -> str:
    return f"{seconds:6.3f} s  (goal < {goal:g} s: {'ok' if seconds < goal else 'MISSED'})"


def synthetic_sweep() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.repeat(np.geomspace(1e4, 1e7, 16), 4)
    return x, (2.0 + 300.0 * x**-0.4) * np.exp(rng.normal(0.0, 0.01, x.size))


def bench_chinchilla(resamples: int, repeat: int) -> None:
    c = refdata.chinchilla()
    xs = (c.n, c.d)
    t_fit, law = best_of(repeat, lambda: fit_law("CHINCHILLA", xs, c.loss, options=EPOCH))
    opts = SelectOptions(forms=("CHINCHILLA",), fit=EPOCH)
    t_held, scores = best_of(repeat, lambda: heldout_scores(xs, c.loss, opts))
    p = law.params
    print("(a) Chinchilla, 240 points, E + A/N^alpha + B/D^beta, Huber 1e-3 on log loss")
    print(f"    fit: E={p['E']:.4f} A={p['A']:.1f} alpha={p['alpha']:.4f} B={p['B']:.1f} beta={p['beta']:.4f} "
          f"objective={law.objective:.10g}  (Besiroglu et al.: alpha 0.3478, beta 0.3658)")
    print(f"    point fit                         {t_fit:6.3f} s")
    print(f"    point fit + {len(scores[0].per_origin)} held-out refits      {verdict(t_fit + t_held, GOALS['fit'])}"
          f"  (held-out log error {scores[0].heldout_error:.4f})")
    t_boot, boot = best_of(1, lambda: bootstrap("CHINCHILLA", xs, c.loss, n_resamples=resamples, rng=0, options=EPOCH))
    lo, hi = boot.interval("alpha")
    print(f"    {boot.n_done} bootstrap resamples          {verdict(t_boot, GOALS['bootstrap'])}"
          f"  (alpha 90% interval [{lo:.3f}, {hi:.3f}])")


def bench_sweep(resamples: int, repeat: int) -> None:
    x, y = synthetic_sweep()
    t_sel, sel = best_of(repeat, lambda: select_form(x, y))
    assert sel.best is not None and sel.law is not None
    print("\n(b) synthetic sweep, 16 sizes x 4 seeds, L = 2 + 300 x^-0.4, 1% noise")
    fits = sum(len(s.per_origin) + 1 for s in sel.scores)
    print(f"    auto: {len(sel.scores)} forms, {fits} fits       {verdict(t_sel, GOALS['fit'])}  -> {sel.best.form}")
    print("    held-out log error: " + ", ".join(f"{s.form} {s.heldout_error:.4f}" for s in sel.scores if s.ok))
    t_m2, _ = best_of(repeat, lambda: fit_law("M2", x, y))
    print(f"    one M2 point fit                  {t_m2:6.3f} s")
    for name in dict.fromkeys((sel.best.form, "M2", "M4", "BNSL1")):
        t_boot, boot = best_of(1, functools.partial(bootstrap, name, x, y, groups=x, n_resamples=resamples, rng=0))
        lo, hi = boot.interval("alpha")
        print(f"    {boot.n_done} bootstraps of {name:6}         {verdict(t_boot, GOALS['bootstrap'])}"
              f"  (alpha 90% interval [{lo:.3f}, {hi:.3f}])")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    missing = refdata.missing_reason()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    print(f"CPUs: {pin_cores(args.cores)};  best of {args.repeat} runs\n")
    bench_chinchilla(args.resamples, args.repeat)
    bench_sweep(args.resamples, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
