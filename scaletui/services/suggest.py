"""The configurator against a database: which learning rate for a size not yet run, and a sweep file for it.

`analysis.configurator` is pure (trials in, proposal out); this module supplies the trials. It reads the
finished runs of one experiment (read-only), keeps those of one *context* (dataset, architecture,
optimizer: best rates of Adam and SGD runs do not belong on one line), turns each into an `LrTrial` with
its effective learning rate and its loss by the experiment's rule (a diverged run counts as worst), and
lets `propose_lr` fit or fall back. Only sizes that tried at least `MIN_LRS` rates enter the fit, so an
experiment that never swept the learning rate yields a sqrt-params fallback anchored at its best run.

With no finished runs at all (an empty or missing database) there is nothing to learn from: the proposal
scales scaletui's own defaults (`[train] lr` 1e-3 at `[model] width` 64) with the maximal-update-style
width rule, and says so with confidence "low".

Target size: MLP and residual-MLP parameter counts are computed from the config (`mlp_params`), so nothing
here imports torch. `sweep_file_text` writes a complete, runnable one-run sweep: the config of the
context's best run with the target width, depth and the proposed rate.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scaletui.analysis.configurator import LrTrial, Proposal, mlp_params, propose_lr
from scaletui.datasets import DATASETS
from scaletui.records import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.store.reader import Reader

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

FINISHED = ("done", "early_stopped", "diverged")
MIN_SIZES = 3  # swept sizes needed for the power-law fit
MIN_LRS = 3  # distinct learning rates a size needs to count as swept
DEFAULT_LR = TrainSpec().lr  # the fallback anchor with no data: scaletui's defaults
DEFAULT_WIDTH = ModelSpec().width


class SuggestError(ValueError):
    """A request that cannot be answered; the message is the one line the user sees."""


@dataclass(frozen=True)
class Suggestion:
    """A proposal with where it came from and the run config it is built on."""

    proposal: Proposal
    experiment: str | None  # None: no finished runs to learn from
    context: str  # e.g. "mnist1d mlp adam, 12 finished runs"
    base: RunSpec  # the best run of the context (defaults without data), to build a sweep file from
    width: int
    depth: int
    dirs: dict[str, str] = field(default_factory=dict)  # the experiment's data_dir / checkpoint_dir, if set
    seeds: tuple[int, ...] = (0,)  # every seed the context ran: the new size is judged on the same seeds


def suggest_for(db_path: Path, experiment: str | None, width: int, depth: int, *, rule: str = "auto") -> Proposal:
    """The proposed learning rate for a `width` x `depth` model of the experiment's kind."""
    return suggestion(db_path, experiment, width, depth, rule=rule).proposal


def suggestion(db_path: Path, experiment: str | None, width: int, depth: int, *, rule: str = "auto") -> Suggestion:
    """`suggest_for` with its context: the experiment used, what was kept, and the base run config."""
    if width < 1 or depth < 1:
        raise SuggestError(f"width and depth must be positive integers, got width {width}, depth {depth}")
    rows, experiment = _finished_rows(db_path, experiment)
    if not rows:
        return _without_data(width, depth, experiment)
    kept, context = _one_context(rows)
    base = _base_spec(db_path, kept)
    target = replace(base, model=replace(base.model, width=width, depth=depth))
    trials = [_trial(r) for r in kept]
    proposal = propose_lr(trials, _params(target), target_width=width, rule=rule, min_sizes=MIN_SIZES,
                          min_lrs=MIN_LRS)
    seeds = tuple(sorted({int(r["seed"]) for r in kept}))
    return Suggestion(proposal, experiment, f"{context}, {len(kept)} finished runs", base, width, depth,
                      _experiment_dirs(db_path, experiment), seeds)


def _experiment_dirs(db_path: Path, experiment: str | None) -> dict[str, str]:
    """data_dir and checkpoint_dir from the experiment's stored sweep file, so its dataset cache is reused."""
    with Reader(db_path) as reader:
        texts = [e["config_toml"] for e in reader.experiments() if e["name"] == experiment and e["config_toml"]]
    try:
        section = tomllib.loads(texts[0]).get("experiment", {}) if texts else {}
    except tomllib.TOMLDecodeError:
        return {}
    return {k: v for k, v in section.items() if k in ("data_dir", "checkpoint_dir") and isinstance(v, str)}


