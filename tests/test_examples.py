"""Every shipped sweep file loads, says what it is for, and keeps to itself.

The examples are documentation that runs: a key renamed in config.py, or an example edited
into an invalid grid, must fail here rather than in front of a user following the README.
The two examples that need downloaded data must fail *helpfully* when the files are absent
(the one-line "put these files there" message) and validate once they are present.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from scaletui.core.config import ConfigError, build_sweep, load_sweep
from scaletui.core.datasets import DATASETS, dataset_folder
from tests.conftest import REPO, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SWEEP_FILES = sorted((REPO / "examples").glob("*.toml")) + [REPO / "experiments.toml"]
# Each file's header must answer these, in words a user can find (case-insensitive).
HEADER_PARTS = {"question": r"question", "what to look for": r"what you should see",
                "the command": r"scaletui run --headless"}


def doc_of(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def needs_files(path: Path) -> bool:
    return not DATASETS[doc_of(path).get("data", {}).get("dataset", "mnist1d")].generated


def header(path: Path) -> str:
    """The leading comment block, before the first table."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, text in enumerate(lines) if text.startswith("["))])


def with_data_dir(path: Path, data_dir: Path) -> dict[str, Any]:
    doc = doc_of(path)
    doc["experiment"]["data_dir"] = str(data_dir)
    return doc


def test_there_are_examples_for_every_investigation() -> None:
    names = {p.stem for p in SWEEP_FILES}
    assert {"depth_dropout", "lr_width", "init_optimizer", "label_noise", "seeds", "data_scaling",
            "mnist_mlp", "cifar10_resnet", "experiments", "lr_transfer", "dropout_depth"} <= names


@pytest.mark.parametrize(("name", "axis"), [("lr_transfer", "lr"), ("dropout_depth", "dropout")])
def test_configurator_examples_sweep_enough_sizes_for_a_backtest(name: str, axis: str) -> None:
    """`scaletui suggest --backtest` holds out the largest swept size and needs MIN_SIZES more, each with
    at least MIN_LRS values of the swept quantity; these two examples exist to feed it."""
    from scaletui.services.suggest import MIN_LRS, MIN_SIZES

    runs = load_sweep(REPO / "examples" / f"{name}.toml").runs
    values: dict[tuple[int, int], set[float]] = {}
    for r in runs:
        value = r.train.lr if axis == "lr" else r.model.dropout
        values.setdefault((r.model.width, r.model.depth), set()).add(value)
    assert len(values) >= MIN_SIZES + 1
    assert all(len(v) >= MIN_LRS for v in values.values())


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_header_says_question_what_to_see_and_command(path: Path) -> None:
    text = header(path)
    assert text.strip(), f"{path.name} has no header comment"
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())
    missing = [name for name, pattern in HEADER_PARTS.items() if not re.search(pattern, text, re.IGNORECASE)]
    assert not missing, f"{path.name} header lacks: {', '.join(missing)}"


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if not needs_files(p)], ids=lambda p: p.name)
def test_offline_sweep_loads(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.runs
    assert sweep.name == doc_of(path)["experiment"]["name"]


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if needs_files(p)], ids=lambda p: p.name)
def test_sweep_needing_files_says_where_to_put_them(path: Path, tmp_path: Path) -> None:
    dataset = doc_of(path)["data"]["dataset"]
    with pytest.raises(ConfigError, match=re.escape(f"put {', '.join(DATASETS[dataset].files)} in")) as err:
        build_sweep(with_data_dir(path, tmp_path), path)
    assert str(dataset_folder(dataset, tmp_path)) in str(err.value)


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if needs_files(p)], ids=lambda p: p.name)
def test_sweep_needing_files_validates_once_they_are_there(path: Path, tmp_path: Path) -> None:
    dataset = doc_of(path)["data"]["dataset"]
    folder = dataset_folder(dataset, tmp_path)
    folder.mkdir(parents=True)
    for name in DATASETS[dataset].files:
        (folder / name).touch()  # validation checks presence; the loader reads them at run time
    assert build_sweep(with_data_dir(path, tmp_path), path).runs


def test_each_example_has_its_own_experiment_and_database() -> None:
    """Runs are shared by config key within an experiment: two examples with one name would mix."""
    experiments = [doc_of(p)["experiment"] for p in SWEEP_FILES]
    names = [e["name"] for e in experiments]
    dbs = [e.get("db", "runs/scaletui.db") for e in experiments]
    assert len(set(names)) == len(names), names
    assert len(set(dbs)) == len(dbs), dbs


def test_dry_run_of_the_default_sweep_lists_its_runs() -> None:
    done = run_cli("run", "--dry-run", "experiments.toml")
    assert done.returncode == 0, done.stderr
    assert f"{len(load_sweep(REPO / 'experiments.toml').runs)} runs" in done.stdout


def test_dry_run_without_downloaded_files_plans_and_warns_in_one_line(tmp_path: Path) -> None:
    done = run_cli("run", "--dry-run", str(REPO / "examples" / "mnist_mlp.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the plan is printed; the data is a real run's business
    assert "64 runs over" in done.stdout
    assert done.stderr.count("\n") == 1
    assert "mnist is not available offline: put train-images-idx3-ubyte" in done.stderr
    assert "runs/data/MNIST/raw" in done.stderr
