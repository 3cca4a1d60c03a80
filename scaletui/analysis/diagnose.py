"""Detectors for the ways scaling runs go wrong, as pure functions over a run's arrays.

Why this module exists. Every wall in the research notes behind scaletui was found by hand, late:
dropout held fixed while depth grew "blocked too much signal" (note 000); depth 9 flatlined because of
an unlucky seed (note 001); a 512-wide net beat a 256-wide one at 100k steps and then diverged because
its learning rate was tuned for the smaller net (note 003); early layers' gradients attenuated with
depth, and label noise was memorised while training looked stable (note 004). Each detector here turns
one of those into an `Alert` the moment the evidence is conclusive, with the numbers that show it and
the usual fix.

Design rules.
* Pure and cheap: numpy over arrays, no I/O, no torch. The runner calls `diagnose_run` again every time
  a run has new records, so every detector is O(steps) vectorised work; per-evaluation Python loops only
  visit the few evaluations where a test loss has already risen.
* Replayable: a detector looks at the whole series and reports the *first* step at which its rule holds,
  so calling it on a prefix of a run and on the finished run name the same step.
* Sustained, never one noisy point: per-step train losses are averaged over `smooth_window` steps,
  gradient ratios must hold for `grad_window` consecutive logging steps, test-loss rises for
  `rise_evals` consecutive evaluations.
* Every number that decides anything is a field of `Thresholds` (one frozen dataclass, documented
  defaults), so a sweep file can override them by name.

Healthy runs (a loss that keeps falling, gradient norms within two orders of magnitude across layers,
a test loss that tracks the train loss) raise nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scaletui.core.records import Alert, LayerStats, MetricRecord
from scaletui.core.thresholds import Thresholds, thresholds_from
from scaletui.core.vocabulary import TEST_LOSS_METRIC, TRAIN_LOSS_METRIC, AlertKind, Severity

__all__ = [
    "GroupRow",
    "RunSeries",
    "Thresholds",
    "detect_divergence",
    "detect_gradients",
    "detect_non_monotonic",
    "detect_overfitting",
    "detect_plateau",
    "detect_seed_sensitivity",
    "diagnose_group",
    "diagnose_run",
    "lr_suggestion",
    "series_from_records",
    "thresholds_from",
]

FloatArray = np.ndarray
GroupTable = Iterable["GroupRow | tuple[int, int, int, float]"]  # rows of (width, depth, seed, loss)
_BIG = 1e6  # values are clipped here before running sums, so one huge loss cannot wreck later means


# --------------------------------------------------------------------------- inputs


def _empty() -> FloatArray:
    return np.zeros(0)


def _empty2() -> FloatArray:
    return np.zeros((0, 0))


@dataclass(frozen=True, eq=False)
class RunSeries:
    """One run as arrays. Steps ascend. `lr` is the effective rate the run trained with.

    train_loss: one value per train step (`steps`). test_loss / test_acc / train_acc: one per evaluation
    (`eval_steps`); an accuracy not recorded is an empty array. grad_norm / weight_norm: (log steps x
    layers), layer 0 = input side, rows at `layer_steps`; `nonfinite`: NaN/Inf gradient values per log step.
    """

    run_id: int | None
    width: int
    depth: int
    params: int
    lr: float
    steps: FloatArray
    train_loss: FloatArray
    eval_steps: FloatArray = field(default_factory=_empty)
    test_loss: FloatArray = field(default_factory=_empty)
    test_acc: FloatArray = field(default_factory=_empty)
    train_acc: FloatArray = field(default_factory=_empty)
    layer_steps: FloatArray = field(default_factory=_empty)
    grad_norm: FloatArray = field(default_factory=_empty2)
    weight_norm: FloatArray = field(default_factory=_empty2)
    nonfinite: FloatArray = field(default_factory=_empty)
    base_lr: float | None = None  # the sweep's lr before any lr_scaling, when known
    lr_ref_params: int | None = None  # the reference size of sqrt-params scaling, when known
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "train_loss", "eval_steps", "test_loss", "test_acc", "train_acc", "layer_steps",
                     "nonfinite"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float).reshape(-1))
        for name in ("grad_norm", "weight_norm"):
            arr = np.asarray(getattr(self, name), dtype=float)
            object.__setattr__(self, name, arr.reshape(len(self.layer_steps), -1) if arr.size else np.zeros((0, 0)))
        self._check_lengths()

    def _check_lengths(self) -> None:
        pairs = [("train_loss", "steps"), ("test_loss", "eval_steps")]
        pairs += [(n, "eval_steps") for n in ("test_acc", "train_acc") if getattr(self, n).size]
        pairs += [(n, "layer_steps") for n in ("grad_norm", "weight_norm", "nonfinite") if getattr(self, n).size]
        for values, steps in pairs:
            if len(getattr(self, values)) != len(getattr(self, steps)):
                raise ValueError(f"RunSeries.{values} has {len(getattr(self, values))} rows, "
                                 f"{steps} has {len(getattr(self, steps))}")

    @property
    def label(self) -> str:
        return f"w{self.width} d{self.depth}" + (f" (run {self.run_id})" if self.run_id is not None else "")


def series_from_records(
    metrics: Iterable[MetricRecord],
    layers: Iterable[LayerStats] = (),
    *,
    run_id: int | None,
    width: int,
    depth: int,
    params: int,
    lr: float,
    base_lr: float | None = None,
    lr_ref_params: int | None = None,
    dropout: float = 0.0,
) -> RunSeries:
    """Build a RunSeries from the records a Sink received. A step recorded twice (a resumed run
    re-emitting after its checkpoint) keeps its last value; a layer missing at a step reads NaN."""
    by_key: dict[str, dict[int, float]] = {}
    for r in metrics:
        by_key.setdefault(r.key, {})[r.step] = r.value
    train = by_key.get(TRAIN_LOSS_METRIC, {})
    evals = sorted(by_key.get(TEST_LOSS_METRIC, {}))
    grad, weight, nonfinite, layer_steps = _layer_arrays(layers)
    return RunSeries(
        run_id=run_id, width=width, depth=depth, params=params, lr=lr,
        steps=np.array(sorted(train), dtype=float), train_loss=_values_at(train, sorted(train)),
        eval_steps=np.array(evals, dtype=float), test_loss=_values_at(by_key.get(TEST_LOSS_METRIC), evals),
        test_acc=_values_at(by_key.get("test_acc"), evals), train_acc=_values_at(by_key.get("train_acc"), evals),
        layer_steps=layer_steps, grad_norm=grad, weight_norm=weight, nonfinite=nonfinite, base_lr=base_lr,
        lr_ref_params=lr_ref_params, dropout=dropout,
    )


def _values_at(values: Mapping[int, float] | None, steps: Sequence[int]) -> FloatArray:
    """values[step] for each step (NaN where missing); empty when the metric was never recorded."""
    if not values:
        return _empty()
    return np.array([values.get(step, np.nan) for step in steps], dtype=float)


def _layer_arrays(layers: Iterable[LayerStats]) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(grad, weight) as (T, L), nonfinite per step (T,), and the T steps."""
    rows = {(r.step, r.layer): r for r in layers}
    if not rows:
        return _empty2(), _empty2(), _empty(), _empty()
    steps = sorted({s for s, _ in rows})
    n_layers = 1 + max(layer for _, layer in rows)
    grad = np.full((len(steps), n_layers), np.nan)
    weight = np.full((len(steps), n_layers), np.nan)
    nonfinite = np.zeros(len(steps))
    index = {s: i for i, s in enumerate(steps)}
    for (s, layer), r in rows.items():
        grad[index[s], layer], weight[index[s], layer] = r.grad_norm, r.weight_norm
        nonfinite[index[s]] += r.nonfinite
    return grad, weight, nonfinite, np.array(steps, dtype=float)