def _finished_rows(db_path: Path, experiment: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Finished runs of the experiment (default: the most recent one with finished runs)."""
    if not Path(db_path).exists():
        return [], experiment
    with Reader(db_path) as reader:
        names = [e["name"] for e in reader.experiments()]
        if experiment is not None and experiment not in names:
            raise SuggestError(f"{db_path}: no experiment named {experiment!r} (have: {', '.join(names) or 'none'})")
        for name in [experiment] if experiment else reversed(names):
            rows = [r for r in reader.runs(name) if r["status"] in FINISHED and r["params"] and r["lr_effective"]
                    and (r["loss"] is not None or r["status"] == "diverged")]  # a loss, or a known worst
            if rows:
                return rows, name
    return [], experiment


def _one_context(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The runs of the most common (dataset, arch, optimizer): rates only compare within one."""
    counts = Counter((r["dataset"], r["arch"], r["optimizer"]) for r in rows)
    (dataset, arch, optimizer), _ = counts.most_common(1)[0]
    kept = [r for r in rows if (r["dataset"], r["arch"], r["optimizer"]) == (dataset, arch, optimizer)]
    return kept, f"{dataset} {arch} {optimizer}"


def _trial(row: dict[str, Any]) -> LrTrial:
    loss = math.inf if row["status"] == "diverged" else float(row["loss"])
    return LrTrial(int(row["width"]), int(row["depth"]), int(row["params"]), float(row["lr_effective"]),
                   int(row["seed"]), loss)


def _base_spec(db_path: Path, rows: list[dict[str, Any]]) -> RunSpec:
    """The resolved config of the context's best run (lowest finite loss)."""
    finite = [r for r in rows if r["status"] != "diverged" and math.isfinite(r["loss"])]
    best = min(finite, key=lambda r: r["loss"]) if finite else rows[0]
    with Reader(db_path) as reader:
        config = reader.run_config(int(best["id"]))
    return RunSpec.from_dict(json.loads(config)) if config else RunSpec("suggested", DataSpec(), ModelSpec(),
                                                                            TrainSpec())


def _params(spec: RunSpec) -> int:
    if spec.model.arch not in ("mlp", "resmlp"):
        raise SuggestError(f"suggest counts parameters of mlp and resmlp models without torch, not {spec.model.arch}")
    info = DATASETS[spec.data.dataset]
    return mlp_params(math.prod(info.input_shape), spec.model.width, spec.model.depth, info.num_classes,
                      spec.model.arch, spec.model.norm)


def _without_data(width: int, depth: int, experiment: str | None) -> Suggestion:
    """No finished runs: scale scaletui's default lr from the default width by the width rule."""
    base = RunSpec(experiment or "suggested", DataSpec(), ModelSpec(), TrainSpec())
    target = replace(base, model=replace(base.model, width=width, depth=depth))
    proposal = propose_lr([], _params(target), target_width=width, rule="width", ref_lr=DEFAULT_LR,
                          ref_width=DEFAULT_WIDTH)
    note = (f"no finished runs to learn from: scaletui's default lr {DEFAULT_LR:g} at width {DEFAULT_WIDTH}, "
            f"scaled by the maximal-update-style width rule; run a learning-rate sweep to replace this guess")
    proposal = replace(proposal, confidence="low", note=note)
    return Suggestion(proposal, None, "no finished runs", base, width, depth)


# --------------------------------------------------------------------------- a runnable sweep file


def _section(values: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: unset optional keys (None) are left out, so their defaults apply."""
    return {k: v for k, v in values.items() if v is not None}


def sweep_file_text(s: Suggestion, *, name: str, db: Path) -> str:
    """A complete one-size sweep: `scaletui run FILE` trains the proposed size with the experiment's seeds."""
    from scaletui.analysis.configurator import _toml_value  # one TOML spelling for the whole file

    spec = s.base.to_dict()
    experiment = {"name": name, "db": str(db), **s.dirs}
    model = _section({k: v for k, v in spec["model"].items() if k not in ("width", "depth")})
    train = _section({k: v for k, v in spec["train"].items() if k not in ("lr", "lr_scaling", "lr_ref_params",
                                                                            "early_stopping")})
    # Every seed the experiment ran, not the best run's: one lucky seed would flatter the new size.
    train["seeds"] = list(s.seeds)
    lines = [f"# written by `scaletui suggest --width {s.width} --depth {s.depth}`", "[experiment]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in experiment.items()]
    lines += ["", "[data]"] + [f"{k} = {_toml_value(v)}" for k, v in _section(spec["data"]).items()]
    lines += ["", s.proposal.toml_fragment(s.width, s.depth, model=model, train=train).rstrip("\n")]
    lines += ["", "[train.early_stopping]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in spec["train"]["early_stopping"].items()]
    return "\n".join(lines) + "\n"
