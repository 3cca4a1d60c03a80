"""Synthetic curves from every one-variable form with known parameters, shared by the form tests."""

from __future__ import annotations

import numpy as np

from scaletui.analysis.forms import law_values
from scaletui.analysis.solve import FitOptions, LossSpec

#: Besiroglu et al.'s objective (Huber delta 1e-3 on log loss), the one the Chinchilla replication numbers are for.
EPOCH = FitOptions(loss=LossSpec("log", 1e-3))
SIZES = np.geomspace(1e3, 1e7, 16)
TRUE: dict[str, dict[str, float]] = {
    "M1": {"A": 5.0, "alpha": 0.3},
    "M2": {"E": 1.5, "A": 40.0, "alpha": 0.35},
    "M3": {"E": 0.5, "x_c": 1e5, "alpha": 0.8},
    "M4": {"E": 0.2, "E0": 0.95, "A": 3e3, "alpha": 0.7, "gamma": 1.5},
    "BNSL1": {"E": 0.3, "A": 2.0, "alpha": 0.05, "c1": 3.0, "d1": 1e5, "f1": 0.1},
}


def noisy(name: str, seeds: int = 4, noise: float = 0.003, sizes: np.ndarray = SIZES) -> tuple[np.ndarray, np.ndarray]:
    """(x repeated per seed, loss of form `name` with TRUE parameters and log-normal noise)."""
    x = np.repeat(sizes, seeds)
    rng = np.random.default_rng(7)
    return x, law_values(name, TRUE[name], x) * np.exp(noise * rng.normal(size=x.size))
