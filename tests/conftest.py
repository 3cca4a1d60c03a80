"""Shared fixtures: tiny sweep files written as real TOML, and one shared MNIST-1D cache.

Generating MNIST-1D takes a few seconds, so every test that trains points its
sweep's `data_dir` at one folder shared by the whole run.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.specs import DataSpec
from scaletui.engine.dataset_files import prepare_dataset
from tests.durations import load as load_durations

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files run first. pytest-xdist (`--dist loadfile`) hands whole files to its processes in
    this order, so the long files start early and the short ones fill the end, instead of one process
    finishing a long file alone while the other idles. Long: the seconds measured per file
    (tests/durations.json, refreshed by tests/durations.py); a file not measured yet counts 5 s per slow
    test. (Ordered by the count of slow tests alone, unmarked files such as the app's ran last.)"""
    measured = load_durations()
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))

    def seconds(path: Path) -> float:
        return measured.get(path.relative_to(REPO).as_posix(), 5.0 * slow[path])

    first_seen: dict[Path, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)
    items.sort(key=lambda item: (-seconds(item.path), first_seen[item.path]))  # stable: a file keeps its order


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(path: Path, doc: dict[str, dict[str, Any]]) -> Path:
    """A minimal TOML writer (tables of scalars/lists, one level of sub-tables)."""
    lines: list[str] = []
    for section, body in doc.items():
        lines.append(f"[{section}]")
        subtables = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if not isinstance(v, dict)]
        for name, sub in subtables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MNIST-1D cache for the whole test run, generated once (~5 s of CPU). pytest-xdist's processes
    each have a temporary root of their own under one shared folder: the cache lives in that folder, and the
    first process to take the lock writes the file while the others wait for it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "mnist1d-cache"
    folder.mkdir(exist_ok=True)
    with (root / "mnist1d-cache.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        prepare_dataset(DataSpec(dataset="mnist1d"), folder)
    return folder


def tiny_sweep(tmp_path: Path, data_dir: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A sweep of 4 tiny MLPs on MNIST-1D that trains in seconds; override any section's keys."""
    doc: dict[str, dict[str, Any]] = {
        "experiment": {
            "name": "tiny",
            "db": str(tmp_path / "runs.db"),
            "data_dir": str(data_dir),
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            # One worker: every worker process pays ~7 s of CPU importing torch (and torch._dynamo at its
            # first optimizer), most of a tiny sweep's cost; tests about two runs at once ask for 2.
            "workers": 1,
        },
        "data": {"dataset": "mnist1d", "train_size": 512},
        "model": {"arch": "mlp", "width": [8, 16], "depth": [1, 2]},
        "train": {"optimizer": "adam", "lr": 3e-3, "batch_size": 32, "steps": 60, "eval_every": 20,
                  "log_every": 10, "checkpoint_every": 20, "seeds": [0]},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


@pytest.fixture
def make_sweep(tmp_path: Path, shared_data_dir: Path) -> Callable[..., Path]:
    """Write a tiny sweep file in tmp_path, with per-section overrides; returns its path."""

    def make(name: str = "experiments.toml", **sections: dict[str, Any]) -> Path:
        return write_toml(tmp_path / name, tiny_sweep(tmp_path, shared_data_dir, **sections))

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """The real `scaletui` command in a subprocess (stdout is a pipe, so output is plain)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "scaletui", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def session_gone(proc: subprocess.Popen[str]) -> bool:
    """True once no process of the sweep's session is left (workers exit after their runner)."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def reap_sessions() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes registered here are SIGKILLed at teardown if a failed test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None or not session_gone(proc):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=30)
