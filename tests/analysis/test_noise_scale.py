"""The noise-scale estimator on synthetic gradients with known |G|^2 and tr(Sigma).

Per-example gradients are G + Sigma^(1/2) z with z standard normal (d = 20, diagonal Sigma), so the
truth is known exactly; a measurement is the squared norm of the mean of a batch and of its first half,
as the training loop takes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaletui.analysis.noise_scale import (
    NoisePieces,
    critical_batch,
    estimate,
    noise_pieces,
    running_b_simple,
    suggested_batch,
)

D = 20
B = 32


def gaussian_gradients(rng: np.random.Generator, g2: float, trace: float, shape: tuple[int, ...]) -> np.ndarray:
    """Per-example gradients (*shape, D) with |G|^2 = g2 and tr(Sigma) = trace (an uneven diagonal)."""
    mean = rng.standard_normal(D)
    mean *= math.sqrt(g2) / np.linalg.norm(mean)
    variances = np.linspace(1.0, 3.0, D)
    variances *= trace / variances.sum()
    return mean + rng.standard_normal((*shape, D)) * np.sqrt(variances)


def measure(per_example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, B, D) -> squared norms of each batch's first half and of the whole batch."""
    small = per_example[:, : B // 2].mean(axis=1)
    big = per_example.mean(axis=1)
    return (small**2).sum(axis=1), (big**2).sum(axis=1)


def synthetic(n: int, g2: float = 1.0, trace: float = 50.0, seed: int = 0) -> NoisePieces:
    sq_small, sq_big = measure(gaussian_gradients(np.random.default_rng(seed), g2, trace, (n, B)))
    return noise_pieces(sq_small, sq_big, B // 2, B)


def test_the_pieces_recover_the_known_gradient_and_trace() -> None:
    est = estimate(synthetic(20_000))  # truth: |G|^2 = 1, tr(Sigma) = 50, B_simple = 50
    assert est.g2 == pytest.approx(1.0, rel=0.05)
    assert est.trace == pytest.approx(50.0, rel=0.02)
    assert est.b_simple == pytest.approx(50.0, rel=0.06)
    assert est.b_simple is not None and est.stderr is not None
    assert abs(est.b_simple - 50.0) < 3 * est.stderr
    assert est.n == 20_000


def test_the_standard_error_covers_the_truth_about_95_percent_of_the_time() -> None:
    covered, trials = 0, 300
    for seed in range(trials):
        est = estimate(synthetic(60, g2=4.0, trace=50.0, seed=seed))  # B_simple = 12.5
        assert est.b_simple is not None and est.stderr is not None
        covered += abs(est.b_simple - 12.5) <= 2 * est.stderr
    assert 0.88 <= covered / trials <= 0.99


def test_averaging_before_the_ratio_is_what_removes_the_bias() -> None:
    pieces = synthetic(4000)
    per_measurement = pieces.trace / pieces.g2  # |G|^2 alone is often near zero or negative
    assert abs(np.mean(per_measurement) - 50.0) > 10.0
    assert estimate(pieces).b_simple == pytest.approx(50.0, rel=0.1)


def test_a_finite_training_set_sampled_without_replacement_needs_the_population_term() -> None:
    rng = np.random.default_rng(3)
    n_train = 160
    examples = gaussian_gradients(rng, 1.0, 50.0, (n_train,))  # a fixed training set
    true_g = examples.mean(axis=0)
    true_g2 = float(true_g @ true_g)
    true_trace = float(((examples - true_g) ** 2).sum(axis=1).sum() / (n_train - 1))
    batches = np.stack([examples[rng.permutation(n_train)[:B]] for _ in range(40_000)])  # epochs' slices
    sq_small, sq_big = measure(batches)
    corrected = estimate(noise_pieces(sq_small, sq_big, B // 2, B, population=n_train))
    stream = estimate(noise_pieces(sq_small, sq_big, B // 2, B))
    assert corrected.trace == pytest.approx(true_trace, rel=0.03)
    assert corrected.g2 == pytest.approx(true_g2, rel=0.05)
    assert stream.g2 < true_g2 - 0.5 * true_trace / n_train  # the data-stream formula reads it low


def test_running_estimate_is_the_ratio_of_debiased_emas() -> None:
    pieces = NoisePieces(np.array([2.0, -1.0, 4.0]), np.array([10.0, 30.0, 20.0]))
    running = running_b_simple(pieces, beta=0.5)
    # EMAs (raw): g 1.0, 0.0, 2.0; t 5.0, 17.5, 18.75. The second |G|^2 average is 0: not resolved.
    assert running[0] == pytest.approx(5.0)
    assert math.isnan(running[1])
    assert running[2] == pytest.approx(18.75 / 2.0)


def test_critical_batch_uses_the_end_of_training_and_reports_its_evidence() -> None:
    early = synthetic(200, g2=4.0, trace=40.0, seed=1)  # B_simple 10 in the first half of training
    late = synthetic(200, g2=1.0, trace=80.0, seed=2)  # 80 in the second
    run = NoisePieces(np.concatenate([early.g2, late.g2]), np.concatenate([early.trace, late.trace]))
    crit = critical_batch([run])
    assert crit.b_crit == pytest.approx(80.0, rel=0.2)
    assert (crit.measurements, crit.tail) == (400, 200)
    assert crit.b_crit is not None and crit.low is not None and crit.high is not None
    assert crit.low < crit.b_crit < crit.high
    assert crit.spread is not None and crit.spread[0] < crit.spread[1]


def test_critical_batch_pools_runs_and_says_when_nothing_is_resolved() -> None:
    a, b = synthetic(100, seed=4), synthetic(100, seed=5)
    crit = critical_batch([a, b])
    assert (crit.measurements, crit.tail) == (200, 100)
    unresolved = critical_batch([NoisePieces(np.array([-1.0, -2.0]), np.array([5.0, 6.0]))])
    assert unresolved.b_crit is None and unresolved.low is None and unresolved.spread is None
    assert critical_batch([]).b_crit is None


def test_bad_batch_sizes_and_mismatched_norms_are_errors() -> None:
    with pytest.raises(ValueError, match="b_small"):
        noise_pieces([1.0], [1.0], 32, 32)
    with pytest.raises(ValueError, match="norms"):
        noise_pieces([1.0, 2.0], [1.0], 16, 32)


@pytest.mark.parametrize(("b_crit", "expected"), [(50.0, 64), (45.0, 32), (0.3, 1), (1000.0, 1024)])
def test_suggested_batch_rounds_to_a_power_of_two(b_crit: float, expected: int) -> None:
    assert suggested_batch(b_crit) == expected
    with pytest.raises(ValueError):
        suggested_batch(-1.0)
