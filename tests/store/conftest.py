"""Fixtures for the store tests: a real SQLite file in tmp_path and run specs to fill it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.store import Store


def make_spec(
    width: int = 8, depth: int = 1, seed: int = 0, *, experiment: str = "exp", lr: float = 1e-3, **train: Any
) -> RunSpec:
    """A small RunSpec; every argument that changes changes its key."""
    return RunSpec(
        experiment=experiment,
        data=DataSpec(train_size=256),
        model=ModelSpec(width=width, depth=depth),
        train=TrainSpec(lr=lr, steps=100, **train),
        seed=seed,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "scaletui.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


@pytest.fixture
def spec() -> Callable[..., RunSpec]:
    return make_spec
