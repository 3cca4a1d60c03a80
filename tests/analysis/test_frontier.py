"""The compute-optimal frontier's closed forms, their bootstrap intervals and the run closest to optimal.

Known answers: the closed forms against a brute-force minimisation of the law along C = k N D (an independent
route to the same optimum), an exactly symmetric law whose optimum is N = D = sqrt(C/k), and intervals from the
real solver's bootstrap on noisy synthetic grids that must contain the true N_opt(C) most of the time.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaletui.analysis.forms import law_values
from scaletui.analysis.frontier import (
    HOFFMANN_K,
    allocation,
    closest,
    d_opt,
    frontier_loss,
    n_opt,
    place_points,
    policy_bands,
)
from scaletui.analysis.solve import FitOptions, LossSpec, bootstrap

# Besiroglu et al. 2024's refit of Chinchilla (their Table 1)
REPLICATION = {"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658}
NAMES = ("E", "A", "alpha", "B", "beta")


def brute_force_n_opt(params: dict[str, float], compute: float, k: float = HOFFMANN_K) -> float:
    """argmin over N of L(N, C/(kN)) on a fine log grid, refined once: no closed form involved."""
    n = np.geomspace(1e-6, 1e6, 200_001) * np.sqrt(compute / k)
    i = int(np.argmin(law_values("CHINCHILLA", params, n, compute / (k * n))))
    fine = np.geomspace(n[max(i - 1, 0)], n[min(i + 1, n.size - 1)], 20_001)
    return float(fine[np.argmin(law_values("CHINCHILLA", params, fine, compute / (k * fine)))])


@pytest.mark.parametrize("compute", [1e18, 5.76e23, 1e26])
def test_closed_forms_match_the_brute_force_optimum(compute: float) -> None:
    n = float(n_opt(REPLICATION, compute))
    assert n == pytest.approx(brute_force_n_opt(REPLICATION, compute), rel=2e-4)
    assert n * float(d_opt(REPLICATION, compute)) == pytest.approx(compute / HOFFMANN_K, rel=1e-12)
    assert float(frontier_loss(REPLICATION, compute)) == pytest.approx(
        float(law_values("CHINCHILLA", REPLICATION, n, compute / (HOFFMANN_K * n))), rel=1e-12)


def test_the_replication_gives_about_twenty_tokens_per_parameter_at_chinchillas_budget() -> None:
    """Besiroglu et al.: their refit is consistent with Chinchilla's ~20 tokens per parameter (70B on 1.4T)."""
    c = 6 * 70e9 * 1.4e12
    ratio = float(d_opt(REPLICATION, c) / n_opt(REPLICATION, c))
    assert 10 < ratio < 40
    al = allocation(REPLICATION)
    assert float(al.a) == pytest.approx(0.3658 / (0.3478 + 0.3658)) and float(al.a + al.b) == pytest.approx(1.0)


def test_a_symmetric_law_splits_the_budget_evenly_for_any_k() -> None:
    law = {"E": 1.0, "A": 3.0, "alpha": 0.4, "B": 3.0, "beta": 0.4}
    c = np.array([1e6, 1e9, 1e12])
    for k in (6.0, 17.5):
        assert np.allclose(n_opt(law, c, k), np.sqrt(c / k), rtol=1e-12)
        assert np.allclose(d_opt(law, c, k), np.sqrt(c / k), rtol=1e-12)
    assert float(allocation(law).G) == pytest.approx(1.0)


def test_exponents_move_the_budget_toward_the_slower_term() -> None:
    """beta > alpha: data keeps paying longer than size, so a = beta/(alpha+beta) > 1/2 and N_opt grows faster."""
    law = {"E": 1.0, "A": 5.0, "alpha": 0.2, "B": 5.0, "beta": 0.6}
    al = allocation(law)
    assert float(al.a) == pytest.approx(0.75) and float(al.b) == pytest.approx(0.25)
    assert float(n_opt(law, 6e12) / n_opt(law, 6e10)) == pytest.approx(100 ** 0.75)


def test_a_law_without_an_interior_optimum_gives_no_allocation() -> None:
    for bad in ({"alpha": 0.0}, {"B": 0.0}, {"beta": -0.1}):
        al = allocation({**REPLICATION, **bad})
        assert not bool(al.ok) and np.isnan(al.G)


def test_bad_budgets_and_k_are_refused() -> None:
    for budget in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget"):
            n_opt(REPLICATION, budget)
    with pytest.raises(ValueError, match="FLOPs per parameter"):
        d_opt(REPLICATION, 1e20, k=0.0)


# ----------------------------------------------------------------------------- intervals


TRUTH = {"E": 0.5, "A": 30.0, "alpha": 0.45, "B": 40.0, "beta": 0.35}
N_GRID = np.geomspace(3e3, 1e6, 5)
D_GRID = np.geomspace(3e3, 2e5, 5)
BUDGETS = np.array([1e9, 1e11, 1e12])


