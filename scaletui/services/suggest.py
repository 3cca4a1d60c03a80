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

Evidence. When the experiment swept the learning rate at enough sizes (`MIN_SIZES` + 1), "auto" holds
out the largest, predicts it by every rule from the others and applies the winner (`backtest_lr`);
`backtests` returns that comparison on its own for `scaletui suggest --backtest`. When the experiment also
swept dropout (at least `MIN_LRS` values per size), the dropout for the new depth is proposed the same way
(`propose_dropout`, judged on the deepest swept size). Learning rates are compared at the best run's
dropout and dropouts at the best run's base learning rate, so a sweep over both never mixes the two.

Batch size. `batch_suggestions` proposes the critical batch size of every size (width, depth) of an
experiment from the gradient noise scale the training loops measure (engine/noise_scale.py, metrics
`grad_noise_g2` and `grad_noise_trace`): B_crit ~ B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018),
from the means of the last half of each run's measurements, pooled over the size's runs (seeds, learning
rates), with a standard error, the spread of the running estimate and the numbers of measurements
(`analysis.noise_scale.critical_batch`). Runs that diverged or failed are left out; runs still training
count with what they have measured so far.

Target size: MLP and residual-MLP parameter counts are computed from the config (`mlp_params`), so nothing
here imports torch. `sweep_file_text` writes a complete, runnable one-run sweep: the config of the
context's best run with the target width, depth and the proposed rate.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.configurator import (
    Backtest,
    DropoutProposal,
    DropoutTrial,
    LrTrial,
    Proposal,
    backtest_dropout,
    backtest_lr,
    mlp_params,
    propose_dropout,
    propose_lr,
)
from scaletui.analysis.noise_scale import TAIL_FRACTION, CriticalBatch, NoisePieces, critical_batch, suggested_batch
from scaletui.core.datasets import DATASETS
from scaletui.core.rows import RunSummary
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import DENSE_ARCHS, NOISE_G2_METRIC, NOISE_TRACE_METRIC, LrRule, RunStatus
from scaletui.store.reader import Reader

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

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
    dropout: DropoutProposal | None = None  # when the experiment swept dropout
    loss_rule: str | None = None  # the experiment's: the new size's loss is judged by the same rule


@dataclass(frozen=True)
class Backtests:
    """Every rule's prediction for the experiment's held-out size, for the learning rate and the dropout."""

    experiment: str | None
    context: str
    lr: Backtest | None  # None: too few lr-swept sizes (`lr_why` says how many)
    dropout: Backtest | None
    lr_why: str
    dropout_why: str


@dataclass(frozen=True)
class _Context:
    """The finished runs of one context, as configurator trials, and the best run's config."""

    experiment: str | None
    rows: list[RunSummary]
    description: str
    base: RunSpec
    lr_trials: list[LrTrial]
    dropout_trials: list[DropoutTrial]


def suggest_for(db_path: Path, experiment: str | None, width: int, depth: int, *, rule: str = LrRule.AUTO) -> Proposal:
    """The proposed learning rate for a `width` x `depth` model of the experiment's kind."""
    return suggestion(db_path, experiment, width, depth, rule=rule).proposal


def suggestion(db_path: Path, experiment: str | None, width: int, depth: int, *, rule: str = LrRule.AUTO) -> Suggestion:
    """`suggest_for` with its context: the experiment used, what was kept, and the base run config."""
    if width < 1 or depth < 1:
        raise SuggestError(f"width and depth must be positive integers, got width {width}, depth {depth}")
    ctx = _context(db_path, experiment)
    if ctx is None:
        return _without_data(width, depth, experiment)
    target = replace(ctx.base, model=replace(ctx.base.model, width=width, depth=depth))
    proposal = propose_lr(ctx.lr_trials, _params(target), target_width=width, rule=rule, min_sizes=MIN_SIZES,
                          min_lrs=MIN_LRS)
    dropout = propose_dropout(ctx.dropout_trials, depth, target_width=width, min_sizes=MIN_SIZES, min_values=MIN_LRS)
    seeds = tuple(sorted({r.seed for r in ctx.rows if r.seed is not None}))
    return Suggestion(proposal, ctx.experiment, ctx.description, ctx.base, width, depth,
                      _experiment_dirs(db_path, ctx.experiment), seeds, dropout, _loss_rule(db_path, ctx.experiment))


def _loss_rule(db_path: Path, experiment: str | None) -> str | None:
    with Reader(db_path) as reader:
        return next((str(e.loss_rule) for e in reader.experiments() if e.name == experiment), None)