@dataclass(frozen=True)
class GroupRow:
    """One finished run in a group table: its size, seed and "the loss of the run" (one stated rule)."""

    width: int
    depth: int
    seed: int
    loss: float
    run_id: int | None = None


# --------------------------------------------------------------------------- small numeric helpers


def _window_stats(x: FloatArray, starts: FloatArray, ends: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mean, variance and count of the finite values of x[starts[i]:ends[i]] for every i, in O(len(x))
    with running sums (mean NaN where there are none, variance NaN with fewer than two)."""
    finite = np.isfinite(x)
    clipped = np.where(finite, np.clip(x, -_BIG, _BIG), 0.0)
    sums = np.concatenate([[0.0], np.cumsum(clipped)])
    squares = np.concatenate([[0.0], np.cumsum(clipped**2)])
    counts = np.concatenate([[0], np.cumsum(finite)])
    n = counts[ends] - counts[starts]
    s1, s2 = sums[ends] - sums[starts], squares[ends] - squares[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / np.maximum(n, 1), np.nan)
        var = np.where(n > 1, np.maximum(s2 - s1 * mean, 0.0) / np.maximum(n - 1, 1), np.nan)
    return mean, var, n


def _window_means(x: FloatArray, starts: FloatArray, ends: FloatArray) -> FloatArray:
    """Mean of the finite values of x[starts[i]:ends[i]] for every i (NaN where none)."""
    return _window_stats(x, starts, ends)[0]


def _rolling_mean(x: FloatArray, k: int) -> FloatArray:
    """Mean of the last k values ending at each index (fewer at the start)."""
    ends = np.arange(1, len(x) + 1)
    return _window_means(x, np.maximum(ends - k, 0), ends)


def _first_run(mask: FloatArray, k: int) -> int | None:
    """Index at which the first run of k consecutive True values completes, or None."""
    if len(mask) < k:
        return None
    full = np.flatnonzero(np.convolve(mask.astype(int), np.ones(k, dtype=int), "valid") == k)
    return int(full[0]) + k - 1 if full.size else None


def _train_level_at(s: RunSeries, at_steps: FloatArray, k: int) -> FloatArray:
    """Mean train loss over the k train steps ending at each of `at_steps`; before the first train
    step (the step-0 evaluation) the first k train losses stand in."""
    if s.train_loss.size == 0:
        return np.full(len(at_steps), np.nan)
    ends = np.searchsorted(s.steps, at_steps, side="right")
    ends = np.maximum(ends, min(k, len(s.steps)))
    return _window_means(s.train_loss, np.maximum(ends - k, 0), ends)


def _initial_loss(x: FloatArray) -> float:
    """The first finite train loss: the untrained model's level (one batch is noisy, but a mean over
    the first steps would already include the fast early drop, or an early blow-up)."""
    finite = x[np.isfinite(x)]
    return float(finite[0]) if finite.size else math.nan


def _prefix_argmin(x: FloatArray) -> FloatArray:
    """Index of the minimum of x[:i+1] for every i (NaNs skipped; 0 while all are NaN)."""
    best = np.fmin.accumulate(x)
    hit = np.where(x == best, np.arange(len(x)), 0)
    return np.maximum.accumulate(hit)


def _median_before(values: FloatArray, steps: FloatArray, step: float, k: int) -> float:
    """Median of the last k values recorded at or before `step` (the first k if none)."""
    end = max(int(np.searchsorted(steps, step, side="right")), min(k, len(values)))
    window = values[max(end - k, 0):end]
    window = window[np.isfinite(window)]
    return float(np.median(window)) if window.size else math.nan


def _total_norm(per_layer: FloatArray) -> FloatArray:
    """Global L2 norm per log step from per-layer norms (T, L) -> (T,)."""
    return np.sqrt(np.sum(np.square(per_layer), axis=1)) if per_layer.size else _empty()


def _alert(s: RunSeries, kind: str, severity: str, step: float | None, message: str, suggestion: str,
           evidence: Mapping[str, float]) -> Alert:
    return Alert(kind=kind, severity=severity, step=None if step is None else int(step), message=message,
                 suggestion=suggestion, evidence={k: float(v) for k, v in evidence.items()}, run_id=s.run_id)


# --------------------------------------------------------------------------- divergence


def lr_suggestion(s: RunSeries, th: Thresholds, ref_params: int | None = None) -> tuple[float, str]:
    """The lower learning rate to try after a divergence, and why.

    With a reference size (the argument, else the run's own `lr_ref_params`) smaller than this model,
    the sqrt-params rule of note 003 says lr = base_lr * sqrt(ref_params / params); if the run already
    trained at or below that rate (or no reference is known), fall back to lr / lr_backoff."""
    ref = ref_params or s.lr_ref_params
    base = s.base_lr if s.base_lr is not None else s.lr
    if ref and s.params > ref:
        rule_lr = base * math.sqrt(ref / s.params)
        if rule_lr < 0.95 * s.lr:
            return rule_lr, (f"lower lr {s.lr:.3g} -> {rule_lr:.3g} (x{rule_lr / s.lr:.2f}): the sqrt-params rule "
                             f"{base:.3g} * sqrt({ref:,} / {s.params:,}) for this size")
    new = s.lr / th.lr_backoff
    why = "already at or below the sqrt-params rate" if ref else "pass a reference size for the sqrt-params rule"
    return new, f"lower lr {s.lr:.3g} -> {new:.3g} (/{th.lr_backoff:g}; {why}); gradient clipping helps too"


def _nonfinite_evidence(s: RunSeries) -> tuple[float, str] | None:
    """(step, what) of the first non-finite train loss, test loss or gradient."""
    found: list[tuple[float, str]] = []
    for steps, values, name in ((s.steps, s.train_loss, "train loss"), (s.eval_steps, s.test_loss, "test loss")):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            found.append((steps[bad[0]], f"{name} is {values[bad[0]]}"))
    if s.layer_steps.size:
        bad_grad = np.zeros(len(s.layer_steps), dtype=bool)
        if s.grad_norm.size:
            bad_grad |= ~np.all(np.isfinite(s.grad_norm), axis=1)
        if s.nonfinite.size:
            bad_grad |= s.nonfinite > 0
        bad = np.flatnonzero(bad_grad)
        if bad.size:
            count = s.nonfinite[bad[0]] if s.nonfinite.size else math.nan
            found.append((s.layer_steps[bad[0]], f"gradients are non-finite ({count:.0f} values)"))
    return min(found, key=lambda f: f[0]) if found else None


def _blowup(s: RunSeries, th: Thresholds) -> tuple[float, float, float] | None:
    """(step, lowest loss in the window, reference) where the train loss first stayed above
    divergence_factor x max(best level before the window, divergence_floor x initial level)."""
    x, k = s.train_loss, th.divergence_window
    if len(x) <= k:
        return None
    level = _rolling_mean(x, th.smooth_window)
    best = np.fmin.accumulate(level)
    reference = np.fmax(best, th.divergence_floor * _initial_loss(x))
    low = sliding_window_view(np.where(np.isfinite(x), x, np.inf), k).min(axis=1)  # window j: x[j:j+k]
    hits = np.flatnonzero(low[1:] > th.divergence_factor * reference[: len(low) - 1])
    if not hits.size:
        return None
    j = int(hits[0]) + 1
    return s.steps[j + k - 1], float(low[j]), float(reference[j - 1])


def _instability(s: RunSeries, th: Thresholds) -> tuple[float, dict[str, float]] | None:
    """A best-then-rising test loss that is instability, not overfitting: the train loss is not
    still falling, and it rises too or the gradient norm grows (with the weights)."""
    te, ev = s.test_loss, s.eval_steps
    candidates = _rise_candidates(te, th.test_rise_factor, th.rise_evals)
    if not candidates:
        return None
    train = _train_level_at(s, ev, th.smooth_window)
    train_best = np.fmin.accumulate(train)
    best_idx = _prefix_argmin(te)
    for i in candidates:
        b = int(best_idx[i])
        still_falling = train[i] < train[b] * (1 - th.train_drop_min)
        train_rising = train[i] > th.train_rise_factor * train_best[i]
        g_ratio, w_ratio = _norm_growth(s, th, ev[b], ev[i])
        norms_growing = g_ratio > th.norm_growth_factor and w_ratio > 1
        if not still_falling and (train_rising or norms_growing):
            return ev[i], {"test_loss": te[i], "best_test_loss": te[b], "best_step": ev[b], "train_loss": train[i],
                           "best_train_loss": train_best[i], "grad_norm_growth": g_ratio,
                           "weight_norm_growth": w_ratio}
    return None


def _norm_growth(s: RunSeries, th: Thresholds, then: float, now: float) -> tuple[float, float]:
    """How much the global gradient and weight norms grew from step `then` to step `now`
    (medians of grad_window logging steps; NaN without layer statistics)."""
    if not s.grad_norm.size:
        return math.nan, math.nan
    ratios = []
    for per_layer in (s.grad_norm, s.weight_norm):
        total = _total_norm(per_layer)
        ratios.append(_median_before(total, s.layer_steps, now, th.grad_window)
                      / _median_before(total, s.layer_steps, then, th.grad_window))
    return ratios[0], ratios[1]


def _rise_candidates(te: FloatArray, factor: float, sustain: int) -> list[int]:
    """Evaluation indices where the test loss has been above factor x its best so far for `sustain`
    consecutive evaluations (ending there)."""
    if len(te) < sustain + 1:
        return []
    with np.errstate(invalid="ignore"):
        above = te > factor * np.fmin.accumulate(te)
    runs = np.convolve(above.astype(int), np.ones(sustain, dtype=int), "valid") == sustain
    return [int(i) + sustain - 1 for i in np.flatnonzero(runs)]


def detect_divergence(s: RunSeries, th: Thresholds, ref_params: int | None = None) -> list[Alert]:
    """Non-finite values, a train loss far above its best, or an unstable best-then-rising test loss.
    At most one alert: the earliest evidence (a tie goes to that order)."""
    new_lr, why = lr_suggestion(s, th, ref_params)
    base = {"lr": s.lr, "params": s.params, "suggested_lr": new_lr}
    found = [a for a in (_nonfinite_alert(s, why, base), _blowup_alert(s, th, why, base),
                         _instability_alert(s, th, why, base)) if a is not None]
    return [min(found, key=lambda a: a.step or 0)] if found else []  # min keeps the first of equal steps


def _nonfinite_alert(s: RunSeries, why: str, base: dict[str, float]) -> Alert | None:
    found = _nonfinite_evidence(s)
    if found is None:
        return None
    step, what = found
    return _alert(
        s,
        AlertKind.DIVERGENCE,
        Severity.CRITICAL,
        step,
        f"{s.label}: {what} at step {step:.0f} (lr {s.lr:.3g})",
        why,
        base,
    )


def _blowup_alert(s: RunSeries, th: Thresholds, why: str, base: dict[str, float]) -> Alert | None:
    found = _blowup(s, th)
    if found is None:
        return None
    step, low, ref = found
    message = (
        f"{s.label}: train loss stayed above {low:.4g} for {th.divergence_window} steps up to {step:.0f}, "
        f"{low / ref:.0f}x its best level {ref:.4g} (lr {s.lr:.3g})"
    )
    return _alert(
        s, AlertKind.DIVERGENCE, Severity.CRITICAL, step, message, why, {**base, "loss": low, "reference_loss": ref}
    )


def _instability_alert(s: RunSeries, th: Thresholds, why: str, base: dict[str, float]) -> Alert | None:
    found = _instability(s, th)
    if found is None:
        return None
    step, ev = found
    growth = ev["grad_norm_growth"]
    message = (
        f"{s.label}: test loss {ev['test_loss']:.4g} at step {step:.0f} is "
        f"{ev['test_loss'] / ev['best_test_loss']:.1f}x its best {ev['best_test_loss']:.4g} "
        f"(step {ev['best_step']:.0f}) and the train loss is not falling ({ev['train_loss']:.4g})"
        + (f"; gradient norm x{growth:.1f}" if math.isfinite(growth) else "")
        + ": unstable, not overfitting"
    )
    return _alert(s, AlertKind.DIVERGENCE, Severity.WARNING, step, message, why, {**base, **ev})


# --------------------------------------------------------------------------- plateau / flatline


def _plateau_windows(s: RunSeries, th: Thresholds) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """For every train step: window start (step), relative improvement of the window's second half
    over its first half, its standard error (batch noise), and the second half's mean train loss."""
    x, steps = s.train_loss, s.steps
    starts = steps - th.plateau_window * (steps - steps[0])
    j = np.searchsorted(steps, starts, side="left")
    ends = np.arange(1, len(x) + 1)
    mid = (j + ends) // 2
    (m1, v1, n1), (m2, v2, n2) = _window_stats(x, j, mid), _window_stats(x, mid, ends)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (m1 - m2) / m1
        rel_se = np.sqrt(v1 / n1 + v2 / n2) / m1
    span_ok = steps - steps[j] >= th.plateau_min_steps
    return starts, np.where(span_ok, rel, np.nan), rel_se, m2


def _test_windows(s: RunSeries, th: Thresholds, starts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per train step: whether the window holds enough evaluations, the test loss's relative
    improvement over it (same halves rule), and its recent level."""
    ev, te = s.eval_steps, s.test_loss
    e_end = np.searchsorted(ev, s.steps, side="right")
    e_start = np.searchsorted(ev, starts, side="left")
    e_mid = (e_start + e_end) // 2
    first, second = _window_means(te, e_start, e_mid), _window_means(te, e_mid, e_end)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (first - second) / first
    return (e_end - e_start) >= th.plateau_min_evals, rel, second


def detect_plateau(s: RunSeries, th: Thresholds, group_best: float | None = None) -> list[Alert]:
    """No meaningful improvement over the last `plateau_window` of the run while far from where it
    should be: above plateau_gap_factor x the group's best loss (same rule as the group's losses,
    usually a test loss), or still near its initial train loss (a flatline). The train loss must be
    stuck beyond doubt (its improvement plus plateau_z standard errors of batch noise below
    plateau_min_rel_improvement), and the test loss too wherever the window holds enough evaluations."""
    if len(s.train_loss) < 2:
        return []
    starts, rel_train, rel_se, train_level = _plateau_windows(s, th)
    with np.errstate(invalid="ignore"):
        # conclusive: even the improvement plus plateau_z standard errors of batch noise is below the bar
        stuck = rel_train + th.plateau_z * rel_se < th.plateau_min_rel_improvement
        level = train_level
        if s.test_loss.size:
            enough, rel_test, test_level = _test_windows(s, th, starts)
            stuck &= ~enough | (rel_test < th.plateau_min_rel_improvement)
            level = np.where(enough, test_level, train_level)
        initial = _initial_loss(s.train_loss)
        flat = train_level > th.flatline_frac * initial
        far = level > th.plateau_gap_factor * group_best if group_best is not None else np.zeros(len(level), bool)
    hits = np.flatnonzero(stuck & (flat | far))
    if not hits.size:
        return []
    i = int(hits[0])
    return [
        _plateau_alert(s, th, i, starts[i], rel_train[i], train_level[i], level[i], initial, group_best, bool(flat[i]))
    ]


def _plateau_alert(
    s: RunSeries,
    th: Thresholds,
    i: int,
    start: float,
    rel: float,
    train_level: float,
    level: float,
    initial: float,
    group_best: float | None,
    flat: bool,
) -> Alert:
    step = s.steps[i]
    if flat or group_best is None:
        where = f"still {train_level / initial:.0%} of its initial loss {initial:.3g}"
    else:
        where = f"{level / group_best:.2f}x the group's best {group_best:.3g}"
    message = (
        f"{s.label}: {'flatline' if flat else AlertKind.PLATEAU.value} - train loss {train_level:.4g} improved "
        f"{rel:.1%} over steps {start:.0f}-{step:.0f} (< {th.plateau_min_rel_improvement:.0%}); {where}"
    )
    hints = []
    if s.dropout > 0:
        hints.append(f"lower dropout {s.dropout:g} (held fixed as depth grows it starves deep nets)")
    hints += [
        "try another seed (an unlucky seed flatlined a deep net)",
        "He init, normalisation or residual blocks" if flat else "a higher lr or a schedule",
    ]
    evidence = {
        "train_loss": train_level,
        "loss": level,
        "initial_loss": initial,
        "rel_improvement": rel,
        "window_start": start,
    }
    if group_best is not None:
        evidence["group_best"] = group_best
    return _alert(s, AlertKind.PLATEAU, Severity.WARNING, step, message, "; ".join(hints), evidence)


# --------------------------------------------------------------------------- gradients


def detect_gradients(s: RunSeries, th: Thresholds) -> list[Alert]:
    """Vanishing or exploding gradients: the first-to-last layer gradient-norm ratio beyond a threshold
    for `grad_window` consecutive logging steps; or one layer whose gradient collapses while the
    others' do not (reported as vanishing_gradients)."""
    g = s.grad_norm
    if g.ndim != 2 or g.shape[1] < 2 or g.shape[0] < th.grad_window:
        return []
    first, last = g[:, 0], g[:, -1]
    valid = np.isfinite(first) & np.isfinite(last) & (last > 0) & (first >= 0)
    ratio = np.where(valid, first / np.where(valid, last, 1.0), np.nan)
    alerts = []
    with np.errstate(invalid="ignore"):
        vanishing = _first_run(ratio < th.grad_ratio_vanishing, th.grad_window)
        exploding = _first_run(ratio > th.grad_ratio_exploding, th.grad_window)
    if vanishing is not None:
        alerts.append(_ratio_alert(s, th, ratio, vanishing, AlertKind.VANISHING_GRADIENTS))
    if exploding is not None:
        alerts.append(_ratio_alert(s, th, ratio, exploding, AlertKind.EXPLODING_GRADIENTS))
    collapse = _collapse(g, th)
    if collapse is not None and vanishing is None:
        alerts.append(_collapse_alert(s, th, *collapse))
    return alerts


def _ratio_alert(s: RunSeries, th: Thresholds, ratio: FloatArray, i: int, kind: str) -> Alert:
    window = ratio[i - th.grad_window + 1 : i + 1]
    r = float(np.median(window))
    n_layers = s.grad_norm.shape[1]
    if kind == AlertKind.VANISHING_GRADIENTS:
        what = (
            f"input-side layer gets 1/{1 / r:,.0f} of the last layer's gradient norm"
            if r > 0
            else "input-side layer gets no gradient"
        )
        fix = (
            'He init, normalisation (norm = "layer") or residual blocks (arch = "resmlp"), or Adam: '
            "plain deep MLPs attenuate gradients toward the input"
        )
        limit = th.grad_ratio_vanishing
    else:
        what = f"input-side layer gets {r:,.0f}x the last layer's gradient norm"
        fix = "lower lr, clip gradients (grad_clip = 1.0), add normalisation or use a smaller init"
        limit = th.grad_ratio_exploding
    message = (
        f"{s.label}: {what} for {th.grad_window} logging steps up to step {s.layer_steps[i]:.0f} "
        f"({n_layers} layers; threshold {limit:g})"
    )
    return _alert(
        s, kind, Severity.WARNING, s.layer_steps[i], message, fix, {"ratio": r, "threshold": limit, "layers": n_layers}
    )


def _collapse(g: FloatArray, th: Thresholds) -> tuple[int, int, float, float] | None:
    """(log index, layer, its fall, the other layers' median fall) of the first layer whose gradient norm
    fell collapse_factor from its early level (median of the first grad_window logs) while the others'
    median fell less than collapse_others_factor."""
    k = th.grad_window
    if g.shape[0] < 2 * k:
        return None
    early = np.median(g[:k], axis=0)  # (L,)
    recent = np.median(sliding_window_view(g[k:], k, axis=0), axis=-1)  # (T-2k+1, L): row r ends at log r+2k-1
    with np.errstate(invalid="ignore", divide="ignore"):
        fall = early / recent
    best: tuple[int, int, float, float] | None = None
    for layer in range(g.shape[1]):
        others = np.median(np.delete(fall, layer, axis=1), axis=1)
        with np.errstate(invalid="ignore"):
            hits = np.flatnonzero((fall[:, layer] > th.collapse_factor) & (others < th.collapse_others_factor))
        if hits.size and (best is None or hits[0] < best[0]):
            r = int(hits[0])
            best = (r, layer, float(fall[r, layer]), float(others[r]))
    if best is None:
        return None
    return best[0] + 2 * k - 1, best[1], best[2], best[3]


def _collapse_alert(s: RunSeries, th: Thresholds, i: int, layer: int, fall: float, others: float) -> Alert:
    message = (
        f"{s.label}: layer {layer} gradient norm fell {fall:,.0f}x from its early level by step "
        f"{s.layer_steps[i]:.0f} while the other layers fell {others:.1f}x (median)"
    )
    fix = "a dead or saturated layer: lower lr, He init, normalisation; check for dead ReLUs"
    return _alert(
        s,
        AlertKind.VANISHING_GRADIENTS,
        Severity.WARNING,
        s.layer_steps[i],
        message,
        fix,
        {"layer": layer, "fall": fall, "others_fall": others, "threshold": th.collapse_factor},
    )


# --------------------------------------------------------------------------- overfitting


def detect_overfitting(s: RunSeries, th: Thresholds) -> list[Alert]:
    """Memorisation: the test loss has turned up (overfit_test_rise above its best, sustained) while the
    train loss is still falling (train_drop_min below its level at the best test evaluation) and the
    test-train gap has grown by overfit_gap_growth x the best test loss."""
    te, ev = s.test_loss, s.eval_steps
    candidates = _rise_candidates(te, 1 + th.overfit_test_rise, th.rise_evals)
    if not candidates or s.train_loss.size == 0:
        return []
    train = _train_level_at(s, ev, th.smooth_window)
    gap = te - train
    min_gap = np.fmin.accumulate(gap)
    best_idx = _prefix_argmin(te)
    for i in candidates:
        b = int(best_idx[i])
        falling = train[i] < train[b] * (1 - th.train_drop_min)
        growth = gap[i] - min_gap[i]
        if falling and growth > th.overfit_gap_growth * te[b]:
            return [_overfit_alert(s, th, i, b, train, growth)]
    return []


def _overfit_alert(s: RunSeries, th: Thresholds, i: int, b: int, train: FloatArray, growth: float) -> Alert:
    te, ev = s.test_loss, s.eval_steps
    message = (
        f"{s.label}: test loss {te[i]:.4g} at step {ev[i]:.0f} is up from its best {te[b]:.4g} "
        f"(step {ev[b]:.0f}) while the train loss fell {train[b]:.4g} -> {train[i]:.4g}; "
        f"gap grew {growth:.3g}"
    )
    evidence = {
        "test_loss": te[i],
        "best_test_loss": te[b],
        "best_step": ev[b],
        "train_loss": train[i],
        "gap_growth": growth,
    }
    if s.train_acc.size and s.test_acc.size and math.isfinite(s.train_acc[i] - s.test_acc[i]):
        message += f"; accuracy train {s.train_acc[i]:.0%} vs test {s.test_acc[i]:.0%}"
        evidence["acc_gap"] = s.train_acc[i] - s.test_acc[i]
    fix = (
        f"memorising: more data, weight decay or early stopping (best test loss at step {ev[b]:.0f}); check label noise"
    )
    return _alert(s, AlertKind.OVERFITTING, Severity.WARNING, ev[i], message, fix, evidence)


# --------------------------------------------------------------------------- group level


@dataclass(frozen=True)
class _Size:
    value: int  # the size along the group's axis (depth within a width group, width within a depth group)
    mean: float
    spread: float  # max - min over seeds (0 with one seed)
    seeds: int
    run_ids: tuple[tuple[int, int], ...]  # (seed, run_id)
    sd: float  # sample standard deviation over seeds (0 with one seed)


def _groups(rows: Sequence[GroupRow]) -> list[tuple[str, str, int, list[_Size]]]:
    """(axis, fixed, fixed value, sizes ascending) for every width group (axis depth) and every depth
    group (axis width) with at least two sizes. Non-finite losses (diverged runs) are left out."""
    finite = [r for r in rows if math.isfinite(r.loss)]
    out = []
    for axis, fixed in (("depth", "width"), ("width", "depth")):
        for fixed_value in sorted({getattr(r, fixed) for r in finite}):
            members = [r for r in finite if getattr(r, fixed) == fixed_value]
            sizes = [
                _size(v, [r for r in members if getattr(r, axis) == v])
                for v in sorted({getattr(r, axis) for r in members})
            ]
            if len(sizes) >= 2:
                out.append((axis, fixed, fixed_value, sizes))
    return out


def _size(value: int, rows: list[GroupRow]) -> _Size:
    losses = np.array([r.loss for r in rows])
    ids = tuple((r.seed, r.run_id) for r in rows if r.run_id is not None)
    sd = float(losses.std(ddof=1)) if len(losses) > 1 else 0.0
    return _Size(value, float(losses.mean()), float(losses.max() - losses.min()), len(rows), ids, sd)


def _as_rows(table: GroupTable) -> list[GroupRow]:
    return [r if isinstance(r, GroupRow) else GroupRow(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in table]


def _pair_evidence(axis: str, fixed: str, fixed_value: int, small: _Size, large: _Size) -> dict[str, float]:
    ev = {
        fixed: fixed_value,
        f"{axis}_small": small.value,
        f"{axis}_large": large.value,
        "loss_small": small.mean,
        "loss_large": large.mean,
        "spread_small": small.spread,
        "spread_large": large.spread,
        "seeds_small": small.seeds,
        "seeds_large": large.seeds,
    }
    for tag, size in (("small", small), ("large", large)):
        ev.update({f"run_{tag}_s{seed}": run_id for seed, run_id in size.run_ids})
    return ev


def detect_non_monotonic(table: GroupTable, th: Thresholds) -> list[Alert]:
    """Within a width group (sizes = depths) or a depth group (sizes = widths), a larger model whose mean
    loss over seeds is worse than the best smaller one by more than the seed spread of either (and
    more than monotonic_tolerance of the loss). One alert per offending larger model."""
    alerts = []
    for axis, fixed, fixed_value, sizes in _groups(_as_rows(table)):
        for p in range(1, len(sizes)):
            small = min(sizes[:p], key=lambda z: z.mean)
            large = sizes[p]
            margin = max(small.spread, large.spread, th.monotonic_tolerance * small.mean)
            if large.mean - small.mean > margin:
                alerts.append(_non_monotonic_alert(axis, fixed, fixed_value, small, large, margin))
    return alerts


def _non_monotonic_alert(axis: str, fixed: str, fixed_value: int, small: _Size, large: _Size, margin: float) -> Alert:
    message = (
        f"{fixed} {fixed_value}: {axis} {large.value} (loss {large.mean:.4g}, {large.seeds} seeds) is "
        f"worse than {axis} {small.value} ({small.mean:.4g}, {small.seeds} seeds) "
        f"by {large.mean - small.mean:.3g}, "
        f"more than the seed spread {max(small.spread, large.spread):.3g}"
    )
    fix = (
        "the larger model is mis-tuned, not too big: scale lr per size (sqrt-params rule), keep dropout from "
        "growing with depth, add normalisation/residuals; do not fit a law through this group yet"
    )
    return Alert(
        AlertKind.NON_MONOTONIC,
        Severity.WARNING,
        None,
        message,
        fix,
        {k: float(v) for k, v in _pair_evidence(axis, fixed, fixed_value, small, large).items()},
    )


def seed_noise(a: _Size, b: _Size) -> float:
    """Two standard errors of the difference of two sizes' mean losses over seeds: a gap smaller than
    this is not told apart from seed luck (about 95%). Not the seeds' range: the range grows with the
    number of seeds while the means it judges get more certain, so 16 seeds would raise more alarms
    than 4. A size with one seed borrows the other's spread."""
    sd_a = a.sd if a.seeds > 1 else b.sd
    sd_b = b.sd if b.seeds > 1 else a.sd
    return 2.0 * math.sqrt(sd_a**2 / a.seeds + sd_b**2 / b.seeds)


def detect_seed_sensitivity(table: GroupTable, th: Thresholds) -> list[Alert]:
    """In a group, adjacent sizes whose loss gap is smaller than seed_spread_factor x their seed noise
    (`seed_noise`): the trend between them cannot be trusted. One alert per group, naming the worst pair."""
    alerts = []
    for axis, fixed, fixed_value, sizes in _groups(_as_rows(table)):
        pairs = [(a, b) for a, b in pairwise(sizes) if max(a.seeds, b.seeds) >= 2]
        flagged = [
            (seed_noise(a, b) / max(abs(b.mean - a.mean), 1e-300), a, b)
            for a, b in pairs
            if seed_noise(a, b) > th.seed_spread_factor * abs(b.mean - a.mean)
        ]
        if flagged:
            alerts.append(
                _seed_alert(axis, fixed, fixed_value, max(flagged, key=lambda f: f[0]), len(flagged), len(pairs))
            )
    return alerts


def _seed_alert(
    axis: str, fixed: str, fixed_value: int, worst: tuple[float, _Size, _Size], n_flagged: int, n_pairs: int
) -> Alert:
    _, a, b = worst
    noise = seed_noise(a, b)
    message = (
        f"{fixed} {fixed_value}: {axis} {a.value} -> {b.value} changes the mean loss by only "
        f"{abs(b.mean - a.mean):.3g}, within the seed noise {noise:.3g} (2 standard errors over "
        f"{a.seeds} and {b.seeds} seeds; {n_flagged} of {n_pairs} adjacent pairs like this)"
    )
    fix = "run more seeds (an unlucky seed once faked a whole depth trend) or space the sizes further apart"
    evidence = _pair_evidence(axis, fixed, fixed_value, a, b)
    evidence.update({"pairs_flagged": n_flagged, "pairs": n_pairs, "seed_noise": noise})
    return Alert(
        AlertKind.SEED_SENSITIVITY, Severity.WARNING, None, message, fix, {k: float(v) for k, v in evidence.items()}
    )


# --------------------------------------------------------------------------- entry points


def diagnose_run(
    s: RunSeries, thresholds: Thresholds | None = None, group_best: float | None = None, ref_params: int | None = None
) -> list[Alert]:
    """Every run-level detector on one run (finished or in progress), alerts ordered by step.

    group_best: the best loss in the run's group, by the sweep's loss rule (enables "plateau far from
    the group"). ref_params: the size the lr was tuned at (e.g. the smallest model of the group), for
    the sqrt-params suggestion after a divergence; the run's own lr_ref_params is used otherwise."""
    th = thresholds or Thresholds()
    alerts = detect_divergence(s, th, ref_params)
    diverged_at = alerts[0].step if alerts and alerts[0].severity == Severity.CRITICAL else None
    if diverged_at is None:  # after a blow-up the loss curve says nothing about plateaus or overfitting
        alerts += detect_plateau(s, th, group_best) + detect_overfitting(s, th)
    alerts += detect_gradients(s, th)
    return sorted(alerts, key=lambda a: (a.step if a.step is not None else math.inf, a.kind))


def diagnose_group(table: GroupTable, thresholds: Thresholds | None = None) -> list[Alert]:
    """Group-level detectors over finished runs: rows of (width, depth, seed, loss) or GroupRow."""
    th = thresholds or Thresholds()
    rows = _as_rows(table)
    return detect_non_monotonic(rows, th) + detect_seed_sensitivity(rows, th)
