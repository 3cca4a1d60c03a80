"""`[diagnostics]` in a sweep file: the detectors' thresholds, by the names of `diagnose.Thresholds`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from scaletui.analysis.diagnose import Thresholds
from scaletui.core.config import ConfigError, load_sweep
from tests.conftest import run_cli, tiny_sweep, write_toml


def sweep_file(tmp_path: Path, diagnostics: Any) -> Path:
    doc: dict[str, Any] = tiny_sweep(tmp_path, tmp_path / "data")
    doc["diagnostics"] = diagnostics
    return write_toml(tmp_path / "experiments.toml", doc)


def test_no_section_means_the_documented_defaults(tmp_path: Path) -> None:
    doc = tiny_sweep(tmp_path, tmp_path / "data")
    sweep = load_sweep(write_toml(tmp_path / "experiments.toml", doc))
    assert sweep.thresholds == Thresholds()


def test_set_keys_override_and_the_rest_keep_defaults(tmp_path: Path) -> None:
    sweep = load_sweep(sweep_file(tmp_path, {"divergence_factor": 20, "grad_window": 3, "plateau_window": 0.25}))
    th = sweep.thresholds
    assert (th.divergence_factor, th.grad_window, th.plateau_window) == (20, 3, 0.25)
    assert th.smooth_window == Thresholds().smooth_window
    assert th.grad_ratio_vanishing == Thresholds().grad_ratio_vanishing


def test_every_threshold_field_is_accepted_at_its_default(tmp_path: Path) -> None:
    defaults = {f.name: getattr(Thresholds(), f.name) for f in fields(Thresholds)}
    assert load_sweep(sweep_file(tmp_path, defaults)).thresholds == Thresholds()


def test_diagnostics_is_not_a_train_key_and_train_divergence_factor_is_separate(tmp_path: Path) -> None:
    """train.divergence_factor stops a run in the engine; diagnostics.divergence_factor is the detector's."""
    doc = tiny_sweep(tmp_path, tmp_path / "data", train={"divergence_factor": 50.0})
    doc["diagnostics"] = {"divergence_factor": 5.0}
    sweep = load_sweep(write_toml(tmp_path / "experiments.toml", doc))
    assert sweep.thresholds.divergence_factor == 5.0
    assert {r.train.divergence_factor for r in sweep.runs} == {50.0}


@pytest.mark.parametrize(
    ("diagnostics", "expected"),
    [
        ({"divergence_factr": 3.0},
         "experiments.toml: diagnostics.divergence_factr: unknown key (allowed: smooth_window,"),
        ({"smooth_window": 2.5}, "experiments.toml: diagnostics.smooth_window: must be a positive integer, got 2.5"),
        ({"smooth_window": 0}, "experiments.toml: diagnostics.smooth_window: must be a positive integer, got 0"),
        ({"grad_window": "5"}, "experiments.toml: diagnostics.grad_window: must be a positive integer, got '5'"),
        ({"plateau_z": True}, "experiments.toml: diagnostics.plateau_z: must be a positive number, got true"),
        ({"plateau_z": -1.0}, "experiments.toml: diagnostics.plateau_z: must be a positive number, got -1.0"),
        ({"grad_ratio_exploding": [10.0, 100.0]},
         "experiments.toml: diagnostics.grad_ratio_exploding: must be a positive number, got [10.0, 100.0]"),
        ({"divergence_floor": 1.5}, "experiments.toml: diagnostics.divergence_floor: must be below 1, got 1.5"),
        ({"collapse_factor": 0.5}, "experiments.toml: diagnostics.collapse_factor: must be above 1, got 0.5"),
        ("strict", "experiments.toml: diagnostics: must be a table"),
    ],
)
def test_bad_thresholds_are_one_line_naming_file_and_key(tmp_path: Path, diagnostics: Any, expected: str) -> None:
    path = sweep_file(tmp_path, diagnostics) if isinstance(diagnostics, dict) else None
    if path is None:  # a non-table value has to be written by hand: write_toml only writes tables
        path = tmp_path / "experiments.toml"
        write_toml(path, tiny_sweep(tmp_path, tmp_path / "data"))
        path.write_text(f'diagnostics = "{diagnostics}"\n' + path.read_text(), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_unknown_section_message_lists_diagnostics(tmp_path: Path) -> None:
    doc: dict[str, Any] = tiny_sweep(tmp_path, tmp_path / "data")
    doc["diagnostic"] = {"smooth_window": 10}
    with pytest.raises(ConfigError, match=r"diagnostic: unknown section \(expected .*, diagnostics\)"):
        load_sweep(write_toml(tmp_path / "experiments.toml", doc))


def test_cli_bad_threshold_is_exit_2_one_line(tmp_path: Path) -> None:
    out = run_cli("run", "--dry-run", str(sweep_file(tmp_path, {"rise_evals": 0})))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: experiments.toml: diagnostics.rise_evals: must be a positive integer, got 0"