def backtests(db_path: Path, experiment: str | None) -> Backtests:
    """Hold out the largest lr-swept size (and the deepest dropout-swept one), predict it by every rule from
    the others, and score each prediction on its measured curve."""
    ctx = _context(db_path, experiment)
    if ctx is None:
        nothing = "no finished runs to hold out"
        return Backtests(experiment, "no finished runs", None, None, nothing, nothing)
    lr = backtest_lr(ctx.lr_trials, min_sizes=MIN_SIZES, min_lrs=MIN_LRS)
    dropout = backtest_dropout(ctx.dropout_trials, min_sizes=MIN_SIZES, min_values=MIN_LRS)
    return Backtests(ctx.experiment, ctx.description, lr, dropout,
                     _too_few(ctx.lr_trials, "learning rates", lambda t: t.lr),
                     _too_few(ctx.dropout_trials, "dropouts", lambda t: t.dropout))


def _too_few(trials: Sequence[LrTrial] | Sequence[DropoutTrial], what: str,
             value: Callable[[Any], float]) -> str:
    """Why there is no backtest: how many sizes swept enough values, against how many it needs."""
    values: dict[tuple[int, int], set[float]] = {}
    for t in trials:
        values.setdefault((t.width, t.depth), set()).add(value(t))
    swept = sum(len(v) >= MIN_LRS for v in values.values())
    return (f"{swept} size(s) tried {MIN_LRS} or more {what}; a backtest holds out the largest and needs "
            f"{MIN_SIZES} more to predict it from")


def _context(db_path: Path, experiment: str | None) -> _Context | None:
    """The experiment's finished runs of its main context as trials; None without finished runs."""
    rows, experiment = _finished_rows(db_path, experiment)
    if not rows:
        return None
    kept, context = _one_context(rows)
    base = _base_spec(db_path, kept)
    dropouts = _dropouts(db_path, kept)
    lr_trials = [_trial(r) for r in kept if dropouts.get(r.id) in (None, base.model.dropout)]
    dropout_trials = [_dropout_trial(r, dropouts[r.id]) for r in kept
                      if dropouts.get(r.id) is not None and r.lr == base.train.lr]
    return _Context(experiment, kept, f"{context}, {len(kept)} finished runs", base, lr_trials, dropout_trials)


def _dropouts(db_path: Path, rows: list[RunSummary]) -> dict[int, float]:
    """Each run's dropout from its stored config (runs without one, e.g. a researcher's own loop, are absent)."""
    with Reader(db_path) as reader:
        specs = {r.id: reader.run_spec(r.id) for r in rows}
    return {run_id: spec.model.dropout for run_id, spec in specs.items() if spec is not None}


def _dropout_trial(row: RunSummary, dropout: float) -> DropoutTrial:
    return DropoutTrial(row.width or 0, row.depth or 0, int(row.params or 0), dropout, row.seed or 0, _loss(row))


def _experiment_dirs(db_path: Path, experiment: str | None) -> dict[str, str]:
    """data_dir and checkpoint_dir from the experiment's stored sweep file, so its dataset cache is reused."""
    with Reader(db_path) as reader:
        texts = [e.config_toml for e in reader.experiments() if e.name == experiment and e.config_toml]
    try:
        section = tomllib.loads(texts[0]).get("experiment", {}) if texts else {}
    except tomllib.TOMLDecodeError:
        return {}
    return {k: v for k, v in section.items() if k in ("data_dir", "checkpoint_dir") and isinstance(v, str)}


def _finished_rows(db_path: Path, experiment: str | None) -> tuple[list[RunSummary], str | None]:
    """Finished runs of the experiment (default: the most recent one with finished runs)."""
    if not Path(db_path).exists():
        return [], experiment
    with Reader(db_path) as reader:
        names = [e.name for e in reader.experiments()]
        if experiment is not None and experiment not in names:
            raise SuggestError(f"{db_path}: no experiment named {experiment!r} (have: {', '.join(names) or 'none'})")
        for name in [experiment] if experiment else reversed(names):
            rows = [r for r in reader.runs(name) if r.finished and r.params and r.lr_effective and r.width and r.depth
                    and (r.loss is not None or r.status is RunStatus.DIVERGED)]  # a loss, or a known worst
            if rows:
                return rows, name
    return [], experiment


def _one_context(rows: list[RunSummary]) -> tuple[list[RunSummary], str]:
    """The runs of the most common (dataset, arch, optimizer): rates only compare within one."""
    counts = Counter((r.dataset, r.arch, r.optimizer) for r in rows)
    (dataset, arch, optimizer), _ = counts.most_common(1)[0]
    kept = [r for r in rows if (r.dataset, r.arch, r.optimizer) == (dataset, arch, optimizer)]
    return kept, f"{dataset} {arch} {optimizer}"


def _loss(row: RunSummary) -> float:
    """The run's loss by the experiment's rule; a diverged run counts as the worst."""
    return math.inf if row.status is RunStatus.DIVERGED or row.loss is None else row.loss


def _trial(row: RunSummary) -> LrTrial:
    lr = float(row.lr_effective or row.lr or 0.0)
    return LrTrial(row.width or 0, row.depth or 0, int(row.params or 0), lr, row.seed or 0, _loss(row))


