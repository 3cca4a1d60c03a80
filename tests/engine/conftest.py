"""Shared fixtures for the engine tests: MNIST-1D generated once per session, a list sink, tiny specs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scaletui.core.specs import DataSpec
from scaletui.engine.dataset_files import prepare_dataset


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # One intra-op thread is faster for these tiny tensors; restored so other test folders are unaffected.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding MNIST-1D (generating it takes ~3 s, so once per session)."""
    data_dir = tmp_path_factory.mktemp("data")
    prepare_dataset(DataSpec(dataset="mnist1d"), data_dir)
    return data_dir


class StopAfter:
    """A stop signal that becomes set after `n` checks (the training loops check once per step)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > self.n
