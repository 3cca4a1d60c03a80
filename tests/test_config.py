"""Sweep files: validation errors name the file and key; expansion is the grid (or zips)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scaletui.core.config import ConfigError, axis_value, build_sweep, load_sweep
from tests.conftest import tiny_sweep, write_toml


def sweep_from(tmp_path: Path, **sections: dict[str, Any]):
    return build_sweep(tiny_sweep(tmp_path, tmp_path / "data", **sections), Path("experiments.toml"))


def error_of(tmp_path: Path, **sections: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        sweep_from(tmp_path, **sections)
    return str(info.value)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"model": {"depth": 0}}, "experiments.toml: model.depth: must be a positive integer, got 0"),
        ({"model": {"depth": [2, 0]}}, "experiments.toml: model.depth: must be a positive integer, got 0"),
        ({"model": {"width": []}}, "experiments.toml: model.width: empty list: an axis needs at least one value"),
        ({"model": {"width": "wide"}}, "experiments.toml: model.width: must be a positive integer, got 'wide'"),
        ({"model": {"width": True}}, "experiments.toml: model.width: must be a positive integer, got true"),
        ({"model": {"arch": "transformer"}}, "experiments.toml: model.arch: must be one of mlp | resmlp | resnet"),
        ({"model": {"colour": 1}}, "experiments.toml: model.colour: unknown key"),
        ({"data": {"label_noise": 1.5}}, "experiments.toml: data.label_noise: must be a number in [0, 1), got 1.5"),
        ({"data": {"dataset": "imagenet"}}, "experiments.toml: data.dataset: must be one of"),
        ({"data": {"train_size": 20_000}}, "experiments.toml: data.train_size: must be at most 10000"),
        ({"train": {"lr": -1.0}}, "experiments.toml: train.lr: must be a positive number, got -1.0"),
        ({"train": {"lr": float("nan")}}, "experiments.toml: train.lr: must be a positive number, got nan"),
        ({"train": {"epochs": 3}}, "experiments.toml: train.epochs: give either train.steps or train.epochs"),
        ({"train": {"batch_size": 4096}}, "experiments.toml: train.batch_size: must not exceed"),
        ({"train": {"lr_scaling": "sqrt_params"}}, "experiments.toml: train.lr_ref_params: is required"),
        (
            {"train": {"schedule": "linear_warmup_cosine", "warmup_steps": 60}},
            "experiments.toml: train.warmup_steps: must be smaller than the run's steps (60), got 60",
        ),
        ({"train": {"device": "tpu"}}, "experiments.toml: train.device: must be auto | cpu | cuda | cuda:N"),
        ({"train": {"device": ["cpu", "cuda"]}}, "experiments.toml: train.device: cannot be a sweep axis"),
        (
            {"train": {"early_stopping": {"patience": -1}}},
            "experiments.toml: train.early_stopping.patience: must be a non-negative integer, got -1",
        ),
        ({"train": {"early_stopping": {"wait": 3}}}, "experiments.toml: train.early_stopping.wait: unknown key"),
        ({"model": {"arch": "resnet"}}, "experiments.toml: model.arch: resnet needs an image dataset"),
        ({"experiment": {"max_runs": 3}}, "experiments.toml: experiment.max_runs: the sweep expands to 4 runs"),
        (
            {"experiment": {"zip": [["model.width", "model.nope"]]}},
            "experiments.toml: experiment.zip: names an unknown key",
        ),
        (
            {"experiment": {"zip": [["model.width", "train.lr"]]}},
            "experiments.toml: experiment.zip: zipped axes must have the same length",
        ),
        ({"model": {"width": [8, 8]}}, "experiments.toml: model.width: has repeated values"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, sections: dict[str, Any], expected: str) -> None:
    message = error_of(tmp_path, **sections)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_unknown_section_and_missing_name(tmp_path: Path) -> None:
    doc = tiny_sweep(tmp_path, tmp_path)
    doc["trainer"] = {"lr": 1}
    with pytest.raises(ConfigError, match=r"^experiments.toml: trainer: unknown section"):
        build_sweep(doc, Path("experiments.toml"))
    doc = tiny_sweep(tmp_path, tmp_path)
    del doc["experiment"]["name"]
    with pytest.raises(ConfigError, match=r"^experiments.toml: experiment.name: is required"):
        build_sweep(doc, Path("experiments.toml"))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[model\nwidth = 3\n")
    with pytest.raises(ConfigError, match=r"^broken.toml: invalid TOML"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match=r"^nope.toml: file not found"):
        load_sweep(tmp_path / "nope.toml")


def test_unavailable_dataset_names_the_folder(tmp_path: Path) -> None:
    message = error_of(tmp_path, data={"dataset": "cifar10"})
    assert message.startswith("experiments.toml: data.dataset: cifar10 is not available offline")
    assert str(tmp_path / "data" / "cifar-10-batches-py") in message


def test_grid_expansion_covers_every_combination(tmp_path: Path) -> None:
    sweep = sweep_from(tmp_path, model={"width": [8, 16, 32], "depth": [1, 2]}, train={"seeds": [0, 1]})
    combos = {(r.model.width, r.model.depth, r.seed) for r in sweep.runs}
    assert len(sweep.runs) == 12 and len(combos) == 12
    assert sweep.axes == {"model.width": (8, 16, 32), "model.depth": (1, 2), "train.seeds": (0, 1)}
    assert len({r.key for r in sweep.runs}) == 12


def test_zipped_axes_advance_together(tmp_path: Path) -> None:
    sweep = sweep_from(
        tmp_path,
        experiment={"zip": [["model.depth", "model.dropout"]]},
        model={"width": [8, 16], "depth": [2, 4, 8], "dropout": [0.2, 0.1, 0.05]},
    )
    pairs = {(r.model.depth, r.model.dropout) for r in sweep.runs}
    assert pairs == {(2, 0.2), (4, 0.1), (8, 0.05)}
    assert len(sweep.runs) == 6


def test_epochs_resolve_to_steps_and_defaults_apply(tmp_path: Path) -> None:
    doc = tiny_sweep(tmp_path, tmp_path)
    del doc["train"]["steps"]
    doc["train"]["epochs"] = 2
    sweep = build_sweep(doc, Path("e.toml"))
    assert {r.train.steps for r in sweep.runs} == {2 * (512 // 32)}
    run = sweep.runs[0]
    assert run.model.init == "default" and run.train.grad_clip is None and run.data.normalize == "standard"
    assert axis_value(run, "train.seeds") == 0 and axis_value(run, "model.width") == 8


def test_key_is_stable_and_ignores_name_and_device(tmp_path: Path) -> None:
    a = sweep_from(tmp_path)
    b = sweep_from(tmp_path, experiment={"name": "other"}, train={"device": "cpu"})
    c = sweep_from(tmp_path, train={"lr": 1e-2})
    assert [r.key for r in a.runs] == [r.key for r in b.runs]
    assert not {r.key for r in a.runs} & {r.key for r in c.runs}


def test_grad_clip_false_disables(tmp_path: Path) -> None:
    assert sweep_from(tmp_path, train={"grad_clip": False}).runs[0].train.grad_clip is None
    assert sweep_from(tmp_path, train={"grad_clip": 1.0}).runs[0].train.grad_clip == 1.0


def test_default_experiments_toml_is_valid() -> None:
    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep(repo / "experiments.toml")
    widths = {r.model.width for r in sweep.runs}
    depths = {r.model.depth for r in sweep.runs}
    seeds = {r.seed for r in sweep.runs}
    # What issue 2 asks of the default sweep: at least 4 widths, 4 depths and 2 seeds.
    assert len(widths) >= 4 and len(depths) >= 4 and len(seeds) >= 2
    assert {r.data.dataset for r in sweep.runs} == {"mnist1d"}


def test_written_file_round_trips(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "s.toml", tiny_sweep(tmp_path, tmp_path))
    assert len(load_sweep(path).runs) == 4


# --------------------------------------------------------------------------- executor, ray_address, max_retries


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ({"executor": "slurm"}, "experiments.toml: experiment.executor: must be one of local | ray, got 'slurm'"),
        ({"executor": ["local", "ray"]}, "experiments.toml: experiment.executor: must be one of local | ray"),
        ({"executor": "ray", "ray_address": "head"}, 'experiments.toml: experiment.ray_address: must be "auto" or'),
        ({"executor": "ray", "ray_address": "head:0"}, "experiments.toml: experiment.ray_address: must be"),
        ({"executor": "ray", "ray_address": "ray://head:10001"}, "experiments.toml: experiment.ray_address: must be"),
        ({"executor": "ray", "ray_address": 6379}, "experiments.toml: experiment.ray_address: must be"),
        ({"ray_address": "auto"}, 'experiments.toml: experiment.ray_address: is only used with executor = "ray"'),
        ({"max_retries": -1}, "experiments.toml: experiment.max_retries: must be a non-negative integer, got -1"),
        ({"max_retries": 1.5}, "experiments.toml: experiment.max_retries: must be a non-negative integer, got 1.5"),
    ],
)
def test_bad_executor_keys_name_file_and_key(tmp_path: Path, experiment: dict[str, Any], expected: str) -> None:
    message = error_of(tmp_path, experiment=experiment)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_executor_keys_default_to_local_and_one_retry(tmp_path: Path) -> None:
    sweep = sweep_from(tmp_path)
    assert (sweep.executor, sweep.ray_address, sweep.max_retries) == ("local", None, 1)
    ray = sweep_from(tmp_path, experiment={"executor": "ray", "ray_address": "10.0.0.5:6379", "max_retries": 0})
    assert (ray.executor, ray.ray_address, ray.max_retries) == ("ray", "10.0.0.5:6379", 0)
    assert sweep_from(tmp_path, experiment={"executor": "ray", "ray_address": "auto"}).ray_address == "auto"


def test_run_options_override_the_executor_keys(tmp_path: Path) -> None:
    from scaletui.core.config import with_executor

    sweep = sweep_from(tmp_path)
    assert with_executor(sweep, None, None) == sweep
    joined = with_executor(sweep, None, "127.0.0.1:6379")  # an address implies ray
    assert (joined.executor, joined.ray_address) == ("ray", "127.0.0.1:6379")
    assert with_executor(joined, "local", None).executor == "local"
    with pytest.raises(ConfigError, match=r"^--ray-address: must be \"auto\" or host:port"):
        with_executor(sweep, "ray", "nowhere")
    with pytest.raises(ConfigError, match=r"^--ray-address: is only used with --executor ray$"):
        with_executor(sweep, "local", "auto")


def test_entrypoint_sweeps_run_on_ray_from_the_file_or_the_options(tmp_path: Path) -> None:
    from scaletui.core.config import with_executor

    train = tmp_path / "train.py"
    train.write_text("def main(config, run):\n    pass\n")
    doc = {"experiment": {"name": "own", "executor": "ray", "ray_address": "127.0.0.1:6379"},
           "train": {"entrypoint": "train.py:main", "steps": 10}}
    sweep = build_sweep(doc, tmp_path / "experiments.toml")
    assert (sweep.executor, sweep.ray_address) == ("ray", "127.0.0.1:6379")
    assert sweep.entrypoint is not None and sweep.entrypoint.target == "train.py:main"
    local = build_sweep({**doc, "experiment": {"name": "own"}}, tmp_path / "experiments.toml")
    joined = with_executor(local, None, "10.0.0.5:6379")  # --ray-address alone
    assert (joined.executor, joined.ray_address, joined.entrypoint) == ("ray", "10.0.0.5:6379", local.entrypoint)
    assert with_executor(local, "ray", None).executor == "ray"