def _base_spec(db_path: Path, rows: list[RunSummary]) -> RunSpec:
    """The resolved config of the context's best run (lowest finite loss)."""
    finite = [r for r in rows if r.status is not RunStatus.DIVERGED and r.loss is not None and math.isfinite(r.loss)]
    best = min(finite, key=lambda r: r.loss or math.inf) if finite else rows[0]
    with Reader(db_path) as reader:
        spec = reader.run_spec(best.id)
    return spec or RunSpec("suggested", DataSpec(), ModelSpec(), TrainSpec())


def _params(spec: RunSpec) -> int:
    if spec.model.arch not in DENSE_ARCHS:
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
    experiment = {"name": name, "db": str(db), **s.dirs, **({"loss_rule": s.loss_rule} if s.loss_rule else {})}
    model = _section({k: v for k, v in spec["model"].items() if k not in ("width", "depth")})
    if s.dropout is not None:  # the experiment swept dropout: the proposed one for this depth
        model["dropout"] = round(s.dropout.dropout, 3)
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


# --------------------------------------------------------------------------- the batch size from the noise scale


@dataclass(frozen=True)
class SizeBatch:
    """The critical batch size of one size of an experiment, with its evidence."""

    arch: str
    width: int
    depth: int
    params: int | None
    runs: int  # runs with measurements
    batch_sizes: tuple[int, ...]  # the batch sizes those runs trained with (usually one)
    crit: CriticalBatch

    @property
    def suggested(self) -> int | None:
        """B_crit rounded to a power of two; None when B_simple was not resolved."""
        return None if self.crit.b_crit is None else suggested_batch(self.crit.b_crit)


@dataclass(frozen=True)
class BatchSuggestions:
    experiment: str | None
    sizes: tuple[SizeBatch, ...]  # by arch, width, depth
    runs_without: int  # runs of the experiment (not diverged or failed) with no measurement
    tail_fraction: float = TAIL_FRACTION


_LEFT_OUT = (RunStatus.DIVERGED, RunStatus.FAILED)


def batch_suggestions(db_path: Path, experiment: str | None) -> BatchSuggestions:
    """The critical batch size per size of `experiment` (default: the latest one with measurements)."""
    if not Path(db_path).exists():
        return BatchSuggestions(experiment, (), 0)
    with Reader(db_path) as reader:
        names = [e.name for e in reader.experiments()]
        if experiment is not None and experiment not in names:
            raise SuggestError(f"{db_path}: no experiment named {experiment!r} (have: {', '.join(names) or 'none'})")
        for name in [experiment] if experiment else reversed(names):
            measured, without = _measured_runs(reader, name)
            if measured or experiment is not None:
                return BatchSuggestions(name, _by_size(measured), without)
    return BatchSuggestions(experiment, (), 0)


@dataclass(frozen=True)
class _Measured:
    row: RunSummary
    batch_size: int
    pieces: NoisePieces


def _measured_runs(reader: Reader, experiment: str | None) -> tuple[list[_Measured], int]:
    """The experiment's runs with noise-scale measurements, and how many usable runs have none."""
    measured, without = [], 0
    for row in reader.runs(experiment):
        if row.status in _LEFT_OUT or not row.width or not row.depth or not row.arch:
            continue
        spec = reader.run_spec(row.id)
        pieces = _pieces(reader, row.id)
        if spec is None or not len(pieces):
            without += 1
            continue
        measured.append(_Measured(row, spec.train.batch_size, pieces))
    return measured, without


def _pieces(reader: Reader, run_id: int) -> NoisePieces:
    """A run's |G|^2 and tr(Sigma) estimates, paired by step (a step holding only one of them is skipped)."""
    g2 = dict(reader.metric_series(run_id, NOISE_G2_METRIC))
    trace = dict(reader.metric_series(run_id, NOISE_TRACE_METRIC))
    steps = sorted(step for step in g2.keys() & trace.keys() if math.isfinite(g2[step]) and math.isfinite(trace[step]))
    return NoisePieces(np.array([g2[s] for s in steps]), np.array([trace[s] for s in steps]))


def _by_size(measured: list[_Measured]) -> tuple[SizeBatch, ...]:
    groups: dict[tuple[str, int, int], list[_Measured]] = {}
    for m in measured:
        groups.setdefault((str(m.row.arch), m.row.width or 0, m.row.depth or 0), []).append(m)
    return tuple(_size(key, runs) for key, runs in sorted(groups.items()))


def _size(key: tuple[str, int, int], runs: list[_Measured]) -> SizeBatch:
    arch, width, depth = key
    params = Counter(r.row.params for r in runs if r.row.params).most_common(1)
    return SizeBatch(arch, width, depth, int(params[0][0]) if params else None, len(runs),
                     tuple(sorted({r.batch_size for r in runs})), critical_batch([r.pieces for r in runs]))
