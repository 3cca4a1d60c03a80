"""benchmarks/paired.py: the interleaving order and the confidence interval on a ratio (pure logic, no timing)."""

from __future__ import annotations

import math
import mmap
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paired import Timing, clustered_ci, geometric_ci, interleaved, paired_ratios, ratio_ci, rotation, timed


def test_two_versions_alternate_and_three_rotate() -> None:
    assert [rotation(["a", "b"], rep) for rep in range(4)] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    assert [rotation(["a", "b", "c"], rep) for rep in range(3)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_interleaved_warms_up_then_runs_each_version_once_per_repetition() -> None:
    calls: list[str] = []

    def version(name: str, seconds: float):
        def run() -> Timing:
            calls.append(name)
            return Timing(seconds, seconds / 2)
        return run

    times = interleaved({"a": version("a", 1.0), "b": version("b", 2.0)}, reps=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating pairs
    assert [t.wall for t in times["b"]] == [2.0, 2.0, 2.0]
    assert paired_ratios(times, "a", "b", "cpu") == [2.0, 2.0, 2.0]


def test_constant_ratios_give_a_zero_width_interval() -> None:
    ci = geometric_ci([1.02] * 20)
    assert ci.mean == pytest.approx(1.02) and ci.low == pytest.approx(1.02) and ci.high == pytest.approx(1.02)


def test_mean_is_geometric() -> None:
    assert geometric_ci([1.0, 4.0]).mean == pytest.approx(2.0)
    assert geometric_ci([0.5, 2.0]).mean == pytest.approx(1.0)  # a ratio and its inverse cancel


def test_interval_covers_the_mean_and_narrows_with_more_pairs() -> None:
    rng = random.Random(1)
    few = [math.exp(rng.gauss(0.03, 0.05)) for _ in range(8)]
    many = [math.exp(rng.gauss(0.03, 0.05)) for _ in range(200)]
    small, large = geometric_ci(many), geometric_ci(few)
    for ci in (small, large):
        assert ci.low <= ci.mean <= ci.high
    assert small.high - small.low < (large.high - large.low) / 2  # ~ 1/sqrt(n): 5x narrower expected
    # 200 pairs of 5% noise resolve a 3% overhead: the interval excludes both 1.00 and 1.05
    assert small.low > 1.0 and small.high < 1.05


def test_interval_is_deterministic_for_a_seed() -> None:
    ratios = [1.0, 1.1, 0.95, 1.2, 1.05]
    assert geometric_ci(ratios, seed=3) == geometric_ci(ratios, seed=3)


def test_level_widens_the_interval() -> None:
    ratios = [1.0, 1.1, 0.95, 1.2, 1.05, 0.98, 1.07]
    narrow, wide = geometric_ci(ratios, level=0.5), geometric_ci(ratios, level=0.99)
    assert wide.low <= narrow.low and narrow.high <= wide.high


@pytest.mark.parametrize("ratios", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")]])
def test_bad_ratios_are_refused(ratios: list[float]) -> None:
    with pytest.raises(ValueError, match="ratios must be positive"):
        geometric_ci(ratios)


def test_ratio_ci_reads_the_named_clock() -> None:
    times = {"bare": [Timing(1.0, 1.0), Timing(2.0, 1.0)], "full": [Timing(1.1, 1.03), Timing(2.2, 1.03)]}
    assert ratio_ci(times, "bare", "full", "wall").mean == pytest.approx(1.1)
    assert ratio_ci(times, "bare", "full", "cpu").mean == pytest.approx(1.03)
    assert str(ratio_ci(times, "bare", "full", "cpu")) == "1.030x [1.030, 1.030]"


def test_timed_counts_the_page_faults_of_the_call() -> None:
    def touch_fresh_memory() -> None:
        # An anonymous mapping of its own: fresh pages from the kernel whatever the process did before. (A
        # 64 MB bytearray was not: after other tests in the same process freed enough, glibc served it from
        # pages the heap already had, and the call faulted 0 times.)
        with mmap.mmap(-1, 64 << 20) as pages:
            for offset in range(0, len(pages), mmap.PAGESIZE):
                pages[offset] = 1

    assert timed(touch_fresh_memory).faults > 0


def test_clustered_interval_holds_the_spread_between_processes() -> None:
    # Three processes, each dealt its own offset (memory layout, malloc thresholds), each precise within
    rng = random.Random(2)
    groups = [[math.exp(offset + rng.gauss(0.0, 0.002)) for _ in range(40)] for offset in (0.00, 0.03, 0.06)]
    pooled, clustered = geometric_ci([r for g in groups for r in g]), clustered_ci(groups)
    assert clustered.mean == pytest.approx(pooled.mean, rel=1e-3)  # equal groups: the same mean
    assert clustered.low <= clustered.mean <= clustered.high
    # pooled pairs look far more precise than the processes agree; the clustered interval does not
    assert pooled.high - pooled.low < 0.02
    assert clustered.high - clustered.low > 0.04


def test_one_process_is_the_plain_interval_and_processes_weigh_alike() -> None:
    ratios = [1.0, 1.1, 0.95, 1.2, 1.05]
    assert clustered_ci([ratios]) == geometric_ci(ratios)
    assert clustered_ci([[1.0] * 10, [4.0] * 2]).mean == pytest.approx(2.0)  # per process, not per pair


@pytest.mark.parametrize("groups", [[], [[]], [[1.0], [0.0]], [[1.0, float("nan")]]])
def test_bad_groups_are_refused(groups: list[list[float]]) -> None:
    with pytest.raises(ValueError, match=r"ratios must be positive|at least one group"):
        clustered_ci(groups)
