"""The default torch threads per worker: a pure rule of cores, other load and workers, and its override."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaletui.core import config
from scaletui.core.config import build_sweep, default_threads_per_worker
from tests.conftest import tiny_sweep


@pytest.mark.parametrize(
    ("cpus", "load", "workers", "expected"),
    [
        (2, 0.0, 1, 2),  # a quiet 2-core machine, one worker: both cores
        (2, 0.4, 1, 2),  # background noise under half a core still counts as idle
        (2, 0.6, 1, 1),  # more than half a core busy elsewhere: one thread
        (2, 2.0, 1, 1),  # two busy processes beside it: one thread, never two
        (2, 6.8, 1, 1),  # a loaded shared machine
        (2, 0.0, 2, 1),  # one worker per core: single-threaded workers
        (2, 0.0, 4, 1),  # more workers than cores: still at least one thread
        (16, 0.0, 2, 8),  # the share is cores / workers on a quiet machine
        (16, 6.0, 2, 5),  # ... and the idle cores' share under load
        (16, 30.0, 2, 1),  # a busier host than it has cores: one thread
        (8, -1.0, 1, 8),  # a nonsense negative load counts as none
    ],
)
def test_threads_are_the_idle_cores_share(cpus: int, load: float, workers: int, expected: int) -> None:
    assert default_threads_per_worker(cpus, load, workers) == expected


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_threads_never_oversubscribe_the_idle_cores(cpus: int, workers: int) -> None:
    """workers x threads stays within the idle cores (+ half a core per worker, the rounding), and
    within all cores; at least one thread always."""
    for tenth in range(0, 10 * cpus + 30):
        load = tenth / 10
        threads = default_threads_per_worker(cpus, load, workers)
        assert threads >= 1
        assert threads == 1 or workers * threads <= cpus - load + workers / 2
        assert threads == 1 or workers * threads <= cpus


def sweep_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: float, **experiment: object) -> config.Sweep:
    monkeypatch.setattr(config, "_cpu_count", lambda: 2)
    monkeypatch.setattr(config, "machine_load", lambda: load)
    doc = tiny_sweep(tmp_path, tmp_path / "data", experiment={"workers": 1, **experiment})
    return build_sweep(doc, Path("experiments.toml"), check_data=False)


def test_sweep_default_follows_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sweep_with(tmp_path, monkeypatch, load=0.1).threads_per_worker == 2
    assert sweep_with(tmp_path, monkeypatch, load=2.0).threads_per_worker == 1


def test_explicit_threads_per_worker_overrides_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sweep_with(tmp_path, monkeypatch, load=6.0, threads_per_worker=2).threads_per_worker == 2


def test_machine_load_sees_processes_that_just_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-minute average lags a minute behind busy processes that just started; the running count does not."""
    monkeypatch.setattr(config.os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    monkeypatch.setattr(config, "_running_now", lambda: 3)  # this process and two busy ones
    assert config.machine_load() == 2
    monkeypatch.setattr(config, "_running_now", lambda: 1)  # only this process: the average rules
    assert config.machine_load() == 0.2