def noisy_grid(seed: int, sd: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 5 x 5 (N, D) grid, 2 seeds per point, log-normal noise of `sd`: (N, D, loss, point index)."""
    rng = np.random.default_rng(seed)
    n, d = (g.ravel() for g in np.meshgrid(N_GRID, D_GRID, indexing="ij"))
    point = np.repeat(np.arange(n.size), 2)
    n, d = np.repeat(n, 2), np.repeat(d, 2)
    loss = law_values("CHINCHILLA", TRUTH, n, d) * np.exp(rng.normal(0.0, sd, n.size))
    return n, d, loss, point


@pytest.mark.slow
def test_bootstrap_intervals_contain_the_true_policy_on_noisy_grids() -> None:
    """Six noisy grids (fixed seeds), the real solver's bootstrap over points: the 90% intervals of N_opt and
    D_opt hold the truth at each budget in at least 5 of 6 grids, and the exponent a's in at least 5."""
    options = FitOptions(loss=LossSpec("log", 1e-3))
    true_n, true_d = n_opt(TRUTH, BUDGETS), d_opt(TRUTH, BUDGETS)
    true_a = float(allocation(TRUTH).a)
    hits_n, hits_d, hits_a = np.zeros(BUDGETS.size), np.zeros(BUDGETS.size), 0
    for seed in range(6):
        n, d, loss, point = noisy_grid(seed)
        boot = bootstrap("CHINCHILLA", (n, d), loss, groups=point, n_resamples=200, rng=seed, options=options)
        bands = policy_bands(boot.names, boot.samples, BUDGETS, level=0.9)
        assert bands.n_draws + bands.n_degenerate == boot.n_done
        hits_n += (bands.n_opt[0] <= true_n) & (true_n <= bands.n_opt[1])
        hits_d += (bands.d_opt[0] <= true_d) & (true_d <= bands.d_opt[1])
        hits_a += bands.a[0] <= true_a <= bands.a[1]
    assert np.all(hits_n >= 5), hits_n
    assert np.all(hits_d >= 5), hits_d
    assert hits_a >= 5


def test_bands_of_exact_draws_are_the_point_and_degenerate_draws_are_counted() -> None:
    draws = np.array([[REPLICATION[n] for n in NAMES]] * 5 + [[1.8, 400.0, 0.0, 2000.0, 0.36]])
    bands = policy_bands(NAMES, draws, [1e20, 1e22])
    assert bands.n_draws == 5 and bands.n_degenerate == 1
    assert np.allclose(bands.n_opt[0], n_opt(REPLICATION, [1e20, 1e22]))
    assert np.allclose(bands.n_opt[1], n_opt(REPLICATION, [1e20, 1e22]))
    assert bands.a[0] == pytest.approx(float(allocation(REPLICATION).a))


# ----------------------------------------------------------------------------- the run closest to optimal


def test_the_run_on_the_frontier_is_closest() -> None:
    """Three runs at one budget: too small, optimal, too big (losses from the law itself); and a fourth at
    another budget, slightly above its frontier. The optimal one has ratio 1 and N = N_opt(C)."""
    c = 6e12
    best_n, best_d = float(n_opt(REPLICATION, c)), float(d_opt(REPLICATION, c))
    n = np.array([best_n / 30, best_n, best_n * 30, 1e6])
    d = c / (HOFFMANN_K * n)
    d[3] = 1e4
    compute = HOFFMANN_K * n * d
    loss = law_values("CHINCHILLA", REPLICATION, n, d) * np.array([1.0, 1.0, 1.0, 1.01])
    placed = place_points(REPLICATION, n, d, compute, loss)
    assert placed[1].ratio == pytest.approx(1.0) and placed[1].log10_n_ratio == pytest.approx(0.0, abs=1e-9)
    assert placed[1].d == pytest.approx(best_d)
    assert placed[0].log10_n_ratio == pytest.approx(-np.log10(30)) and placed[2].log10_n_ratio > 0
    assert all(p.law_ratio >= 1 - 1e-12 for p in placed)
    assert closest(placed) == 1 and closest(placed, by="log_n") == 1


def test_closest_by_loss_and_by_size_can_differ() -> None:
    """A run at exactly N_opt whose measured loss came out high, and one off N_opt that came out on the law."""
    c = np.array([6e12, 6e12])
    n = np.array([float(n_opt(REPLICATION, 6e12)), 3 * float(n_opt(REPLICATION, 6e12))])
    d = c / (HOFFMANN_K * n)
    loss = law_values("CHINCHILLA", REPLICATION, n, d) * np.array([1.10, 1.0])  # 3x off N_opt costs 7%
    placed = place_points(REPLICATION, n, d, c, loss)
    assert closest(placed) == 1 and closest(placed, by="log_n") == 0
    with pytest.raises(ValueError, match="no points"):
        closest([])


def test_a_run_far_below_the_frontier_is_not_the_closest() -> None:
    """No run beats the optimum: 15% below the frontier is misfit or noise, further from it than 1% above."""
    c = np.array([6e12, 6e12])
    n = np.array([2.0, 0.5]) * float(n_opt(REPLICATION, 6e12))
    d = c / (HOFFMANN_K * n)
    best = frontier_loss(REPLICATION, c)
    placed = place_points(REPLICATION, n, d, c, best * np.array([0.85, 1.01]))
    assert placed[0].ratio == pytest.approx(0.85) and closest(placed) == 1
