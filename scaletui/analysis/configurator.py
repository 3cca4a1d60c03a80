"""Propose the learning rate for a model size that has not been run yet, and say how sure we are.

Why. The research notes' open to-do was "build small scale configurator applying learned heuristics"
(note 000), and the costliest lesson was a 512-wide net diverging on a learning rate tuned for a
256-wide one (note 003). A scaling sweep only predicts anything if every size trains at *its* good
learning rate, so before running a bigger model, this module answers "which lr?" from what the sweep
already measured:

1. Fit. From sizes whose runs swept the learning rate, take each size's best lr (mean loss over seeds,
   refined by a parabola in log lr through the best grid point and its neighbours) and fit the power
   law best_lr = c * params^-k by least squares in log-log space. A pure power law is a straight line
   there, so the fit is closed-form and its R^2 (in log space) comes for free; the robust fitting
   machinery of `solve` is for laws with a floor and is not needed here.
2. Fallbacks, named in the result. With fewer than `min_sizes` swept sizes: the sqrt-params rule of
   note 003, lr = lr_ref * sqrt(ref_params / params), anchored at the swept size nearest the target
   (or a reference the caller gives). When asked: a maximal-update-style width rule, lr = lr_ref *
   ref_width / width (hidden-layer Adam rates scale as 1/width under muP; applied here to the single
   global rate).
3. Evidence. With at least `min_sizes` + 1 swept sizes, `backtest_lr` holds out the largest, predicts
   its best lr from the others by every rule, and scores each prediction on the held-out size's own
   measured curve: the ratio to its best lr, and the loss lost by training at the predicted rate
   (the mean loss over seeds, interpolated linearly in log lr between the grid rates, minus the best
   grid rate's). "auto" then applies the rule that lost the least to the target, and says so; with
   fewer sizes there is no held-out size to judge by, and "auto" falls back as in 1-2.

Every result carries the rule used, a confidence label with its reasons (fit R^2, how far the target
extrapolates beyond the measured sizes, best rates sitting on the edge of their sweep), the per-size
best rates it used, and a ready-to-run experiments.toml fragment.

All learning rates here are *effective* rates (what the optimizer ran with, after any lr_scaling);
the fragment therefore sets lr_scaling = "none".

Dropout scaled with depth (note 000: a fixed dropout of 0.3 "blocked too much signal" in deep plain
MLPs) is proposed the same way from sizes that swept the dropout: each size's best dropout (mean over
seeds, refined by a parabola in p), then one of three rules for a new depth, chosen by the same
held-out backtest (the deepest swept size) when there are enough swept sizes: `fixed` (the nearest
depth's best p), `keep_total` (keep the whole net's retained fraction (1-p)^depth of the nearest depth)
and `depth_fit` (the per-layer drop rate -ln(1-p) = c * depth^-k fitted over the swept depths: k = 0 is
`fixed`, k = 1 is `keep_total`, so the fit measures which of the two the data follows).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from scaletui.core.vocabulary import Arch, DropoutRule, LrRule, Norm

__all__ = [
    "DROPOUT_RULES",
    "RULES",
    "Backtest",
    "DropoutFit",
    "DropoutProposal",
    "DropoutRule",
    "DropoutTrial",
    "LrTrial",
    "Proposal",
    "RuleScore",
    "SizeBestDropout",
    "SizeBestLr",
    "backtest_dropout",
    "backtest_lr",
    "best_dropout_per_size",
    "best_lr_per_size",
    "fit_dropout_depth",
    "fit_lr_power_law",
    "loss_on_curve",
    "mlp_params",
    "propose_dropout",
    "propose_lr",
]

RULES = LrRule.choices()


@dataclass(frozen=True)
class LrTrial:
    """One finished run. `lr` is the effective learning rate it trained with (after lr_scaling);
    `loss` is the loss of the run by the sweep's rule (non-finite for a diverged run: counts as worst)."""

    width: int
    depth: int
    params: int
    lr: float
    seed: int
    loss: float


@dataclass(frozen=True)
class SizeBestLr:
    """The best learning rate of one size whose runs swept the rate."""

    width: int
    depth: int
    params: int
    lr: float  # refined best rate (parabola vertex in log lr), within the neighbouring grid points
    loss: float  # mean loss over seeds at the best grid rate
    n_lrs: int  # distinct rates tried
    n_seeds: int  # seeds at the best grid rate
    at_edge: bool  # the best grid rate is the smallest or largest tried: the optimum may lie outside


