"""experiments.toml -> a validated, expanded sweep of frozen RunSpecs.

Every check happens here, before anything runs or touches the database, and
every failure is one `ConfigError` line naming the file and the key, e.g.
`experiments.toml: model.depth: must be a positive integer, got 0`.

Sweep rule: any list-valued key is an axis and the sweep is the grid over all
axes. `experiment.zip` names groups of axes that advance together instead
(for example depth and dropout, so dropout shrinks as depth grows). `train.seeds`
is always an axis. `[diagnostics]` sets the detectors' thresholds (never axes).

Sweeps that launch your code: `train.entrypoint = "train.py:main"` (a file, relative to the sweep
file's folder) or `"package.module:main"` names a function the runner calls with each run's config
and a run handle. Such a sweep keeps the shared keys (the `experiment` table, `train.seeds`,
`train.steps`, `train.lr`, `train.batch_size`, `model.width`, `model.depth`), validated as always,
and a `[user]` table of free keys passed through unchecked (a list there is an axis like any other);
every built-in-only key is an error. The target is checked statically here (the file or module
exists, and defines the function), without running any of the user's code.

This module is torch-free: `scaletui run --dry-run` and the app import it.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scaletui.core.datasets import DATASETS, IMAGE_DATASETS, missing_files, unavailable_message
from scaletui.core.specs import DataSpec, EarlyStopping, ModelSpec, RunSpec, TrainSpec
from scaletui.core.thresholds import Thresholds
from scaletui.core.vocabulary import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_DB,
    DEFAULT_LOSS_METRIC,
    DEFAULT_MAX_RETRIES,
    DEFAULT_SWEEP_FILE,
    RAY_ADDRESS_AUTO,
    Arch,
    BatchRuns,
    Choice,
    Device,
    EarlyStoppingMetric,
    ExecutorKind,
    Init,
    LossRule,
    LrScaling,
    Norm,
    Normalize,
    Optimizer,
    Schedule,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MAX_RUNS_DEFAULT = 10_000


class ConfigError(ValueError):
    """A bad sweep file: the message is the single line the user sees."""


# ---------------------------------------------------------------------------
# Value checks: each returns an error text ("must be ...") or None.
# ---------------------------------------------------------------------------
Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else "must be a positive integer"


def non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "must be a non-negative integer"


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "must be a positive number"


def non_negative_number(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "must be a non-negative number"


def fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "must be a number in [0, 1)"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def one_of(choice: type[Choice] | tuple[str, ...]) -> Check:
    """A value of a vocabulary choice (or of an explicit tuple, e.g. the dataset names)."""
    choices = choice if isinstance(choice, tuple) else choice.choices()

    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in choices else f"must be one of {' | '.join(choices)}"

    return check


def batch_runs_value(v: Any) -> str | None:
    """`experiment.batch_runs`: a BatchRuns choice (false is handled by `optional`)."""
    choices = " | ".join(f'"{c}"' for c in BatchRuns.choices())
    return None if isinstance(v, str) and v in BatchRuns.choices() else f"must be {choices} | false"


def device_name(v: Any) -> str | None:
    """auto, cpu, cuda or cuda:N."""
    ok = isinstance(v, str) and (v in Device.choices() or (v.startswith(f"{Device.CUDA}:") and v[5:].isdigit()))
    return None if ok else f"must be {' | '.join(Device.choices())} | cuda:N"


def ray_address(v: Any) -> str | None:
    """`experiment.ray_address`: "auto" or the head's host:port (the GCS address `ray start --head` prints).
    A `ray://` client address is refused: the executor's record writer must run on this machine's node."""
    problem = f'must be "{RAY_ADDRESS_AUTO}" or host:port (the address `ray start --head` printed)'
    if not isinstance(v, str) or v.startswith("ray://"):
        return problem
    if v == RAY_ADDRESS_AUTO:
        return None
    host, _, port = v.rpartition(":")
    return None if host.strip() and port.isdigit() and 0 < int(port) < 65536 else problem


def optional(check: Check) -> Check:
    """`false` switches an optional setting off (TOML has no null)."""

    def wrapped(v: Any) -> str | None:
        return None if v is False else check(v)

    return wrapped


@dataclass(frozen=True)
class Key:
    """One allowed key: its check, its default, and whether a list makes it an axis."""

    check: Check
    default: Any = None
    axis: bool = True


EXPERIMENT_KEYS: dict[str, Key] = {
    "name": Key(text, None, axis=False),
    "db": Key(text, DEFAULT_DB, axis=False),
    "data_dir": Key(text, DEFAULT_DATA_DIR, axis=False),
    "checkpoint_dir": Key(text, DEFAULT_CHECKPOINT_DIR, axis=False),
    "workers": Key(positive_int, None, axis=False),
    "threads_per_worker": Key(positive_int, None, axis=False),
    "loss_rule": Key(one_of(LossRule), LossRule.FINAL.value, axis=False),
    "max_runs": Key(positive_int, MAX_RUNS_DEFAULT, axis=False),
    "memory_limit_mb": Key(optional(positive_number), False, axis=False),  # per run; false = no limit
    "zip": Key(lambda v: None, [], axis=False),  # checked by _check_zip
    "batch_runs": Key(optional(batch_runs_value), BatchRuns.AUTO.value, axis=False),  # false: every run alone
    "loss": Key(text, DEFAULT_LOSS_METRIC, axis=False),  # the metric that is "the loss" (entrypoint sweeps)
    "higher_is_better": Key(boolean, False, axis=False),  # of `loss` (entrypoint sweeps)
    "executor": Key(one_of(ExecutorKind), ExecutorKind.LOCAL.value, axis=False),  # where runs train
    "ray_address": Key(ray_address, None, axis=False),  # executor = "ray": unset starts a Ray of this machine
    "max_retries": Key(non_negative_int, DEFAULT_MAX_RETRIES, axis=False),  # per run lost with its worker/node
}
DATA_KEYS: dict[str, Key] = {
    "dataset": Key(one_of(tuple(DATASETS)), DataSpec().dataset),
    "train_size": Key(positive_int, None),
    "label_noise": Key(fraction, 0.0),
    "normalize": Key(one_of(Normalize), DataSpec().normalize),
    "download": Key(boolean, False, axis=False),
}
MODEL_KEYS: dict[str, Key] = {
    "arch": Key(one_of(Arch), ModelSpec().arch),
    "width": Key(positive_int, 64),
    "depth": Key(positive_int, 2),
    "dropout": Key(fraction, 0.0),
    "init": Key(one_of(Init), ModelSpec().init),
    "norm": Key(one_of(Norm), ModelSpec().norm),
}
TRAIN_KEYS: dict[str, Key] = {
    "optimizer": Key(one_of(Optimizer), TrainSpec().optimizer),
    "lr": Key(positive_number, 1e-3),
    "lr_scaling": Key(one_of(LrScaling), TrainSpec().lr_scaling),
    "lr_ref_params": Key(positive_int, None),
    "momentum": Key(fraction, 0.9),
    "schedule": Key(one_of(Schedule), TrainSpec().schedule),
    "warmup_steps": Key(non_negative_int, 0),
    "weight_decay": Key(non_negative_number, 0.0),
    "batch_size": Key(positive_int, 128),
    "steps": Key(positive_int, None),
    "epochs": Key(positive_number, None),
    "grad_clip": Key(optional(positive_number), False),
    "eval_every": Key(positive_int, 100),
    "log_every": Key(positive_int, 25),
    "checkpoint_every": Key(positive_int, 500),
    "divergence_factor": Key(lambda v: None if _is_number(v) and v > 1 else "must be a number > 1", 10.0),
    "seeds": Key(non_negative_int, 0),  # one default value (a list here would be one run with seed [0])
    "device": Key(device_name, TrainSpec().device, axis=False),
    # How the sweep treats its runs, not part of any run's spec (so not of its key or training plan):
    # taken out of the grid in build_sweep (`_stop_when_hopeless`).
    "stop_when_hopeless": Key(boolean, False, axis=False),
}
EARLY_STOPPING_KEYS: dict[str, Key] = {
    "patience": Key(non_negative_int, 0),
    "metric": Key(one_of(EarlyStoppingMetric), EarlyStopping().metric),
    "min_delta": Key(non_negative_number, 0.0),
}
SECTIONS: dict[str, dict[str, Key]] = {
    "experiment": EXPERIMENT_KEYS,
    "data": DATA_KEYS,
    "model": MODEL_KEYS,
    "train": TRAIN_KEYS,
    "train.early_stopping": EARLY_STOPPING_KEYS,
}


@dataclass(frozen=True)
class Entrypoint:
    """`train.entrypoint`: the user's function a sweep's runs call (see services/entrypoint.py)."""

    target: str  # as written: "path/to/train.py:main" or "package.module:main"
    folder: Path  # the sweep file's folder: a path target is relative to it, and a module is looked for there too

    @property
    def module(self) -> str:
        return self.target.rsplit(":", 1)[0]

    @property
    def function(self) -> str:
        return self.target.rsplit(":", 1)[1]

    @property
    def is_path(self) -> bool:
        """A file path ("train.py", "sub/train.py") rather than a dotted module name."""
        return self.module.endswith(".py") or "/" in self.module or "\\" in self.module

    @property
    def path(self) -> Path:
        return self.folder / self.module


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: where it goes, how it runs, and every resolved run."""

    name: str
    source: Path
    toml_text: str
    db: Path
    data_dir: Path
    checkpoint_dir: Path
    workers: int
    threads_per_worker: int
    loss_rule: LossRule
    axes: dict[str, tuple[Any, ...]]  # dotted key -> values, in file order
    runs: tuple[RunSpec, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)  # the detectors' numbers ([diagnostics])
    memory_limit_mb: float | None = None  # a run estimated to need more fails as out of memory
    batch_runs: bool = True  # train same-shape runs as one batched model (experiment.batch_runs)
    entrypoint: Entrypoint | None = None  # train.entrypoint: the runs call the user's function
    entry_configs: tuple[dict[str, Any], ...] = ()  # with an entrypoint: each run's config, as `runs`
    user_axes: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # `user.<key>` -> values, in file order
    loss_metric: str = DEFAULT_LOSS_METRIC  # experiment.loss
    higher_is_better: bool = False  # experiment.higher_is_better
    executor: ExecutorKind = ExecutorKind.LOCAL  # experiment.executor (or `run --executor`)
    ray_address: str | None = None  # experiment.ray_address: None starts a local Ray, else "auto" or host:port
    max_retries: int = DEFAULT_MAX_RETRIES  # experiment.max_retries: retries of a run lost with its worker or node
    stop_when_hopeless: bool = False  # train.stop_when_hopeless: the monitor ends runs a smaller size beat

    @property
    def datasets(self) -> tuple[DataSpec, ...]:
        """Distinct data settings that must be prepared before training."""
        return tuple(dict.fromkeys(replace(r.data, label_noise=0.0) for r in self.runs))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def load_sweep(path: Path | str, *, db: Path | str | None = None, workers: int | None = None,
               check_data: bool = True) -> Sweep:
    """Read, validate and expand a sweep file; raise ConfigError with one line on any problem.

    `check_data=False` skips the check that datasets are on disk (a dry run plans without them and
    lists what is missing with `unavailable_datasets`)."""
    path = Path(path)
    err = _Errors(path.name)
    try:
        raw_text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise err.at("", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise err.at("", f"cannot read {path}: {e}") from None
    try:
        doc = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as e:
        raise err.at("", f"invalid TOML: {e}") from None
    return build_sweep(doc, path, raw_text, db_override=db, workers_override=workers, check_data=check_data)


def build_sweep(
    doc: Mapping[str, Any],
    source: Path,
    toml_text: str = "",
    *,
    db_override: Path | str | None = None,
    workers_override: int | None = None,
    check_data: bool = True,
) -> Sweep:
    err = _Errors(source.name)
    thresholds = _thresholds(doc.get("diagnostics", {}), err)
    entrypoint = _entrypoint(doc, source, err)
    user = _user_table(doc, entrypoint, err)
    sections = _split_sections(_without_own_keys(doc), err)
    exp = sections["experiment"]
    if exp.get("name") is None:
        raise err.at("experiment.name", "is required (a name for this sweep)")
    if entrypoint is not None:
        _check_entrypoint_keys(sections, err)
    else:
        _check_builtin_loss(exp, err)
    grid = _collect_axes(sections, err)  # checks the experiment keys' values too
    executor = _executor(exp, err)
    stop_when_hopeless = _stop_when_hopeless(grid, executor, err)
    grid.update(_collect_user_axes(user, err))
    zips = _check_zip(exp.get("zip", []), grid, err)
    max_runs = exp.get("max_runs", MAX_RUNS_DEFAULT)
    _check_grid_size(grid, zips, max_runs, err)
    data_dir = Path(exp.get("data_dir", EXPERIMENT_KEYS["data_dir"].default))
    points = list(_expand(grid, zips))
    runs = tuple(_resolve_run(exp["name"], point, err, data_dir, builtin=entrypoint is None) for point in points)
    entry_configs = tuple(_entry_config(point, sections) for point in points) if entrypoint else ()
    if check_data and entrypoint is None:
        _check_datasets_offline(runs, data_dir, err)
    workers = workers_override or exp.get("workers") or _default_workers()
    threads = exp.get("threads_per_worker") or default_threads_per_worker(_cpu_count(), machine_load(), workers)
    axes = {k: tuple(v) for k, v in grid.items() if len(v) > 1 or k == "train.seeds"}
    return Sweep(
        name=exp["name"],
        source=source,
        toml_text=toml_text,
        db=Path(db_override) if db_override else Path(exp.get("db", EXPERIMENT_KEYS["db"].default)),
        data_dir=data_dir,
        checkpoint_dir=Path(exp.get("checkpoint_dir", EXPERIMENT_KEYS["checkpoint_dir"].default)),
        workers=workers,
        threads_per_worker=threads,
        loss_rule=LossRule(exp.get("loss_rule", EXPERIMENT_KEYS["loss_rule"].default)),
        axes={k: v for k, v in axes.items() if not k.startswith(USER_PREFIX)},
        runs=runs,
        thresholds=thresholds,
        memory_limit_mb=exp.get("memory_limit_mb") or None,
        batch_runs=entrypoint is None and exp.get("batch_runs", EXPERIMENT_KEYS["batch_runs"].default) is not False,
        entrypoint=entrypoint,
        entry_configs=entry_configs,
        user_axes={k: v for k, v in axes.items() if k.startswith(USER_PREFIX)},
        loss_metric=exp.get("loss", DEFAULT_LOSS_METRIC),
        higher_is_better=exp.get("higher_is_better", False),
        executor=executor,
        ray_address=exp.get("ray_address"),
        max_retries=exp.get("max_retries", DEFAULT_MAX_RETRIES),
        stop_when_hopeless=stop_when_hopeless,
    )


def _stop_when_hopeless(grid: dict[str, list[Any]], executor: ExecutorKind, err: _Errors) -> bool:
    """`train.stop_when_hopeless`, taken out of the grid (no run's spec holds it). Only local workers can
    end a run with the reason, so it is an error with a Ray executor rather than a key that does nothing."""
    [on] = grid.pop("train.stop_when_hopeless")
    if on and executor is ExecutorKind.RAY:
        raise err.at("train.stop_when_hopeless", 'works with local workers only, not with executor = "ray"')
    return bool(on)


# ---------------------------------------------------------------------------
# Where the runs train: experiment.executor, ray_address, max_retries
# ---------------------------------------------------------------------------
def _executor(exp: Mapping[str, Any], err: _Errors) -> ExecutorKind:
    """The sweep's executor (its keys' values are checked already); a Ray-only key without it is an error, so
    nobody believes it applies."""
    executor = ExecutorKind(exp.get("executor", EXPERIMENT_KEYS["executor"].default))
    if executor is not ExecutorKind.RAY and "ray_address" in exp:
        raise err.at("experiment.ray_address", 'is only used with executor = "ray"')
    return executor


def with_executor(sweep: Sweep, executor: str | None, address: str | None) -> Sweep:
    """The sweep with `scaletui run --executor / --ray-address` applied (an address implies "ray"); bad
    values raise ConfigError naming the option."""
    if address is not None:
        problem = ray_address(address)
        if problem:
            raise ConfigError(f"--ray-address: {problem}, got {_show(address)}")
        if executor == ExecutorKind.LOCAL:
            raise ConfigError('--ray-address: is only used with --executor ray')
    kind = ExecutorKind(executor) if executor else ExecutorKind.RAY if address else sweep.executor
    return replace(sweep, executor=kind, ray_address=address if address is not None else sweep.ray_address)


# ---------------------------------------------------------------------------
# Sweeps that launch your code: train.entrypoint and [user]
# ---------------------------------------------------------------------------
USER_PREFIX = "user."
#: The keys an entrypoint sweep shares with built-in ones, and the config key each reaches the function as.
ENTRYPOINT_SHARED: dict[str, str] = {
    "train.seeds": "seed", "train.steps": "steps", "train.lr": "lr", "train.batch_size": "batch_size",
    "model.width": "width", "model.depth": "depth",
}  # fmt: skip
#: Experiment keys only the built-in loop uses: an error with an entrypoint, so nobody thinks they apply.
BUILTIN_ONLY_EXPERIMENT_KEYS = ("data_dir", "memory_limit_mb", "batch_runs")


def _without_own_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document without what `_split_sections` does not check: [diagnostics], [user], train.entrypoint."""
    out = {k: v for k, v in doc.items() if k not in ("diagnostics", "user")}
    if isinstance(out.get("train"), dict) and "entrypoint" in out["train"]:
        out["train"] = {k: v for k, v in out["train"].items() if k != "entrypoint"}
    return out


def _entrypoint(doc: Mapping[str, Any], source: Path, err: _Errors) -> Entrypoint | None:
    """`train.entrypoint`, checked: the form, then that the file or module exists and defines the function."""
    train = doc.get("train")
    if not isinstance(train, dict) or "entrypoint" not in train:
        return None
    target = train["entrypoint"]
    example = '"train.py:main" or "package.module:main"'
    if not isinstance(target, str) or target.count(":") < 1:
        raise err.value("train.entrypoint", f"must be {example}", target)
    module, function = target.rsplit(":", 1)
    if not module.strip() or not function.isidentifier():
        raise err.value("train.entrypoint", f"must be {example} (a function name after the colon)", target)
    entry = Entrypoint(target, source.resolve().parent)
    problem = _entry_path_problem(entry) if entry.is_path else _entry_module_problem(entry)
    if problem:
        raise err.at("train.entrypoint", problem)
    return entry


def _entry_path_problem(entry: Entrypoint) -> str | None:
    if not entry.path.is_file():
        return f"file not found: {entry.path}"
    return _defines_problem(entry.path, entry.function)


def _entry_module_problem(entry: Entrypoint) -> str | None:
    """Find the module (from the sweep file's folder, then sys.path) without running it."""
    if not all(part.isidentifier() for part in entry.module.split(".")):
        return f"{entry.module!r} is neither a .py file nor a module name (package.module)"
    added = str(entry.folder) not in sys.path
    if added:
        sys.path.insert(0, str(entry.folder))
    try:
        found = importlib.util.find_spec(entry.module)
    except Exception as e:  # a parent package that fails to import, or is not a package
        return f"cannot find module {entry.module!r}: {type(e).__name__}: {_first_line(e)}"
    finally:
        if added:
            sys.path.remove(str(entry.folder))
    if found is None:
        return f"no module named {entry.module!r} (looked in {entry.folder} and on sys.path)"
    origin = Path(found.origin) if found.origin and found.origin.endswith(".py") else None
    return _defines_problem(origin, entry.function) if origin is not None else None


def _defines_problem(path: Path, function: str) -> str | None:
    """None when the file's top level defines or imports `function` (read, never run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {path}: {e}"
    except SyntaxError as e:
        return f"{path}: line {e.lineno}: {e.msg}"
    return None if function in _top_level_names(tree) else f"{path} defines no function {function!r}"


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _user_table(doc: Mapping[str, Any], entrypoint: Entrypoint | None, err: _Errors) -> dict[str, Any]:
    if "user" not in doc:
        return {}
    if entrypoint is None:
        raise err.at("user", "only applies with train.entrypoint (your function gets these keys)")
    body = doc["user"]
    if not isinstance(body, dict):
        raise err.at("user", "must be a table, e.g. [user]")
    return dict(body)


def _check_entrypoint_keys(sections: dict[str, dict[str, Any]], err: _Errors) -> None:
    """Only shared keys with an entrypoint: a built-in-only key would silently do nothing."""
    for key in BUILTIN_ONLY_EXPERIMENT_KEYS:
        if key in sections["experiment"]:
            raise err.at(f"experiment.{key}", "does not apply with train.entrypoint (only the built-in loop uses it)")
    for section in ("data", "model", "train", "train.early_stopping"):
        for key in sections[section]:
            if f"{section}.{key}" not in ENTRYPOINT_SHARED:
                shared = ", ".join(ENTRYPOINT_SHARED)
                raise err.at(f"{section}.{key}", f"does not apply with train.entrypoint (shared keys: {shared}; "
                                                 "put your own settings in [user])")
    if "steps" not in sections["train"]:
        raise err.at("train.steps", "is required (how many steps each run trains; your function gets config['steps'])")


def _check_builtin_loss(exp: dict[str, Any], err: _Errors) -> None:
    """The built-in loop's loss is test_loss, lower is better: the keys that say otherwise need an entrypoint."""
    if exp.get("loss", DEFAULT_LOSS_METRIC) != DEFAULT_LOSS_METRIC:
        raise err.value("experiment.loss", f"applies with train.entrypoint only (built-in runs' loss is "
                                           f"{DEFAULT_LOSS_METRIC})", exp["loss"])
    if exp.get("higher_is_better", False) is not False:
        raise err.at("experiment.higher_is_better", f"applies with train.entrypoint only (built-in runs' "
                                                    f"{DEFAULT_LOSS_METRIC} is lower-is-better)")


def _collect_user_axes(user: dict[str, Any], err: _Errors) -> dict[str, list[Any]]:
    """`[user]` keys as candidate values: unchecked, except that each must be storable as the run's config."""
    grid: dict[str, list[Any]] = {}
    for key, value in user.items():
        dotted = USER_PREFIX + key
        if key in ENTRYPOINT_SHARED.values():
            shared = next(k for k, v in ENTRYPOINT_SHARED.items() if v == key)
            raise err.at(dotted, f"is a shared key: set {shared} instead")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise err.at(dotted, "empty list: an axis needs at least one value")
        for v in values:
            _check_value(dotted, _config_value, v, err)
        if len(set(map(_hashable, values))) != len(values):
            raise err.value(dotted, "has repeated values", value)
        grid[dotted] = values
    return grid


def _config_value(v: Any) -> str | None:
    """A value a run's config can hold exactly (JSON): no dates, no NaN or infinity."""
    if isinstance(v, dict):
        return next((p for p in map(_config_value, v.values()) if p), None)
    if isinstance(v, list):
        return next((p for p in map(_config_value, v) if p), None)
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number (a config value identifies the run)"
    if v is None or isinstance(v, (bool, int, float, str)):
        return None
    return "must be a number, string, boolean, list or table (dates and times are not config values)"


def _entry_config(point: dict[str, Any], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config an entrypoint run's function gets: seed and steps, the shared keys the file sets, and
    the [user] keys, by their plain names."""
    given = {f"{section}.{key}" for section in ("model", "train") for key in sections[section]}
    config = {name: point[dotted] for dotted, name in ENTRYPOINT_SHARED.items()
              if dotted in given or dotted in ("train.seeds", "train.steps")}
    config.update({k.removeprefix(USER_PREFIX): v for k, v in point.items() if k.startswith(USER_PREFIX)})
    return config


def sweep_db(path: Path | str = DEFAULT_SWEEP_FILE) -> Path | None:
    """The database a sweep file names (`experiment.db`, or the default), without validating the rest.

    `scaletui ls`, `fit`, `suggest` and the app find their database with this one rule (see
    `find_db`); reading only the one key means a sweep whose dataset is not on disk yet, or that
    has an error elsewhere, does not stop anyone from looking at results. None when there is no
    such file; ConfigError when it is not TOML or `experiment.db` is not a string.
    """
    path = Path(path)
    if not path.is_file():
        return None
    err = _Errors(path.name)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise err.at("", f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise err.at("", f"invalid TOML: {e}") from None
    experiment = doc.get("experiment", {})
    value = experiment.get("db", DEFAULT_DB) if isinstance(experiment, dict) else DEFAULT_DB
    _check_value("experiment.db", text, value, err)
    return Path(value)


def find_db(explicit: Path | str | None, sweep_file: Path | str = DEFAULT_SWEEP_FILE) -> Path:
    """Which database a command uses: `--db` when given, else the `experiment.db` of `./experiments.toml`
    when that file exists, else `runs/scaletui.db`. One rule for the app and every command."""
    if explicit is not None:
        return Path(explicit)
    return sweep_db(sweep_file) or Path(DEFAULT_DB)


class _Errors:
    """Builds the one-line messages: `file: key: problem`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def at(self, key: str, problem: str) -> ConfigError:
        where = f"{self.filename}: {key}: " if key else f"{self.filename}: "
        return ConfigError(where + problem)

    def value(self, key: str, problem: str, got: Any) -> ConfigError:
        return self.at(key, f"{problem}, got {_show(got)}")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    return str(v)


def _split_sections(doc: Mapping[str, Any], err: _Errors) -> dict[str, dict[str, Any]]:
    """Check section and key names; return each section's raw values (early_stopping split out)."""
    out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for section, body in doc.items():
        if section not in ("experiment", "data", "model", "train"):
            expected = [s for s in SECTIONS if "." not in s] + ["diagnostics"]
            raise err.at(section, f"unknown section (expected {', '.join(expected)})")
        if not isinstance(body, dict):
            raise err.at(section, "must be a table, e.g. [" + section + "]")
        for key, value in body.items():
            if section == "train" and key == "early_stopping":
                out["train.early_stopping"] = _early_stopping_table(value, err)
                continue
            if key not in SECTIONS[section]:
                raise err.at(f"{section}.{key}", _unknown_key_hint(section))
            out[section][key] = value
    return out


def _early_stopping_table(value: Any, err: _Errors) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise err.value("train.early_stopping", "must be a table with patience, metric, min_delta", value)
    for key in value:
        if key not in EARLY_STOPPING_KEYS:
            raise err.at(f"train.early_stopping.{key}", _unknown_key_hint("train.early_stopping"))
    return dict(value)


def _thresholds(body: Any, err: _Errors) -> Thresholds:
    """`[diagnostics]`: any field of diagnose.Thresholds by name; the rest keep their documented defaults."""
    if not isinstance(body, dict):
        raise err.at("diagnostics", "must be a table, e.g. [diagnostics]")
    defaults = Thresholds()
    allowed = [f.name for f in fields(Thresholds)]
    for key, value in body.items():
        if key not in allowed:
            raise err.at(f"diagnostics.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        _check_threshold(key, value, getattr(defaults, key), err)
    return replace(defaults, **body)


def _check_threshold(key: str, value: Any, default: Any, err: _Errors) -> None:
    """Type first (an integer field takes an integer), then Thresholds' own range rules for that field."""
    check = positive_int if _is_int(default) else positive_number
    _check_value(f"diagnostics.{key}", check, value, err)
    try:
        replace(Thresholds(), **{key: value})
    except ValueError as e:  # "threshold NAME must be ..., got X": keep the problem, name the key our way
        problem = str(e).removeprefix(f"threshold {key} ").rsplit(", got ", 1)[0]
        raise err.value(f"diagnostics.{key}", problem, value) from None


def _unknown_key_hint(section: str) -> str:
    return f"unknown key (allowed: {', '.join(SECTIONS[section])})"


def _collect_axes(sections: dict[str, dict[str, Any]], err: _Errors) -> dict[str, list[Any]]:
    """Every settable key as a list of candidate values, each value checked."""
    grid: dict[str, list[Any]] = {}
    for section, keys in SECTIONS.items():
        if section == "experiment":
            for key, spec in keys.items():
                if key in sections[section] and key != "zip":
                    _check_value(f"{section}.{key}", spec.check, sections[section][key], err)
            continue
        for key, spec in keys.items():
            dotted = f"{section}.{key}"
            if key not in sections[section]:
                grid[dotted] = [spec.default]
                continue
            value = sections[section][key]
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not spec.axis:
                raise err.value(dotted, "cannot be a sweep axis (give one value)", value)
            if isinstance(value, list) and not value:
                raise err.at(dotted, "empty list: an axis needs at least one value")
            for v in values:
                _check_value(dotted, spec.check, v, err)
            if len(set(map(_hashable, values))) != len(values):
                raise err.value(dotted, "has repeated values", value)
            grid[dotted] = values
    return grid


def _hashable(v: Any) -> Any:
    return (type(v).__name__, v) if not isinstance(v, (list, dict)) else repr(v)


def _check_value(dotted: str, check: Check, value: Any, err: _Errors) -> None:
    problem = check(value)
    if problem:
        raise err.value(dotted, problem, value)


def _check_zip(zips: Any, grid: dict[str, list[Any]], err: _Errors) -> list[list[str]]:
    """`zip = [["model.depth", "model.dropout"]]`: listed axes advance together."""
    if not isinstance(zips, list) or not all(isinstance(g, list) for g in zips):
        example = '[["model.depth", "model.dropout"]]'
        raise err.value("experiment.zip", f"must be a list of lists of keys, e.g. {example}", zips)
    seen: set[str] = set()
    for group in zips:
        if len(group) < 2:
            raise err.value("experiment.zip", "each group needs at least two keys", group)
        for key in group:
            if not isinstance(key, str) or key not in grid:
                raise err.value("experiment.zip", "names an unknown key (use section.key)", key)
            if key in seen:
                raise err.value("experiment.zip", "a key may be in only one group", key)
            seen.add(key)
        lengths = {key: len(grid[key]) for key in group}
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise err.at("experiment.zip", f"zipped axes must have the same length ({detail})")
    return zips


def _expand(grid: dict[str, list[Any]], zips: list[list[str]]) -> Iterator[dict[str, Any]]:
    """The grid over free axes, with each zip group as one axis of tuples."""
    zipped = {key for group in zips for key in group}
    factors: list[list[dict[str, Any]]] = []
    for group in zips:
        factors.append(
            [dict(zip(group, values, strict=True)) for values in zip(*(grid[k] for k in group), strict=True)]
        )
    for key, values in grid.items():
        if key not in zipped:
            factors.append([{key: v} for v in values])
    for combo in itertools.product(*factors):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        yield point


def _check_grid_size(grid: dict[str, list[Any]], zips: list[list[str]], max_runs: int, err: _Errors) -> None:
    zipped = {key for group in zips for key in group}
    n = math.prod(len(v) for k, v in grid.items() if k not in zipped)
    n *= math.prod(len(grid[g[0]]) for g in zips)
    if n > max_runs:
        raise err.at("experiment.max_runs", f"the sweep expands to {n} runs, more than max_runs = {max_runs}")


# ---------------------------------------------------------------------------
# One point of the grid -> one RunSpec
# ---------------------------------------------------------------------------
def _resolve_run(experiment: str, point: dict[str, Any], err: _Errors, data_dir: Path, *,
                 builtin: bool = True) -> RunSpec:
    """The point's RunSpec; for an entrypoint sweep (`builtin` False) it only carries the shared keys
    (the runner orders runs by its size), so the built-in loop's cross-key checks do not apply."""
    def section(prefix: str) -> dict[str, Any]:
        return {k.split(".")[-1]: v for k, v in point.items() if k.rsplit(".", 1)[0] == prefix}

    data_values = section("data")
    model_values = section("model")
    train_values = section("train")
    es_values = section("train.early_stopping")
    seed = train_values.pop("seeds")
    data = DataSpec(**data_values)
    model = ModelSpec(**model_values)
    train_values["steps"] = _resolve_steps(
        train_values.pop("steps"), train_values.pop("epochs"), data, train_values, err
    )
    train_values["grad_clip"] = train_values["grad_clip"] or None
    train = TrainSpec(early_stopping=EarlyStopping(**es_values), **train_values)
    if builtin:
        _check_run(data, model, train, err)
    return RunSpec(experiment=experiment, data=data, model=model, train=train, seed=seed)


def _resolve_steps(steps: int | None, epochs: float | None, data: DataSpec, train: dict[str, Any], err: _Errors) -> int:
    if steps is not None and epochs is not None:
        raise err.at("train.epochs", "give either train.steps or train.epochs, not both")
    if steps is not None:
        return steps
    if epochs is None:
        raise err.at("train.steps", "is required (or give train.epochs)")
    n_train = data.train_size or DATASETS[data.dataset].train_examples
    batches_per_epoch = math.ceil(n_train / int(train["batch_size"]))
    return max(1, math.ceil(epochs * batches_per_epoch))


def _check_run(data: DataSpec, model: ModelSpec, train: TrainSpec, err: _Errors) -> None:
    """Checks that involve more than one key: contradictions and impossible combinations."""
    info = DATASETS[data.dataset]
    if data.train_size is not None and data.train_size > info.train_examples:
        raise err.value("data.train_size", f"must be at most {info.train_examples} for {data.dataset}", data.train_size)
    n_train = data.train_size or info.train_examples
    if train.batch_size > n_train:
        raise err.value("train.batch_size", f"must not exceed the training set size ({n_train})", train.batch_size)
    if model.arch == Arch.RESNET and data.dataset not in IMAGE_DATASETS:
        images = ", ".join(sorted(IMAGE_DATASETS))
        raise err.at("model.arch", f"{Arch.RESNET} needs an image dataset ({images}), not {data.dataset}")
    if train.lr_scaling == LrScaling.SQRT_PARAMS and train.lr_ref_params is None:
        raise err.at(
            "train.lr_ref_params",
            f'is required when lr_scaling = "{LrScaling.SQRT_PARAMS}" (the size the base lr was tuned for)',
        )
    warmup = Schedule.LINEAR_WARMUP_COSINE
    if train.schedule == warmup and train.warmup_steps >= train.steps:
        raise err.value(
            "train.warmup_steps", f"must be smaller than the run's steps ({train.steps})", train.warmup_steps
        )
    if train.schedule != warmup and train.warmup_steps:
        raise err.at("train.warmup_steps", f'only applies with schedule = "{warmup}"')
    if model.norm == Norm.BATCH and train.batch_size < 2:
        raise err.value("train.batch_size", "must be at least 2 with batch normalisation", train.batch_size)


def unavailable_datasets(runs: Iterable[RunSpec], data_dir: Path) -> list[str]:
    """Why each dataset the runs need cannot be had offline (one line each; empty when all can)."""
    names = dict.fromkeys(r.data.dataset for r in runs if not r.data.download)
    return [unavailable_message(name, data_dir) for name in names if missing_files(name, data_dir)]


def _check_datasets_offline(runs: tuple[RunSpec, ...], data_dir: Path, err: _Errors) -> None:
    for problem in unavailable_datasets(runs, data_dir)[:1]:
        raise err.at("data.dataset", problem)


def _cpu_count() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def default_threads_per_worker(cpus: int, load: float, workers: int) -> int:
    """Default torch threads per worker: each worker's share of the cores that other processes leave
    idle, to the nearest whole core, at least 1 and at most cores / workers.

    Why: a thread beyond the idle cores adds no compute; it makes the worker's threads wait for each
    other behind the other load. Measured on 2 cores (benchmarks/threads.py), 2 threads against 1: at
    load 1.7 a width-64 MLP 3.8x slower (a width-512 one 1.67x faster); at load 5-10 a width-64 one
    7-9x slower and a width-512 one up to 6.7x slower. Small models lose the most, so under load the
    rule gives up the big models' gain rather than risk the small models' loss. `load` is the
    other runnable processes (see `machine_load`); rounding to the nearest core lets a quiet machine's
    background noise (under half a core per worker) still count as idle.
    `experiment.threads_per_worker` overrides this."""
    share = max(1, cpus // max(1, workers))
    idle_share = (cpus - max(0.0, load)) / max(1, workers)
    return max(1, min(share, math.floor(idle_share + 0.5)))


def machine_load() -> float:
    """Processes running beside this one: the larger of the 1-minute load average (smooth, but a minute
    behind a change) and the tasks runnable right now (/proc/loadavg's 4th field, less this process).
    On a system without either, 0 (a quiet machine). In a container the load is the host's, which
    errs toward fewer threads."""
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        return 0.0
    return max(one_minute, _running_now() - 1)


def _running_now() -> int:
    try:
        running_total = Path("/proc/loadavg").read_text(encoding="ascii").split()[3]  # "running/total"
        return int(running_total.split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0


def _default_workers() -> int:
    """One single-threaded worker per core: measured 1.3-1.85x faster than one multi-threaded process."""
    return _cpu_count()


def spec_fields(spec_type: type) -> list[str]:
    """Field names of a spec dataclass, for tables and the store's columns."""
    return [f.name for f in fields(spec_type)]


def axis_value(spec: RunSpec, dotted: str) -> Any:
    """The value a run took on an axis named as in the file (`model.width`, `train.seeds`, ...)."""
    if dotted == "train.seeds":
        return spec.seed
    if dotted == "train.epochs":  # epochs are resolved into steps
        return spec.train.steps
    node: Any = spec
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
