"""Side-by-side timing that can resolve a 1-2% difference on a loaded 2-core machine.

Shared by the benchmarks that compare versions of one workload (overhead.py, watch_overhead.py,
threads.py). Why each piece:
- interleaving: the versions run in rotating order (a b, b a, ... for two; a b c, b c a, ... for
  three), so a drift in the machine's load hits every version alike and cancels in the ratios;
- many short repetitions: each gives one ratio, and the spread of a mean of many ratios shrinks
  as 1/sqrt(n), where one long run per version leaves all the load noise in one number;
- two clocks: wall time, and the process's CPU time (every thread), which other processes on a
  busy machine inflate much less (they take cores away, which costs wall time, not CPU time);
- the geometric mean of the per-repetition ratios, with a percentile-bootstrap confidence
  interval (resampling the repetitions): a ratio's natural average, and an interval that says
  whether a goal such as "<= 1.03x, excluding 1.05" holds.

Run as scripts (`python benchmarks/overhead.py`), the benchmarks import this module as `paired`
from their own folder.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import random
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Clock = Literal["wall", "cpu"]


@dataclass(frozen=True)
class Timing:
    """One timed repetition of one version."""

    wall: float  # seconds of wall time
    cpu: float  # seconds of this process's CPU time (all threads)
    faults: int = 0  # minor page faults of the process meanwhile (where the benchmark counts them)


@dataclass(frozen=True)
class RatioCI:
    """Geometric mean of paired ratios and its confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f}x [{self.low:.3f}, {self.high:.3f}]"


def timed(fn: Callable[[], object]) -> Timing:
    """Time one call on both clocks and count its minor page faults, after a garbage collection (every
    call starts with none pending)."""
    gc.collect()
    gc.freeze()  # what survived is not garbage: later collections skip it (they took ~0.3 s each here)
    faults = minor_faults()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, minor_faults() - faults)


def minor_faults() -> int:
    """Minor page faults of this process so far (memory the kernel mapped in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def steady_heap() -> str:
    """Fix glibc's trim threshold (1 GiB: freed memory stays mapped) and mmap threshold (32 MiB, its
    maximum: tensors below it come from the heap), which otherwise change as the process frees memory.
    Left to themselves they move with the process's history, and whether a loop's freed per-step
    tensors sit at the top of the heap (given back to the OS at every step and faulted in again at the
    next) is luck: identical loops took from 0 to over 1000 minor page faults per step (up to ~4% of a
    step) in watch_overhead.py, in every version alike. Returns what was done, for the report."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "not glibc, left as they are"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    fixed = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    return "trim 1 GiB, mmap 32 MiB" if fixed else "mallopt refused, left as they are"


def rotation(names: Sequence[str], rep: int) -> list[str]:
    """The order of repetition `rep`: the names rotated by `rep` (for two names: alternating)."""
    k = rep % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def interleaved(
    versions: Mapping[str, Callable[[], Timing]], reps: int, warmup: bool = True
) -> dict[str, list[Timing]]:
    """Run every version `reps` times in rotating order (after one untimed call of each when `warmup`)."""
    if warmup:
        for run in versions.values():
            run()
    times: dict[str, list[Timing]] = {name: [] for name in versions}
    for rep in range(reps):
        for name in rotation(list(versions), rep):
            times[name].append(versions[name]())
    return times


def geometric_ci(ratios: Sequence[float], level: float = 0.95, resamples: int = 4000, seed: int = 0) -> RatioCI:
    """Geometric mean of positive `ratios` and its percentile-bootstrap interval at `level`.

    Deterministic for a given seed. One ratio gives a zero-width interval (there is nothing to resample)."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ValueError(f"ratios must be positive and non-empty, got {list(ratios)[:5]}")
    logs = [math.log(r) for r in ratios]
    rng = random.Random(seed)
    means = [statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(resamples)]
    return RatioCI(math.exp(statistics.fmean(logs)), *_percentiles(means, level))


def clustered_ci(groups: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 4000,
                 seed: int = 0) -> RatioCI:
    """Geometric mean of ratios measured in several processes (`groups`, one list per process), with a
    two-level percentile-bootstrap interval: processes resampled, then the ratios within each.

    Why: what a process is dealt once (where its tensors landed in memory, glibc's malloc thresholds,
    the core it was scheduled on) shifts every ratio it measures alike, so the pairs of one process are
    not independent, and `geometric_ci` over them gives an interval narrower than the run-to-run spread
    (measured: means of one command 3% apart, each with a +-3% interval). Resampling processes puts that
    spread in the interval. The mean weighs every process alike (its ratios' geometric mean); with one
    process this is `geometric_ci`."""
    if not groups:
        raise ValueError("clustered_ci needs at least one group of ratios")
    for g in groups:
        if not g or any(not r > 0 for r in g):
            raise ValueError(f"ratios must be positive and non-empty, got {list(g)[:5]}")
    if len(groups) == 1:
        return geometric_ci(groups[0], level, resamples, seed)
    logs = [[math.log(r) for r in g] for g in groups]
    rng = random.Random(seed)
    means = [statistics.fmean(statistics.fmean(rng.choices(g, k=len(g))) for g in rng.choices(logs, k=len(logs)))
             for _ in range(resamples)]
    return RatioCI(math.exp(statistics.fmean(statistics.fmean(g) for g in logs)), *_percentiles(means, level))


def _percentiles(log_means: Sequence[float], level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrapped log means, as ratios."""
    ordered, tail = sorted(log_means), (1.0 - level) / 2
    low = ordered[min(len(ordered) - 1, int(tail * len(ordered)))]
    high = ordered[max(0, math.ceil((1.0 - tail) * len(ordered)) - 1)]
    return math.exp(low), math.exp(high)


def paired_ratios(times: Mapping[str, Sequence[Timing]], over: str, under: str, clock: Clock) -> list[float]:
    """Per-repetition ratios under/over on one clock (repetition i of each version ran side by side)."""
    return [getattr(u, clock) / getattr(o, clock) for o, u in zip(times[over], times[under], strict=True)]


def ratio_ci(times: Mapping[str, Sequence[Timing]], over: str, under: str, clock: Clock) -> RatioCI:
    """`geometric_ci` of `paired_ratios`: how much slower `under` is than `over`."""
    return geometric_ci(paired_ratios(times, over, under, clock))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for printing next to every number."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# Setting up a measurement: the benchmarks that fit laws pin themselves to the cores a user has.
def pin_cores(n: int) -> str:
    """Restrict this process to its first n allowed CPUs, when the OS supports it."""
    if not hasattr(os, "sched_setaffinity"):
        return f"{os.cpu_count()} (affinity not supported)"
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:n])
    return f"{len(os.sched_getaffinity(0))} of {len(allowed)}"


def shape_arg(text: str) -> tuple[int, int]:
    """A `WIDTHxDEPTH` command-line value (`512x8`) as (width, depth); argparse's one-line error otherwise."""
    width, _, depth = text.partition("x")
    try:
        return int(width), int(depth)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxDEPTH, e.g. 512x8") from None