@dataclass(frozen=True)
class LrFit:
    """best_lr = coefficient * params^-exponent, fitted in log-log space."""

    coefficient: float
    exponent: float
    r2: float  # of log lr, over the sizes used
    n_sizes: int

    def predict(self, params: float) -> float:
        return self.coefficient * params ** -self.exponent


@dataclass(frozen=True)
class Proposal:
    """A proposed learning rate for `target_params` and how it was obtained."""

    lr: float
    rule: str  # power_law | sqrt_params | width
    confidence: str  # high | medium | low
    note: str  # one line: the rule, its numbers and the reasons behind the confidence
    target_params: int
    best_lrs: tuple[SizeBestLr, ...]  # every swept size found (the fit used them all)
    fit: LrFit | None = None
    extrapolation: float = 1.0  # target params / nearest end of the measured range (1 = inside)
    ref_params: int | None = None  # the anchor of a fallback rule
    ref_lr: float | None = None
    ref_width: int | None = None
    backtest: Backtest | None = None  # the held-out evidence "auto" chose the rule by, when there was enough

    @property
    def r2(self) -> float | None:
        return None if self.fit is None else self.fit.r2

    def toml_fragment(self, width: int, depth: int, *, arch: str | None = None,
                      model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None) -> str:
        """`[model]` and `[train]` tables for the target size, ready to paste into experiments.toml.
        `model`/`train` add or override keys (e.g. norm, optimizer, steps)."""
        model_keys: dict[str, Any] = ({"arch": arch} if arch else {}) | {"width": width, "depth": depth}
        train_keys: dict[str, Any] = {"lr": float(f"{self.lr:.3g}"), "lr_scaling": "none"}
        model_keys.update(model or {})
        train_keys.update(train or {})
        lines = [f"# scaletui configurator: lr {self.lr:.3g} for {self.target_params:,} params by {self.rule} "
                 f"(confidence {self.confidence})", f"# {self.note}", "[model]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in model_keys.items()]
        lines += ["", "[train]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in train_keys.items()]
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"cannot write {v} to TOML")
    return repr(v)


# --------------------------------------------------------------------------- best lr per size


def best_lr_per_size(trials: Iterable[LrTrial], min_lrs: int = 3) -> list[SizeBestLr]:
    """For every size (width, depth, params) with at least `min_lrs` distinct rates: the rate with the
    lowest mean loss over seeds, refined by a parabola in log lr. Sorted by params."""
    sizes: dict[tuple[int, int, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        sizes[(t.width, t.depth, t.params)][float(t.lr)].append(float(t.loss))
    found = [_best_of_size(key, by_lr) for key, by_lr in sizes.items() if len(by_lr) >= min_lrs]
    return sorted((f for f in found if f is not None), key=lambda b: (b.params, b.width, b.depth))


def _best_of_size(key: tuple[int, int, int], by_lr: Mapping[float, list[float]]) -> SizeBestLr | None:
    lrs, means = _curve(by_lr)
    found = _best_on_grid(lrs, means, log=True)
    if found is None:
        return None
    best, i, at_edge = found
    return SizeBestLr(key[0], key[1], key[2], best, float(means[i]), len(lrs), len(by_lr[lrs[i]]), at_edge)


# --------------------------------------------------------------------------- a loss curve over a grid


def _curve(by_value: Mapping[float, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The grid values in increasing order and their mean loss over seeds (inf where a seed diverged)."""
    xs = np.array(sorted(by_value), dtype=float)
    return xs, np.array([_mean_loss(by_value[x]) for x in xs])


def _mean_loss(losses: Sequence[float]) -> float:
    """Mean over seeds; one diverged seed (non-finite loss) makes the rate the worst."""
    arr = np.asarray(losses, dtype=float)
    return float(arr.mean()) if np.isfinite(arr).all() else math.inf


def _best_on_grid(xs: np.ndarray, means: np.ndarray, *, log: bool) -> tuple[float, int, bool] | None:
    """(refined best value, index of the best grid value, whether that is an end of the grid); None when
    every value diverged. The refinement is the vertex of the parabola through the best grid value and
    its neighbours, in log x (learning rates) or in x (dropout)."""
    if not np.isfinite(means).any():
        return None
    i = int(np.argmin(means))
    if i in (0, len(xs) - 1):
        return float(xs[i]), i, True
    u = np.log(xs[i - 1 : i + 2]) if log else xs[i - 1 : i + 2]
    vertex = _parabola_vertex(u, means[i - 1 : i + 2])
    if vertex is None:
        return float(xs[i]), i, False
    return (math.exp(vertex) if log else vertex), i, False


def _parabola_vertex(x: np.ndarray, y: np.ndarray) -> float | None:
    """The vertex of the parabola through 3 points, clamped to [x0, x2]; None when a point is
    non-finite or the points are not convex (the grid point itself is then the best estimate)."""
    coefficients = _convex_parabola(x, y)
    if coefficients is None:
        return None
    a, b, _ = coefficients
    return float(min(max(-b / (2 * a), x[0]), x[2]))


def _convex_parabola(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """(a, b, c) of a x^2 + b x + c through 3 finite points, or None when they are not convex."""
    if not np.isfinite(y).all():
        return None
    coefficients = np.polyfit(x, y, 2)
    return coefficients if coefficients[0] > 0 else None


def loss_on_curve(xs: ArrayLike, means: ArrayLike, x: float, *, log: bool) -> float:
    """The measured loss curve (grid values `xs` ascending, mean losses `means`) at `x`, in log x when `log`:
    around the best grid value, the parabola through it and its neighbours (the one that refines the best
    value, so the curve's minimum is at the refined best); elsewhere linear between the two grid values
    around `x`. NaN outside the grid (never measured there); inf when a neighbouring grid value diverged
    (training there may diverge too)."""
    loss = np.asarray(means, dtype=float)
    grid = np.log(np.asarray(xs, dtype=float)) if log else np.asarray(xs, dtype=float)
    u = math.log(x) if log else x
    tol = 1e-9 * max(1.0, float(np.abs(grid).max()))
    if not grid[0] - tol <= u <= grid[-1] + tol:
        return math.nan
    u = min(max(u, grid[0]), grid[-1])
    i = int(np.argmin(loss)) if np.isfinite(loss).any() else -1
    if 0 < i < len(grid) - 1 and grid[i - 1] <= u <= grid[i + 1]:
        coefficients = _convex_parabola(grid[i - 1 : i + 2], loss[i - 1 : i + 2])
        if coefficients is not None:
            return float(np.polyval(coefficients, u))
    return _linear_between(grid, loss, u, tol)


def _linear_between(grid: np.ndarray, loss: np.ndarray, u: float, tol: float) -> float:
    at = np.flatnonzero(np.abs(grid - u) <= tol)
    if at.size:
        return float(loss[at[0]])
    hi = int(np.searchsorted(grid, u))
    if not np.isfinite(loss[hi - 1 : hi + 1]).all():
        return math.inf
    frac = (u - grid[hi - 1]) / (grid[hi] - grid[hi - 1])
    return float(loss[hi - 1] + frac * (loss[hi] - loss[hi - 1]))


# --------------------------------------------------------------------------- fit


def fit_lr_power_law(best: Sequence[SizeBestLr]) -> LrFit:
    """Least squares of log lr on log params: best_lr = c * params^-k. Needs two distinct sizes."""
    x = np.log([b.params for b in best])
    y = np.log([b.lr for b in best])
    if len(best) < 2 or np.ptp(x) == 0:
        raise ValueError("fitting best lr vs params needs at least two distinct sizes")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 1.0
    return LrFit(coefficient=float(math.exp(intercept)), exponent=float(-slope), r2=r2, n_sizes=len(best))


def _extrapolation(target: float, values: Sequence[float]) -> float:
    """How far `target` lies outside [min, max] of `values`, as a ratio (1 = inside)."""
    return max(target / max(values), min(values) / target, 1.0)


def _fit_confidence(fit: LrFit, extrapolation: float, edges: int) -> tuple[str, str]:
    reasons = [f"R^2 {fit.r2:.3f} in log space over {fit.n_sizes} sizes"]
    reasons.append("target inside the measured sizes" if extrapolation == 1.0
                   else f"target extrapolates {extrapolation:.1f}x beyond the measured sizes")
    if edges:
        reasons.append(f"{edges} size(s) had their best lr at the edge of the sweep")
    if fit.r2 < 0.7 or extrapolation > 16:
        label = "low"
    elif fit.r2 >= 0.9 and extrapolation <= 4 and not edges:
        label = "high"
    else:
        label = "medium"
    return label, "; ".join(reasons)


# --------------------------------------------------------------------------- proposal


def propose_lr(
    trials: Iterable[LrTrial],
    target_params: int,
    *,
    target_width: int | None = None,
    rule: str = LrRule.AUTO,
    ref_lr: float | None = None,
    ref_params: int | None = None,
    ref_width: int | None = None,
    min_sizes: int = 3,
    min_lrs: int = 3,
) -> Proposal:
    """The learning rate for a model of `target_params` parameters.

    rule: "auto" applies the rule that won `backtest_lr` when at least `min_sizes` + 1 sizes swept at least
    `min_lrs` rates (the note names the evidence); with fewer it fits the power law when `min_sizes` sizes
    swept, else falls back to "sqrt_params". "power_law" and "sqrt_params" force one (power_law still falls
    back, saying so, when the data cannot support a fit); "width" is the maximal-update-style rule and needs
    `target_width`. Fallback anchors: ref_lr with ref_params (or ref_width), else the swept size nearest
    the target, else the best run of all."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if target_params <= 0:
        raise ValueError(f"target_params must be positive, got {target_params}")
    trials = list(trials)
    if rule == LrRule.AUTO and (chosen := _lr_by_evidence(trials, target_params, target_width, min_sizes, min_lrs)):
        return chosen
    best = tuple(best_lr_per_size(trials, min_lrs))
    if rule == LrRule.WIDTH:
        return _width_rule(trials, best, target_params, target_width, ref_lr, ref_width)
    if rule in (LrRule.AUTO, LrRule.POWER_LAW) and len({b.params for b in best}) >= max(min_sizes, 2):
        return _fit_rule(best, target_params)
    why = _why_no_fit(len(best), min_lrs, min_sizes) if rule != LrRule.SQRT_PARAMS else "asked for"
    return _sqrt_rule(trials, best, target_params, ref_lr, ref_params, why)


def _lr_by_evidence(trials: list[LrTrial], target_params: int, target_width: int | None, min_sizes: int,
                    min_lrs: int) -> Proposal | None:
    """The backtest's winning rule applied to the target with every swept size; None without a backtest.
    The width rule competes only when the target's width is known."""
    evidence = backtest_lr(trials, min_sizes=min_sizes, min_lrs=min_lrs)
    if evidence is None:
        return None
    eligible = [s for s in evidence.scores if target_width or s.rule != LrRule.WIDTH]
    winner = min(eligible, key=_rank)
    proposal = propose_lr(trials, target_params, target_width=target_width, rule=winner.rule, min_sizes=min_sizes,
                          min_lrs=min_lrs)
    if proposal.rule == LrRule.SQRT_PARAMS:  # its note would say "asked for": it was chosen, not asked for
        proposal = replace(proposal, note=proposal.note.replace("(asked for)", "(it won the backtest)"))
    note = f"{winner.rule} chosen by backtest ({evidence.summary()}); {proposal.note}"
    return replace(proposal, confidence=_capped(proposal.confidence, winner), note=note, backtest=evidence)


def _capped(label: str, winner: RuleScore) -> str:
    """A rule is no more trustworthy than its held-out record: "low" when it missed the held-out best rate
    by more than 2x or its loss there is unknown, at most "medium" beyond the 1.5x goal."""
    if not math.isfinite(winner.lost_loss) or winner.miss > math.log(2):
        return "low"
    if winner.miss > math.log(1.5) and label == "high":
        return "medium"
    return label


def _why_no_fit(n_swept: int, min_lrs: int, min_sizes: int) -> str:
    """Why the power-law fit was not possible, in plain words."""
    swept = {0: "no size", 1: "only one size"}.get(n_swept, f"only {n_swept} sizes")
    return (f"{swept} of this experiment tried {min_lrs} or more learning rates, so there are too few "
            f"per-size best rates to fit a trend (a fit needs {min_sizes} such sizes)")


def _fit_rule(best: tuple[SizeBestLr, ...], target_params: int) -> Proposal:
    fit = fit_lr_power_law(best)
    extrapolation = _extrapolation(target_params, [b.params for b in best])
    label, reasons = _fit_confidence(fit, extrapolation, sum(b.at_edge for b in best))
    note = f"best_lr = {fit.coefficient:.3g} * params^-{fit.exponent:.3f}; {reasons}"
    return Proposal(fit.predict(target_params), LrRule.POWER_LAW.value, label, note, target_params, best, fit,
                    extrapolation)


def _anchor(trials: list[LrTrial], best: tuple[SizeBestLr, ...], near: float, key: str
            ) -> tuple[float, int, int, str] | None:
    """(lr, params, width, what) of the swept size nearest `near` in log `key` (params or width),
    else of the single best run."""
    if best:
        b = min(best, key=lambda z: abs(math.log(getattr(z, key) / near)))
        return b.lr, b.params, b.width, f"best lr of the swept size w{b.width} d{b.depth}"
    finite = [t for t in trials if math.isfinite(t.loss)]
    if not finite:
        return None
    t = min(finite, key=lambda z: z.loss)
    return t.lr, t.params, t.width, f"lr of the best run (w{t.width} d{t.depth}, no size swept the rate)"


def _sqrt_rule(trials: list[LrTrial], best: tuple[SizeBestLr, ...], target_params: int, ref_lr: float | None,
               ref_params: int | None, why: str) -> Proposal:
    if ref_lr is not None and ref_params is not None:
        anchor: tuple[float, int, int, str] | None = (ref_lr, ref_params, 0, "the given reference")
    else:
        anchor = _anchor(trials, best, target_params, "params")
    if anchor is None:
        raise ValueError("no finished runs and no reference (ref_lr, ref_params) to scale from")
    lr0, p0, w0, what = anchor
    extrapolation = _extrapolation(target_params, [p0])
    label = "medium" if best and extrapolation <= 4 else "low"
    note = (f"sqrt-params rule lr = {lr0:.3g} * sqrt({p0:,} / {target_params:,}) anchored at {what} "
            f"({why}); a rule of thumb, not fitted; {_size_ratio(target_params, p0)}")
    return Proposal(lr0 * math.sqrt(p0 / target_params), LrRule.SQRT_PARAMS.value, label, note, target_params, best,
                    extrapolation=extrapolation, ref_params=p0, ref_lr=lr0, ref_width=w0 or None)


def _size_ratio(target_params: int, anchor_params: int) -> str:
    """How far the proposal reaches, in plain words: the new model's size against the anchor's."""
    ratio = target_params / anchor_params
    if ratio >= 1:
        return f"the new model has {ratio:.1f}x the parameters of the run the rate comes from"
    return f"the new model has {1 / ratio:.1f}x fewer parameters than the run the rate comes from"


def _width_rule(trials: list[LrTrial], best: tuple[SizeBestLr, ...], target_params: int, target_width: int | None,
                ref_lr: float | None, ref_width: int | None) -> Proposal:
    if not target_width:
        raise ValueError("the width rule needs target_width")
    if ref_lr is not None and ref_width is not None:
        lr0, p0, w0, what = ref_lr, 0, ref_width, "the given reference"
    else:
        anchor = _anchor(trials, best, target_width, "width")
        if anchor is None:
            raise ValueError("no finished runs and no reference (ref_lr, ref_width) to scale from")
        lr0, p0, w0, what = anchor
    extrapolation = _extrapolation(target_width, [w0])
    note = (f"maximal-update-style width rule lr = {lr0:.3g} * {w0} / {target_width} anchored at {what}; "
            "muP scales hidden-layer Adam rates as 1/width and leaves depth alone; applied here to the one "
            f"global rate; the new model is {target_width / w0:.1f}x as wide as the run the rate comes from")
    label = "medium" if extrapolation <= 4 else "low"
    return Proposal(lr0 * w0 / target_width, LrRule.WIDTH.value, label, note, target_params, best,
                    extrapolation=extrapolation, ref_params=p0 or None, ref_lr=lr0, ref_width=w0)


# --------------------------------------------------------------------------- backtest: which rule to trust


@dataclass(frozen=True)
class RuleScore:
    """How one rule did at predicting the held-out size's best value (lr or dropout) from the other sizes."""

    rule: str
    predicted: float
    measured: float  # the held-out size's own refined best value
    lost_loss: float  # its loss curve at `predicted` minus its best grid loss; nan: beyond the swept range,
    #                   inf: next to a value where a seed diverged
    miss: float  # how far off: |ln(predicted / measured)| for lr, |predicted - measured| for dropout

    @property
    def ratio(self) -> float:
        """predicted / measured (inf for a measured 0)."""
        return self.predicted / self.measured if self.measured else math.inf

    @property
    def where(self) -> str:
        if math.isnan(self.lost_loss):
            return "beyond the swept range"
        return "next to a diverged value" if math.isinf(self.lost_loss) else "inside the sweep"


def _rank(score: RuleScore) -> tuple[int, float, float]:
    """Least loss lost first; a prediction outside the sweep (loss unknown) after every measured one, and
    one next to a diverged value last; ties go to the smaller miss."""
    if math.isnan(score.lost_loss):
        return 1, score.miss, 0.0
    if math.isinf(score.lost_loss):
        return 2, score.miss, 0.0
    return 0, score.lost_loss, score.miss


@dataclass(frozen=True)
class Backtest:
    """Every rule's prediction for a held-out swept size, made without it, scored on its measured curve."""

    quantity: str  # "lr" or "dropout"
    held_out: str  # e.g. "w256 d2"
    held_out_params: int
    measured: float  # the held-out size's refined best value
    best_loss: float  # its mean loss at its best grid value
    fitted_on: tuple[str, ...]  # the sizes the rules learned from
    scores: tuple[RuleScore, ...]

    @property
    def winner(self) -> RuleScore:
        return min(self.scores, key=_rank)

    def miss_text(self, score: RuleScore) -> str:
        """How far off, in the quantity's own terms: "0.82x" for a rate, "+0.05" for a dropout."""
        return f"{score.ratio:.2f}x" if self.quantity == "lr" else f"{score.predicted - score.measured:+.3f}"

    def summary(self) -> str:
        """One line: what was held out and how every rule did."""
        parts = [f"{s.rule} {self.miss_text(s)}, lost {_lost_text(s.lost_loss)}" for s in self.scores]
        return (f"held out {self.held_out} (best {self.quantity} {self.measured:.3g}), predicted from "
                f"{len(self.fitted_on)} other sizes: " + "; ".join(parts))


def _lost_text(lost: float) -> str:
    if math.isnan(lost):
        return "unknown (beyond the sweep)"
    return "unknown (next to a diverged value)" if math.isinf(lost) else f"{lost:.4f}"


def _grouped(pairs: Iterable[tuple[float, float]]) -> dict[float, list[float]]:
    """(grid value, loss) pairs as {grid value: losses over seeds}."""
    by_value: dict[float, list[float]] = defaultdict(list)
    for value, loss in pairs:
        by_value[float(value)].append(float(loss))
    return by_value


def _size_label(width: int, depth: int) -> str:
    return f"w{width} d{depth}"


LR_BACKTEST_RULES = (LrRule.POWER_LAW, LrRule.SQRT_PARAMS, LrRule.WIDTH)


def backtest_lr(trials: Iterable[LrTrial], *, min_sizes: int = 3, min_lrs: int = 3) -> Backtest | None:
    """Hold out the largest swept size (by params), predict its best lr from the others by the power law,
    the sqrt-params rule and the width rule, and score each on the held-out size's own loss-vs-lr curve.
    None with fewer than `min_sizes` + 1 swept sizes: the fit needs `min_sizes` without the held-out one."""
    trials = list(trials)
    best = best_lr_per_size(trials, min_lrs)
    if len({b.params for b in best}) < max(min_sizes, 2) + 1:
        return None
    held = best[-1]
    size = (held.width, held.depth, held.params)
    rest = [t for t in trials if (t.width, t.depth, t.params) != size]
    lrs, means = _curve(_grouped((t.lr, t.loss) for t in trials if (t.width, t.depth, t.params) == size))
    scores = []
    for rule in LR_BACKTEST_RULES:
        predicted = propose_lr(rest, held.params, target_width=held.width, rule=rule, min_sizes=min_sizes,
                               min_lrs=min_lrs).lr
        lost = loss_on_curve(lrs, means, predicted, log=True) - loss_on_curve(lrs, means, held.lr, log=True)
        scores.append(RuleScore(rule.value, predicted, held.lr, lost, abs(math.log(predicted / held.lr))))
    return Backtest("lr", _size_label(held.width, held.depth), held.params, held.lr, held.loss,
                    tuple(_size_label(b.width, b.depth) for b in best[:-1]), tuple(scores))


# --------------------------------------------------------------------------- dropout scaled with depth


DROPOUT_RULES = DropoutRule.choices()
DROPOUT_BACKTEST_RULES = (DropoutRule.DEPTH_FIT, DropoutRule.FIXED, DropoutRule.KEEP_TOTAL)


@dataclass(frozen=True)
class DropoutTrial:
    """One finished run of a sweep over dropout; `loss` as in LrTrial (non-finite: diverged, worst)."""

    width: int
    depth: int
    params: int
    dropout: float
    seed: int
    loss: float


@dataclass(frozen=True)
class SizeBestDropout:
    """The best dropout of one size whose runs swept it."""

    width: int
    depth: int
    params: int
    dropout: float  # refined best p (parabola vertex in p), within the neighbouring grid points
    loss: float  # mean loss over seeds at the best grid p
    n_values: int
    n_seeds: int
    at_edge: bool


@dataclass(frozen=True)
class DropoutFit:
    """-ln(1 - p) = coefficient * depth^-exponent over the swept depths whose best p was above 0."""

    coefficient: float
    exponent: float  # 0: the same p at every depth; 1: the whole net keeps the same (1-p)^depth
    n_sizes: int

    def predict(self, depth: float) -> float:
        return 1.0 - math.exp(-self.coefficient * depth ** -self.exponent)


@dataclass(frozen=True)
class DropoutProposal:
    """A proposed dropout for `target_depth` and how it was obtained."""

    dropout: float
    rule: str  # depth_fit | fixed | keep_total
    confidence: str  # medium | low (a fit over few noisy optima is never "high")
    note: str
    target_depth: int
    best: tuple[SizeBestDropout, ...]
    fit: DropoutFit | None = None
    backtest: Backtest | None = None


def best_dropout_per_size(trials: Iterable[DropoutTrial], min_values: int = 3) -> list[SizeBestDropout]:
    """For every size with at least `min_values` distinct dropouts: the best one (mean loss over seeds,
    refined by a parabola in p). Sorted by depth, then params."""
    sizes: dict[tuple[int, int, int], list[tuple[float, float]]] = defaultdict(list)
    for t in trials:
        sizes[(t.width, t.depth, t.params)].append((t.dropout, t.loss))
    found = [_best_dropout_of(key, _grouped(pairs)) for key, pairs in sizes.items()]
    kept = [f for f in found if f is not None and f.n_values >= min_values]
    return sorted(kept, key=lambda b: (b.depth, b.params, b.width))


def _best_dropout_of(key: tuple[int, int, int], by_p: Mapping[float, list[float]]) -> SizeBestDropout | None:
    ps, means = _curve(by_p)
    found = _best_on_grid(ps, means, log=False)
    if found is None:
        return None
    best, i, at_edge = found
    return SizeBestDropout(key[0], key[1], key[2], best, float(means[i]), len(ps), len(by_p[ps[i]]), at_edge)


def fit_dropout_depth(best: Sequence[SizeBestDropout]) -> DropoutFit:
    """Least squares of ln(-ln(1-p)) on ln depth over the sizes whose best p is above 0; needs two depths."""
    used = [b for b in best if 0 < b.dropout < 1]
    if len({b.depth for b in used}) < 2:
        raise ValueError("fitting dropout against depth needs two depths whose best dropout is above 0")
    x = np.log([b.depth for b in used])
    y = np.log([-math.log1p(-b.dropout) for b in used])
    slope, intercept = np.polyfit(x, y, 1)
    return DropoutFit(coefficient=float(math.exp(intercept)), exponent=float(-slope), n_sizes=len(used))


def propose_dropout(trials: Iterable[DropoutTrial], target_depth: int, *, target_width: int | None = None,
                    rule: str = DropoutRule.AUTO, min_sizes: int = 3, min_values: int = 3) -> DropoutProposal | None:
    """The dropout for a net of `target_depth` (and `target_width`, to pick the nearest anchor); None when
    no size swept at least `min_values` dropouts. "auto": the winner of `backtest_dropout` with at least
    `min_sizes` + 1 swept sizes, else depth_fit with `min_sizes` swept depths, else keep_total (the notes'
    lesson: a fixed p compounds with depth)."""
    if rule not in DROPOUT_RULES:
        raise ValueError(f"unknown dropout rule {rule!r}; expected one of {', '.join(DROPOUT_RULES)}")
    if target_depth < 1:
        raise ValueError(f"target_depth must be positive, got {target_depth}")
    trials = list(trials)
    best = tuple(best_dropout_per_size(trials, min_values))
    if not best:
        return None
    if rule == DropoutRule.AUTO:
        evidence = backtest_dropout(trials, min_sizes=min_sizes, min_values=min_values)
        if evidence is not None:
            return _dropout_by_evidence(best, evidence, target_depth, target_width)
        enough = len({b.depth for b in best}) >= min_sizes
        rule = DropoutRule.DEPTH_FIT if enough else DropoutRule.KEEP_TOTAL
    return _dropout_by_rule(best, target_depth, target_width, rule)


def _dropout_by_evidence(best: tuple[SizeBestDropout, ...], evidence: Backtest, target_depth: int,
                         target_width: int | None) -> DropoutProposal:
    winner = evidence.winner
    proposal = _dropout_by_rule(best, target_depth, target_width, winner.rule)
    label = "medium" if math.isfinite(winner.lost_loss) and proposal.confidence != "low" else "low"
    note = f"{winner.rule} chosen by backtest ({evidence.summary()}); {proposal.note}"
    return replace(proposal, confidence=label, note=note, backtest=evidence)


def _dropout_anchor(best: Sequence[SizeBestDropout], depth: int, width: int | None) -> SizeBestDropout:
    """The swept size nearest `depth` (in log depth), then nearest `width`, then the largest."""
    def distance(b: SizeBestDropout) -> tuple[float, float, int]:
        return abs(math.log(b.depth / depth)), abs(math.log(b.width / width)) if width else 0.0, -b.params
    return min(best, key=distance)


def _dropout_by_rule(best: Sequence[SizeBestDropout], depth: int, width: int | None, rule: str) -> DropoutProposal:
    reach = _extrapolation(depth, [b.depth for b in best])
    label = "low" if reach > 2 else "medium"
    if rule == DropoutRule.DEPTH_FIT:
        try:
            fit = fit_dropout_depth(best)
        except ValueError as e:
            fallback = _dropout_by_rule(best, depth, width, DropoutRule.KEEP_TOTAL)
            return replace(fallback, note=f"{fallback.note}; no depth fit: {e}")
        note = (f"per-layer drop rate -ln(1-p) = {fit.coefficient:.3g} * depth^-{fit.exponent:.2f} over "
                f"{fit.n_sizes} swept sizes (exponent 0 = fixed dropout, 1 = (1-p)^depth held constant)")
        return DropoutProposal(fit.predict(depth), DropoutRule.DEPTH_FIT.value, label, note, depth, tuple(best), fit)
    a = _dropout_anchor(best, depth, width)
    if rule == DropoutRule.FIXED:
        note = f"fixed dropout: the best p {a.dropout:.3g} of the swept size {_size_label(a.width, a.depth)}, unchanged"
        return DropoutProposal(a.dropout, DropoutRule.FIXED.value, label, note, depth, tuple(best))
    p = 1.0 - (1.0 - a.dropout) ** (a.depth / depth)
    note = (f"keep_total: (1-p)^depth held at {(1 - a.dropout) ** a.depth:.3g}, the value of the swept size "
            f"{_size_label(a.width, a.depth)} (best p {a.dropout:.3g})")
    return DropoutProposal(p, DropoutRule.KEEP_TOTAL.value, label, note, depth, tuple(best))


def backtest_dropout(trials: Iterable[DropoutTrial], *, min_sizes: int = 3, min_values: int = 3) -> Backtest | None:
    """Hold out the deepest swept size, predict its best dropout from the others by every rule, and score
    each on its own loss-vs-dropout curve (linear in p). None with fewer than `min_sizes` + 1 swept sizes."""
    trials = list(trials)
    best = best_dropout_per_size(trials, min_values)
    if len(best) < max(min_sizes, 2) + 1:
        return None
    held = best[-1]
    size = (held.width, held.depth, held.params)
    others = best[:-1]
    ps, means = _curve(_grouped((t.dropout, t.loss) for t in trials if (t.width, t.depth, t.params) == size))
    scores = []
    for rule in DROPOUT_BACKTEST_RULES:
        proposal = _dropout_by_rule(others, held.depth, held.width, rule)
        if proposal.rule != rule:  # the fit was not possible: it has no prediction of its own to score
            continue
        lost = loss_on_curve(ps, means, proposal.dropout, log=False) - loss_on_curve(ps, means, held.dropout, log=False)
        scores.append(RuleScore(rule.value, proposal.dropout, held.dropout, lost, abs(proposal.dropout - held.dropout)))
    return Backtest("dropout", _size_label(held.width, held.depth), held.params, held.dropout, held.loss,
                    tuple(_size_label(b.width, b.depth) for b in others), tuple(scores))


# --------------------------------------------------------------------------- model size without torch


def mlp_params(input_dim: int, width: int, depth: int, classes: int, arch: str = Arch.MLP,
               norm: str = Norm.NONE) -> int:
    """Trainable parameters of scaletui's `mlp` / `resmlp` (engine/models.py), computed without torch.

    mlp: depth hidden Linear layers then a head; resmlp: a Linear stem, depth residual blocks of one
    width x width Linear each, a head. A batch or layer norm adds 2 * width per hidden layer/block."""
    if min(input_dim, width, depth, classes) < 1:
        raise ValueError("input_dim, width, depth and classes must be positive")
    if norm not in Norm.choices():
        raise ValueError(f"unknown norm {norm!r}")
    norm_params = 0 if norm == Norm.NONE else 2 * width
    stem = input_dim * width + width
    hidden = width * width + width + norm_params
    head = width * classes + classes
    if arch == Arch.MLP:
        return stem + norm_params + (depth - 1) * hidden + head
    if arch == Arch.RESMLP:
        return stem + depth * hidden + head
    raise ValueError(f"mlp_params covers mlp and resmlp, not {arch!r} (build the model to count a resnet)")
