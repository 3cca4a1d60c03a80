"""Synthetic scaling-law data with known parameters, shared by the analysis tests."""

from __future__ import annotations

import numpy as np


def synthetic(x: np.ndarray, *, E: float, A: float, alpha: float, noise: float = 0.0,
              seeds: int = 1, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x repeated per seed, loss with multiplicative log-normal noise, seed id) from a known law."""
    xs = np.repeat(np.asarray(x, dtype=float), seeds)
    seed_id = np.tile(np.arange(seeds), len(x))
    loss = E + A * xs**-alpha
    if noise:
        loss = loss * np.exp(noise * (rng or np.random.default_rng(0)).normal(size=xs.size))
    return xs, loss, seed_id
