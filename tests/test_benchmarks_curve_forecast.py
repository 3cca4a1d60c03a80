"""benchmarks/curve_forecast.py: the `other seeds` column (pure logic on synthetic runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from curve_forecast import other_seeds_error


def run(params: float, depth: int, final: float | None, steps: int = 100) -> dict:
    evals = {50: 3.0} if final is None else {50: 3.0, steps: final}
    return {"params": params, "depth": depth, "steps": steps, "evals": evals}


def test_a_run_is_predicted_by_the_log_mean_of_its_sizes_other_seeds() -> None:
    me = run(1000, 2, 2.5)
    runs = [me, run(1000, 2, 1.0), run(1000, 2, 4.0)]  # log mean 2.0
    assert other_seeds_error(me, runs) == pytest.approx(abs(2.0 / 2.5 - 1))


def test_other_sizes_plans_and_unfinished_seeds_do_not_count() -> None:
    me = run(1000, 2, 2.0)
    runs = [me, run(1000, 2, 3.0), run(2000, 2, 0.1), run(1000, 3, 0.1), run(1000, 2, 0.1, steps=200),
            run(1000, 2, None)]
    assert other_seeds_error(me, runs) == pytest.approx(0.5)


def test_a_size_with_one_seed_has_no_figure() -> None:
    me = run(1000, 2, 2.0)
    assert other_seeds_error(me, [me, run(2000, 2, 1.0)]) is None
