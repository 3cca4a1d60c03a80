"""Property tests: broken experiments.toml files always end as ONE ConfigError line naming file and key.

Hypothesis generates the ways sweep files go wrong (bad TOML, wrong types, unknown keys,
out-of-range and contradictory values, empty axes, huge grids, unknown datasets and
architectures) on top of a valid tiny sweep, and checks the message: one line, starting with
`experiments.toml: <key>: `. The validity rules used to *generate* bad values are written here
from the README's tables, not taken from scaletui.core.config, so the two can disagree and fail.
A last property throws arbitrary documents at the loader: a Sweep or a ConfigError, nothing else.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scaletui.core.config import ConfigError, Sweep, load_sweep
from tests.conftest import toml_value

FILE = "experiments.toml"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The README's rules, per key: (section, key) -> does this value satisfy the rule?
Rule = Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def positive_int(v: Any) -> bool:
    return is_int(v) and v > 0


def non_negative_int(v: Any) -> bool:
    return is_int(v) and v >= 0


def positive(v: Any) -> bool:
    return is_num(v) and v > 0


def fraction(v: Any) -> bool:
    return is_num(v) and 0 <= v < 1


def one_of(*choices: str) -> Rule:
    return lambda v: isinstance(v, str) and v in choices


RULES: dict[tuple[str, str], Rule] = {
    ("experiment", "workers"): positive_int,
    ("experiment", "threads_per_worker"): positive_int,
    ("experiment", "max_runs"): positive_int,
    ("experiment", "loss_rule"): one_of("final", "best", "smoothed"),
    ("data", "dataset"): one_of("mnist1d", "mnist", "fashion_mnist", "cifar10"),
    ("data", "train_size"): positive_int,
    ("data", "label_noise"): fraction,
    ("data", "normalize"): one_of("standard", "none"),
    ("model", "arch"): one_of("mlp", "resmlp", "resnet"),
    ("model", "width"): positive_int,
    ("model", "depth"): positive_int,
    ("model", "dropout"): fraction,
    ("model", "init"): one_of("default", "he", "xavier", "orthogonal"),
    ("model", "norm"): one_of("none", "batch", "layer"),
    ("train", "optimizer"): one_of("sgd", "momentum", "adam", "adamw"),
    ("train", "lr"): positive,
    ("train", "momentum"): fraction,
    ("train", "weight_decay"): lambda v: is_num(v) and v >= 0,
    ("train", "batch_size"): positive_int,
    ("train", "steps"): positive_int,
    ("train", "eval_every"): positive_int,
    ("train", "log_every"): positive_int,
    ("train", "checkpoint_every"): positive_int,
    ("train", "divergence_factor"): lambda v: is_num(v) and v > 1,
    ("train", "seeds"): non_negative_int,
}
AXIS_KEYS = [k for k in RULES if k[0] != "experiment"]

scalars = st.one_of(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=3), st.fixed_dictionaries({"x": scalars}))
names = st.from_regex(r"[a-z][a-z0-9_]{0,14}", fullmatch=True)


def base(data_dir: Path) -> dict[str, dict[str, Any]]:
    """A valid sweep of 4 tiny runs."""
    return {
        "experiment": {"name": "props", "db": "unused.db", "data_dir": str(data_dir), "workers": 1},
        "data": {"dataset": "mnist1d", "train_size": 512},
        "model": {"arch": "mlp", "width": [8, 16], "depth": [1, 2]},
        "train": {"lr": 1e-3, "batch_size": 32, "steps": 50, "seeds": [0]},
    }


def dumps(doc: dict[str, Any]) -> str:
    """TOML text: top-level values, then tables; nested dicts become [a.b] sub-tables."""
    lines = [f"{k} = {value_text(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, body in doc.items():
        if isinstance(body, dict):
            lines += table_lines(name, body)
    return "\n".join(lines) + "\n"


def table_lines(name: str, body: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"] + [f"{k} = {value_text(v)}" for k, v in body.items() if not isinstance(v, dict)]
    for key, sub in body.items():
        if isinstance(sub, dict):
            lines += table_lines(f"{name}.{key}", sub)
    return lines


def value_text(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {value_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return toml_value(v)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


def load_text(folder: Path, text: str) -> Sweep:
    path = folder / FILE
    path.write_text(text, encoding="utf-8")
    return load_sweep(path)


def refused(folder: Path, doc_or_text: dict[str, Any] | str) -> str:
    """The one-line message the loader gives for this file (fails the test if it loads)."""
    text = doc_or_text if isinstance(doc_or_text, str) else dumps(doc_or_text)
    with pytest.raises(ConfigError) as info:
        load_text(folder, text)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    assert message.startswith(f"{FILE}: "), message
    return message


def assert_names(message: str, key: str) -> None:
    assert message.startswith(f"{FILE}: {key}: "), (key, message)


# --------------------------------------------------------------------------- valid files load


optional_keys = st.sets(st.sampled_from([("train", "seeds"), ("experiment", "workers"), ("data", "train_size"),
                                         ("model", "arch"), ("train", "lr"), ("train", "batch_size")]))


@SETTINGS
@given(dropped=optional_keys)
def test_valid_sweeps_load_with_any_optional_key_left_out(folder: Path, dropped: set[tuple[str, str]]) -> None:
    doc = base(folder)
    for section, key in dropped:
        doc[section].pop(key)
    if ("data", "train_size") in dropped:
        doc["train"]["batch_size"] = 32
    sweep = load_text(folder, dumps(doc))
    assert len(sweep.runs) == 4
    assert all(isinstance(run.seed, int) for run in sweep.runs)


# --------------------------------------------------------------------------- one kind of mistake each


@SETTINGS
@given(garbage=st.text(max_size=40), cut=st.integers(min_value=1, max_value=200))
def test_bad_toml_names_the_file(folder: Path, garbage: str, cut: int) -> None:
    text = dumps(base(folder))
    # A "[" alone on its line is never valid TOML (a header needs a key; no string or array can hold it
    # there). A bare "\n[" was not enough: garbage "0]" at cut 1 made "[0]\n[experiment]", a valid file.
    broken = text[:cut] + garbage + "\n[\n" + text[cut:]
    message = refused(folder, broken)
    assert message.startswith(f"{FILE}: invalid TOML: ") or message.startswith(f"{FILE}: cannot read")


@SETTINGS
@given(section=st.sampled_from(["experiment", "data", "model", "train"]), key=names, value=values)
def test_unknown_keys_are_named(folder: Path, section: str, key: str, value: Any) -> None:
    allowed = {k for s, k in RULES if s == section} | {"name", "db", "data_dir", "checkpoint_dir", "zip",
                                                        "memory_limit_mb", "download", "lr_scaling",
                                                        "lr_ref_params", "schedule", "warmup_steps", "epochs",
                                                        "grad_clip", "device", "early_stopping"}
    assume(key not in allowed)
    doc = base(folder)
    doc[section][key] = value
    assert_names(refused(folder, doc), f"{section}.{key}")


@SETTINGS
@given(section=names, value=values)
def test_unknown_sections_are_named(folder: Path, section: str, value: Any) -> None:
    assume(section not in ("experiment", "data", "model", "train", "diagnostics"))
    doc: dict[str, Any] = base(folder)
    doc[section] = {"x": value} if not isinstance(value, dict) else value
    assert_names(refused(folder, doc), section)


@SETTINGS
@given(target=st.sampled_from(sorted(RULES)), value=values, as_list=st.booleans())
def test_values_that_break_the_documented_rules_are_named(folder: Path, target: tuple[str, str], value: Any,
                                                          as_list: bool) -> None:
    section, key = target
    rule = RULES[target]
    bad = [value] if not isinstance(value, list) else value
    assume(not all(rule(v) for v in bad) or isinstance(value, dict))
    doc = base(folder)
    doc[section][key] = (bad + [] if as_list and section != "experiment" else value)
    assert_names(refused(folder, doc), f"{section}.{key}")


@SETTINGS
@given(target=st.sampled_from(AXIS_KEYS))
def test_empty_axes_are_named(folder: Path, target: tuple[str, str]) -> None:
    doc = base(folder)
    doc[target[0]][target[1]] = []
    assert_names(refused(folder, doc), f"{target[0]}.{target[1]}")


@SETTINGS
@given(widths=st.integers(2, 60), depths=st.integers(2, 60), seeds=st.integers(1, 40), max_runs=st.integers(1, 500))
def test_grids_larger_than_max_runs_are_refused_before_expanding(folder: Path, widths: int, depths: int,
                                                                  seeds: int, max_runs: int) -> None:
    assume(widths * depths * seeds > max_runs)
    doc = base(folder)
    doc["experiment"]["max_runs"] = max_runs
    doc["model"].update(width=list(range(1, widths + 1)), depth=list(range(1, depths + 1)))
    doc["train"]["seeds"] = list(range(seeds))
    assert_names(refused(folder, doc), "experiment.max_runs")


def test_a_huge_grid_is_refused_at_the_default_limit(folder: Path) -> None:
    doc = base(folder)
    doc["model"].update(width=list(range(1, 201)), depth=list(range(1, 201)))  # 40,000 runs
    assert "40000 runs" in refused(folder, doc)


@SETTINGS
@given(dataset=names, arch=names, which=st.sampled_from(["data.dataset", "model.arch"]))
def test_unknown_datasets_and_architectures_are_named(folder: Path, dataset: str, arch: str, which: str) -> None:
    doc = base(folder)
    if which == "data.dataset":
        assume(dataset not in ("mnist1d", "mnist", "fashion_mnist", "cifar10"))
        doc["data"]["dataset"] = dataset
    else:
        assume(arch not in ("mlp", "resmlp", "resnet"))
        doc["model"]["arch"] = arch
    assert_names(refused(folder, doc), which)


def contradiction(n: int) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(key to name, changes) for settings that are each valid but contradict each other."""
    return [
        ("train.epochs", {"train": {"epochs": n}}),  # with steps
        ("train.warmup_steps", {"train": {"warmup_steps": n}}),  # with schedule = constant
        ("train.warmup_steps", {"train": {"schedule": "linear_warmup_cosine", "warmup_steps": 50 + n}}),
        ("train.batch_size", {"train": {"batch_size": 512 + n}}),  # more than train_size
        ("data.train_size", {"data": {"train_size": 10_000 + n}}),  # more than MNIST-1D has
        ("model.arch", {"model": {"arch": "resnet"}}),  # on MNIST-1D
        ("train.lr_ref_params", {"train": {"lr_scaling": "sqrt_params"}}),
        ("experiment.zip", {"experiment": {"zip": [["model.width", "train.seeds"]]}}),  # lengths 2 and 1
        ("experiment.zip", {"experiment": {"zip": [["model.width", f"model.w{n}"]]}}),
        ("train.batch_size", {"model": {"norm": "batch"}, "train": {"batch_size": 1}}),
    ]


