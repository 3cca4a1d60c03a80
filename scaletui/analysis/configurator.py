"""Propose the learning rate for a model size that has not been run yet, and say how sure we are.

Why. The research notes' open to-do was "build small scale configurator applying learned heuristics"
(note 000), and the costliest lesson was a 512-wide net diverging on a learning rate tuned for a
256-wide one (note 003). A scaling sweep only predicts anything if every size trains at *its* good
learning rate, so before running a bigger model, this module answers "which lr?" from what the sweep
already measured:

1. Fit. From sizes whose runs swept the learning rate, take each size's best lr (mean loss over seeds,
   refined by a parabola in log lr through the best grid point and its neighbours) and fit the power
   law best_lr = c * params^-k by least squares in log-log space. A pure power law is a straight line
   there, so the fit is closed-form and its R^2 (in log space) comes for free; the Huber/L-BFGS
   machinery of `powerlaw` is for laws with an offset and is not needed here.
2. Fallbacks, named in the result. With fewer than `min_sizes` swept sizes: the sqrt-params rule of
   note 003, lr = lr_ref * sqrt(ref_params / params), anchored at the swept size nearest the target
   (or a reference the caller gives). When asked: a maximal-update-style width rule, lr = lr_ref *
   ref_width / width (hidden-layer Adam rates scale as 1/width under muP; applied here to the single
   global rate).

Every result carries the rule used, a confidence label with its reasons (fit R^2, how far the target
extrapolates beyond the measured sizes, best rates sitting on the edge of their sweep), the per-size
best rates it used, and a ready-to-run experiments.toml fragment.

All learning rates here are *effective* rates (what the optimizer ran with, after any lr_scaling);
the fragment therefore sets lr_scaling = "none".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LrTrial", "SizeBestLr", "Proposal", "best_lr_per_size", "fit_lr_power_law", "propose_lr",
           "mlp_params", "RULES"]

RULES = ("auto", "power_law", "sqrt_params", "width")


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
    lrs = np.array(sorted(by_lr))
    means = np.array([_mean_loss(by_lr[lr]) for lr in lrs])
    if not np.isfinite(means).any():
        return None
    i = int(np.argmin(means))
    at_edge = i in (0, len(lrs) - 1)
    best = lrs[i] if at_edge else _parabola_vertex(np.log(lrs[i - 1 : i + 2]), means[i - 1 : i + 2], lrs[i])
    return SizeBestLr(key[0], key[1], key[2], float(best), float(means[i]), len(lrs), len(by_lr[lrs[i]]), at_edge)


def _mean_loss(losses: Sequence[float]) -> float:
    """Mean over seeds; one diverged seed (non-finite loss) makes the rate the worst."""
    arr = np.asarray(losses, dtype=float)
    return float(arr.mean()) if np.isfinite(arr).all() else math.inf


def _parabola_vertex(x: np.ndarray, y: np.ndarray, fallback: float) -> float:
    """exp of the vertex of the parabola through 3 points (x = log lr), clamped to [x0, x2];
    the grid point itself when a neighbour is non-finite or the points are not convex."""
    if not np.isfinite(y).all():
        return fallback
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return fallback
    return float(math.exp(min(max(-b / (2 * a), x[0]), x[2])))


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
    rule: str = "auto",
    ref_lr: float | None = None,
    ref_params: int | None = None,
    ref_width: int | None = None,
    min_sizes: int = 3,
    min_lrs: int = 3,
) -> Proposal:
    """The learning rate for a model of `target_params` parameters.

    rule: "auto" fits the power law when at least `min_sizes` sizes swept at least `min_lrs` rates and
    falls back to "sqrt_params" otherwise; "power_law" and "sqrt_params" force one (power_law still
    falls back, saying so, when the data cannot support a fit); "width" is the maximal-update-style rule
    and needs `target_width`. Fallback anchors: ref_lr with ref_params (or ref_width), else the swept size
    nearest the target, else the best run of all."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    if target_params <= 0:
        raise ValueError(f"target_params must be positive, got {target_params}")
    trials = list(trials)
    best = tuple(best_lr_per_size(trials, min_lrs))
    if rule == "width":
        return _width_rule(trials, best, target_params, target_width, ref_lr, ref_width)
    if rule in ("auto", "power_law") and len({b.params for b in best}) >= max(min_sizes, 2):
        return _fit_rule(best, target_params)
    why = _why_no_fit(len(best), min_lrs, min_sizes) if rule != "sqrt_params" else "asked for"
    return _sqrt_rule(trials, best, target_params, ref_lr, ref_params, why)


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
    return Proposal(fit.predict(target_params), "power_law", label, note, target_params, best, fit, extrapolation)


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
    return Proposal(lr0 * math.sqrt(p0 / target_params), "sqrt_params", label, note, target_params, best,
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
    return Proposal(lr0 * w0 / target_width, "width", "medium" if extrapolation <= 4 else "low", note, target_params,
                    best, extrapolation=extrapolation, ref_params=p0 or None, ref_lr=lr0, ref_width=w0)


# --------------------------------------------------------------------------- model size without torch


def mlp_params(input_dim: int, width: int, depth: int, classes: int, arch: str = "mlp", norm: str = "none") -> int:
    """Trainable parameters of scaletui's `mlp` / `resmlp` (engine/models.py), computed without torch.

    mlp: depth hidden Linear layers then a head; resmlp: a Linear stem, depth residual blocks of one
    width x width Linear each, a head. A batch or layer norm adds 2 * width per hidden layer/block."""
    if min(input_dim, width, depth, classes) < 1:
        raise ValueError("input_dim, width, depth and classes must be positive")
    if norm not in ("none", "batch", "layer"):
        raise ValueError(f"unknown norm {norm!r}")
    norm_params = 0 if norm == "none" else 2 * width
    stem = input_dim * width + width
    hidden = width * width + width + norm_params
    head = width * classes + classes
    if arch == "mlp":
        return stem + norm_params + (depth - 1) * hidden + head
    if arch == "resmlp":
        return stem + depth * hidden + head
    raise ValueError(f"mlp_params covers mlp and resmlp, not {arch!r} (build the model to count a resnet)")