@SETTINGS
@given(n=st.integers(1, 1000), index=st.integers(0, 9))
def test_contradictory_settings_are_named(folder: Path, n: int, index: int) -> None:
    key, changes = contradiction(n)[index]
    doc = base(folder)
    for section, body in changes.items():
        doc[section].update(body)
    assert_names(refused(folder, doc), key)


def test_missing_required_keys_are_named(folder: Path) -> None:
    for section, key in (("experiment", "name"), ("train", "steps")):
        doc = base(folder)
        doc[section].pop(key)
        assert_names(refused(folder, doc), f"{section}.{key}")


# --------------------------------------------------------------------------- anything at all


documents = st.dictionaries(
    st.sampled_from(["experiment", "data", "model", "train", "diagnostics", "extra"]),
    st.one_of(scalars, st.dictionaries(names, values, max_size=4)),
    max_size=5,
)


@SETTINGS
@given(mess=documents)
def test_any_document_gives_a_sweep_or_one_config_error_line(folder: Path, mess: dict[str, Any]) -> None:
    doc = copy.deepcopy(base(folder))
    for section, body in mess.items():
        if isinstance(body, dict) and isinstance(doc.get(section), dict):
            doc[section].update(body)
        else:
            doc[section] = body
    text = dumps(doc)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assume(False)  # our writer made something TOML cannot say (e.g. a key set twice)
    try:
        sweep = load_text(folder, text)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{FILE}: ")
        return
    assert 1 <= len(sweep.runs) <= 10_000
