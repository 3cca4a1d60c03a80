"""Choosing a law by how well it predicts what it was not shown, and predicting with an honest band.

"The primary goal should be optimizing the accuracy of your law's predictive performance": so a
form is judged by rolling-origin extrapolation, not by how well it fits. Every applicable form is
fitted with the largest 1, 2, ... sizes left out (while at least `min_fit_sizes` sizes, and enough
for the form's parameters, remain; at most `max_origins` origins) and scored by the RMS log error of
its predictions of the sizes it did not see, up to `horizon` x the largest size it saw. A form's
score is the root mean square of those over the origins every fitted form could be scored at (so
a form needing more sizes is not excused from the hardest origins, and one origin whose
extrapolation blows up counts); the lowest score wins. For a two-variable law the sizes are those
of the first variable (N): an origin keeps `min_fit_sizes` of them and enough distinct (N, D)
points for the form's parameters. Sizes closer than `SAME_SIZE` are one size (`size_levels`). All
refits of one form are one batch of the solver: a held-out size is a weight of 0; the refits stay
in `FormScore.origin_laws`, for the per-point report (`heldout`) and the band's extrapolation rate.

Why these choices (measured on synthetic curves of each form, 16 sizes, tests/analysis): with every
form scored on its own origins and every held-out size, the true form won 4 of 10 curves (a form
with more parameters skipped the far origins, and 100x extrapolations from 4 points decided);
with common origins and a 4x horizon, 9 of 10 (the tenth, an M4 curve, is within noise of BNSL1
and flagged). On the benchmark the medians are unchanged or better.

The choice is flagged as not clear when a runner-up's per-origin errors are within one standard
error of the winner's (paired over origins) or both are below the data's own scatter, and when
fewer than `min_origins` origins could be scored.

Forms that cannot be fitted are skipped with one line saying why: too few distinct sizes for their
parameters, non-positive or non-finite losses, a flat curve, a loss that rises with size, or a form
that diverges as x -> 0 on a metric with a known upper bound (an error rate: only forms that stay
below the bound apply, as in Alabdulmohsin et al. 2022), or data above that bound. When some form
could be fitted but none scored (too few sizes to leave one out), one is taken without a comparison
(`SelectOptions.fallback`: the offset law first) and a warning says so. Nothing here raises on bad data.

The prediction band (`predict_with_band`) adds, to the group bootstrap of the fit, the error a
bootstrap of the parameters misses: the scatter of a new measurement around the law or, beyond the
data, the error of extrapolating itself, which grows with the distance and is measured by the same
rolling origins. A bare bootstrap band covered half the benchmark's held-out points. See `Band`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike

from scaletui.analysis.forms import FORMS, FittedLaw, form, predict
from scaletui.analysis.solve import Bootstrap, FitOptions, StopCheck, bootstrap, fit_rows, law_of_row, prepare

__all__ = [
    "DEFAULT_FORMS",
    "Band",
    "FormScore",
    "SelectOptions",
    "Selection",
    "band_from_bootstrap",
    "curve_problem",
    "extrapolation_rate",
    "heldout_scores",
    "predict_with_band",
    "select_form",
    "size_levels",
]

FloatArray = np.ndarray
XS = ArrayLike | Sequence[ArrayLike]
DEFAULT_FORMS: tuple[str, ...] = ("M1", "M2", "M3", "M4", "BNSL1")
FLAT_REL = 1e-6  # relative spread of the per-size mean loss below which a curve is flat


@dataclass(frozen=True)
class SelectOptions:
    """How forms are compared.

    forms: candidates (CHINCHILLA for (N, D) data). fit: solver options, including the loss and
    the metric's upper bound. min_fit_sizes: fewest sizes an origin leaves to fit (4: a 3-parameter
    law through 3 sizes is an interpolation). max_origins: most origins scored, nearest first.
    horizon: an origin is scored on the held-out sizes up to horizon x its largest fitted size (at
    least the next size): the distance one extrapolates in practice, not the 100x a far origin
    would ask of 4 points. min_origins: fewer scored origins make the choice unclear.
    prefer_simpler: among forms within noise of the best, take the one with fewest parameters.
    fallback: when no form can be scored (too few sizes to leave any out) but some could be
    fitted, the first of these that was fitted is taken (then any fitted form), with a warning:
    the offset law first, scaletui's law before forms could be compared. alt_spaces: residual
    spaces the winning form is also fitted in (`fit.loss` has the first); the one whose refits
    predict the held-out sizes best is kept (see `select_form`).
    """

    forms: tuple[str, ...] = DEFAULT_FORMS
    fit: FitOptions = field(default_factory=FitOptions)
    min_fit_sizes: int = 4
    max_origins: int = 12
    horizon: float = 4.0
    min_origins: int = 3
    prefer_simpler: bool = False
    fallback: tuple[str, ...] = ("M2", "M1", "M3")
    alt_spaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormScore:
    """One form on one curve.

    law: the fit on every point. per_origin[k - 1]: the RMS log error (the benchmark's metric) on
    the held-out sizes within the horizon, with the k largest sizes left out (rel_per_origin: the
    same as mean |pred - actual| / actual). heldout_error / heldout_rel_error: their RMS / mean over
    the origins every fitted form was scored at. skipped: why the form was not fitted or not scored.
    origin_laws[k - 1]: the law fitted with the k largest sizes left out (what `heldout` judges
    point by point, and what `extrapolation_rate` measures the band's growth with).
    """

    form: str
    law: FittedLaw | None = None
    heldout_error: float = math.nan
    heldout_rel_error: float = math.nan
    per_origin: tuple[float, ...] = ()
    skipped: str | None = None
    rel_per_origin: tuple[float, ...] = ()
    origin_laws: tuple[FittedLaw, ...] = ()

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.law is not None and math.isfinite(self.heldout_error)


@dataclass(frozen=True)
class Selection:
    """Every form's score side by side, the chosen one (None when no form could be scored), and
    the warnings: forms skipped and why, an unclear choice, too few origins."""

    scores: tuple[FormScore, ...]
    best: FormScore | None
    warnings: tuple[str, ...] = ()

    @property
    def law(self) -> FittedLaw | None:
        return None if self.best is None else self.best.law

    def score(self, name: str) -> FormScore:
        return next(s for s in self.scores if s.form == name.upper())


# ----------------------------------------------------------------------------- curve checks


def _as_features(xs: XS) -> tuple[FloatArray, ...]:
    arr = np.asarray(xs, dtype=float)
    return (arr.ravel(),) if arr.ndim <= 1 else tuple(np.asarray(v, dtype=float).ravel() for v in arr)


def curve_problem(xs: XS, loss: ArrayLike) -> str | None:
    """Why no form can be fitted to these points (one line), or None when they can be."""
    try:
        feats = _as_features(xs)
    except ValueError:
        return "the variables have different lengths"
    y = np.asarray(loss, dtype=float).ravel()
    if any(f.shape != y.shape for f in feats):
        return f"sizes and losses differ in length ({feats[0].size} and {y.size})"
    if not all(np.all(np.isfinite(f) & (f > 0)) for f in feats):
        return "every size must be finite and > 0"
    if not np.all(np.isfinite(y) & (y > 0)):
        return f"{int(np.sum(~(np.isfinite(y) & (y > 0))))} loss value(s) are not finite and > 0"
    return _trend_problem(feats[0], y)


def _above_bound(loss: ArrayLike, upper_bound: float | None) -> str | None:
    """Data above the metric's stated upper bound: wrong data or a wrong bound, for every form alike."""
    top = float(np.max(np.asarray(loss, dtype=float)))
    if upper_bound is None or top < upper_bound * (1 + 1e-3):
        return None
    return f"a loss of {top:.4g} exceeds the stated upper bound {upper_bound:g}"


def _trend_problem(x: FloatArray, y: FloatArray) -> str | None:
    sizes, inverse = np.unique(x, return_inverse=True)
    if sizes.size < 2:
        return f"only {sizes.size} distinct size: nothing to scale"
    means = np.bincount(inverse.ravel(), y) / np.bincount(inverse.ravel())
    if np.ptp(means) <= FLAT_REL * float(np.mean(means)):
        return "the loss does not change with size (flat curve): there is no scaling to fit"
    slope = float(np.polyfit(np.log(sizes), np.log(means), 1)[0])
    if slope > 0 and means[-1] > means[0]:
        return f"the loss rises with size (log-log slope {slope:+.3g}): not a decreasing scaling law"
    return None


def _dedupe(feats: tuple[FloatArray, ...], y: FloatArray) -> tuple[tuple[FloatArray, ...], FloatArray, str | None]:
    """Drop exact duplicate rows (the same measurement stored twice) and say so."""
    rows = np.column_stack(feats + (y,))
    first = np.sort(np.unique(rows, axis=0, return_index=True)[1])
    if first.size == y.size:
        return feats, y, None
    return (tuple(f[first] for f in feats), y[first],
            f"{y.size - first.size} duplicate row(s) (same size and loss) counted once")


# ----------------------------------------------------------------------------- rolling origin

SAME_SIZE = 1e-3  # sizes closer than this in log are one size (digitised or rounded copies of one model)


def size_levels(x: ArrayLike) -> FloatArray:
    """Each point's size, with sizes closer than SAME_SIZE (in log) merged into one level (its largest).

    Leaving out "the largest size" must leave out every point of that size: in data read off a figure
    (Chinchilla's) one model's N comes as 1.2568994e10 and 1.2568980e10, and leaving out only one of them
    is not an extrapolation; its distance beyond the fit (1e-6 in log) would make any error over distance
    explode. Sizes of a sweep are exact, and more than SAME_SIZE apart."""
    xa = np.asarray(x, dtype=float)
    sizes = np.unique(xa)
    if sizes.size < 2:
        return xa.copy()
    starts = np.concatenate([[True], np.diff(np.log(sizes)) > SAME_SIZE])
    group = np.cumsum(starts) - 1
    top = sizes[np.concatenate([np.flatnonzero(starts)[1:] - 1, [sizes.size - 1]])]
    return top[group[np.searchsorted(sizes, xa)]]


def _origins(feats: tuple[FloatArray, ...], min_sizes: int, min_points: int,
             max_origins: int) -> tuple[FloatArray, list[FloatArray]]:
    """Weight rows (row 0: every point; row k: the k largest sizes of the first variable left out)
    and the held-out masks of rows 1..K. An origin must leave `min_sizes` sizes of the first variable
    and `min_points` distinct points (for two variables: (N, D) pairs) to fit."""
    x = size_levels(feats[0])
    sizes = np.unique(x)
    rows, masks = [np.ones(x.size)], []
    for k in range(1, min(max_origins, sizes.size - min_sizes) + 1):
        held = x >= sizes[-k]
        if _distinct_points(feats, ~held) < min_points:
            break
        rows.append((~held).astype(float))
        masks.append(held)
    return np.array(rows), masks


def _distinct_points(feats: tuple[FloatArray, ...], keep: FloatArray) -> int:
    return int(np.unique(np.vstack([f[keep] for f in feats]), axis=1).shape[1])


def _min_sizes(m_min_points: int, n_vars: int, opts: SelectOptions) -> int:
    """Fewest sizes of the first variable an origin leaves: `min_fit_sizes`, and for one variable
    also the form's own minimum (its distinct points are its sizes)."""
    return max(opts.min_fit_sizes, m_min_points) if n_vars == 1 else opts.min_fit_sizes


def _errors(law: FittedLaw, feats: tuple[FloatArray, ...], y: FloatArray, held: FloatArray,
            horizon: float) -> tuple[float, float]:
    """(RMS log error, mean relative error) of `law` on the points in `held` within the horizon."""
    x0 = feats[0]
    reach = max(horizon * law.x_range[1], float(x0[held].min()))
    held = held & (x0 <= reach)
    with np.errstate(all="ignore"):
        pred = predict(law, *(f[held] for f in feats))
        log_err = np.log(pred) - np.log(y[held])
    rms = float(np.sqrt(np.mean(log_err**2)))
    return (rms, float(np.mean(np.abs(pred - y[held]) / y[held]))) if math.isfinite(rms) else (math.inf, math.inf)


def _rms(values: Sequence[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def _bound_problem(name: str, upper_bound: float | None) -> str | None:
    if upper_bound is None or form(name).finite_at_zero:
        return None
    bounded = ", ".join(f.name for f in FORMS.values() if f.finite_at_zero)
    return f"diverges as x -> 0, so it cannot respect the metric's upper bound {upper_bound:g} (use {bounded})"


def _score_form(name: str, feats: tuple[FloatArray, ...], y: FloatArray, opts: SelectOptions,
                should_stop: StopCheck | None = None) -> FormScore:
    problem = _bound_problem(name, opts.fit.upper_bound)
    if problem is not None:
        return FormScore(name, skipped=problem)
    try:
        m, data = prepare(name, feats, y, opts.fit.upper_bound)
    except ValueError as exc:
        return FormScore(name, skipped=str(exc))
    min_fit = _min_sizes(m.min_points(), m.n_vars, opts)
    w, masks = _origins(feats, min_fit, m.min_points(), opts.max_origins)
    with np.errstate(all="ignore"):
        fits = fit_rows(m, data, w, opts.fit, should_stop=should_stop)
    laws = [law_of_row(m, data, fits, k, w[k], opts.fit) for k in range(w.shape[0])]
    if not masks:
        sizes = np.unique(size_levels(feats[0])).size
        why = f"no size can be held out: {sizes} sizes, {name} needs {min_fit} to fit"
        return FormScore(name, laws[0], skipped=why)
    errors = [_errors(laws[k], feats, y, masks[k - 1], opts.horizon) for k in range(1, w.shape[0])]
    return FormScore(name, laws[0], per_origin=tuple(e[0] for e in errors), rel_per_origin=tuple(e[1] for e in errors),
                     origin_laws=tuple(laws[1:]))


def _on_common_origins(scores: list[FormScore]) -> tuple[FormScore, ...]:
    """Score every fitted form on the origins all of them could be fitted at (the nearest K):
    a form needing more sizes would otherwise be excused from the hardest origins."""
    fitted = [s for s in scores if s.skipped is None and s.per_origin]
    k = _common_origins(scores)
    return tuple(replace(s, heldout_error=_rms(s.per_origin[:k]),
                         heldout_rel_error=float(np.mean(s.rel_per_origin[:k]))) if s in fitted else s
                 for s in scores)


def _common_origins(scores: Sequence[FormScore]) -> int:
    """How many origins (the nearest) every fitted form was scored at."""
    return min((len(s.per_origin) for s in scores if s.skipped is None and s.per_origin), default=0)


def _candidates(forms: Sequence[str], n_vars: int) -> list[str]:
    """The requested forms that take n_vars variables; if none does, every form that does (the
    default candidates are one-variable: (N, D) data gets CHINCHILLA without asking)."""
    known = [name.upper() for name in forms if name.upper() in FORMS]
    matching = [name for name in known if FORMS[name].n_vars == n_vars]
    return matching or [name for name, f in FORMS.items() if f.n_vars == n_vars] or known


def heldout_scores(xs: XS, loss: ArrayLike, options: SelectOptions = SelectOptions(),
                   should_stop: StopCheck | None = None) -> tuple[FormScore, ...]:
    """Every applicable form of `options.forms` fitted and scored on one curve (skipped forms say why).
    `should_stop` is consulted at every solver iteration (solve.FitStopped when it says stop)."""
    problem = curve_problem(xs, loss)
    names = _candidates(options.forms, 1 if problem else len(_as_features(xs)))
    unknown = [FormScore(n.upper(), skipped=f"unknown form; known forms: {', '.join(FORMS)}")
               for n in options.forms if n.upper() not in FORMS]
    problem = problem or _above_bound(loss, options.fit.upper_bound)
    if problem is not None:
        return tuple(FormScore(name, skipped=problem) for name in names) + tuple(unknown)
    feats, y, _ = _dedupe(_as_features(xs), np.asarray(loss, dtype=float).ravel())
    return _on_common_origins([_score_form(name, feats, y, options, should_stop) for name in names]) + tuple(unknown)


# ----------------------------------------------------------------------------- selection


def _scatter(law: FittedLaw, feats: tuple[FloatArray, ...], y: FloatArray) -> float:
    """RMS log residual of a fit on every point: the data's own scatter around the law."""
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.mean((np.log(predict(law, *feats)) - np.log(y)) ** 2)))


def _within_noise(a: FormScore, b: FormScore, scatter: float) -> bool:
    """Is b's held-out error indistinguishable from a's? Paired over the origins both scored."""
    k = min(len(a.per_origin), len(b.per_origin))
    diff = np.array(b.per_origin[:k]) - np.array(a.per_origin[:k])
    if k == 0 or not np.all(np.isfinite(diff)):
        return False
    if max(a.heldout_error, b.heldout_error) <= scatter:
        return True
    return k >= 2 and float(diff.mean()) <= float(diff.std(ddof=1)) / math.sqrt(k)


def _choose(ranked: list[FormScore], close: list[FormScore], prefer_simpler: bool) -> FormScore:
    if not (prefer_simpler and close):
        return ranked[0]
    return min([ranked[0]] + close, key=lambda s: (form(s.form).n_params, s.heldout_error))


def select_form(xs: XS, loss: ArrayLike, options: SelectOptions = SelectOptions(),
                should_stop: StopCheck | None = None) -> Selection:
    """Fit every form, score each by rolling-origin held-out error, pick the best, say if unclear.
    Raises solve.FitStopped when `should_stop()` says so during the fits."""
    scores = heldout_scores(xs, loss, options, should_stop)
    notes = [f"{s.form} {'not scored' if s.law is not None else 'skipped'}: {s.skipped}"
             for s in scores if s.skipped is not None]
    ranked = sorted((s for s in scores if s.ok), key=lambda s: s.heldout_error)
    if not ranked:
        return _fallback(scores, notes, options.fallback)
    feats, y, dup = _dedupe(_as_features(xs), np.asarray(loss, dtype=float).ravel())
    ranked[0], space_note = _best_space(ranked[0], feats, y, options, _common_origins(scores), should_stop)
    scores = tuple(ranked[0] if s.form == ranked[0].form else s for s in scores)
    notes += [space_note] if space_note else []
    assert ranked[0].law is not None
    scatter = _scatter(ranked[0].law, feats, y)
    close = [s for s in ranked[1:] if _within_noise(ranked[0], s, scatter)]
    best = _choose(ranked, close, options.prefer_simpler)
    notes += [dup] if dup else []
    notes += _clarity_notes(ranked[0], close, scatter, best, options.min_origins)
    return Selection(scores, best, tuple(notes))


def _best_space(best: FormScore, feats: tuple[FloatArray, ...], y: FloatArray, opts: SelectOptions,
                origins: int, should_stop: StopCheck | None) -> tuple[FormScore, str | None]:
    """The winning form refitted in each of `opts.alt_spaces` and scored on the same origins; the space
    whose refits predicted the held-out sizes best is kept (ties keep `opts.fit.loss`'s), with a note
    when the two cannot be told apart (within noise, or a single origin). The law says its space.

    Why: a residual space is a modelling choice like the form, and is judged the same way: the lowest
    held-out error wins, and the note says when the two are within noise. Relative error ("log") suits
    most curves; log(1 + L), Caballero et al.'s objective, weighs the high-loss points more. Measured
    with benchmarks/extrapolation.py --resamples 0 (median rmse_log of the selected law, log only ->
    with log1p tried; IC / NMT / LM / BB / 4-digit addition): 0.0222 -> 0.0222, 0.0105 -> 0.0086,
    0.0007 -> 0.0007, 0.0051 -> 0.0060, 0.0111 -> 0.0109 (BNSL's own 0.0109), switching 8 of 24, 4 of
    5, 3 of 5, 7 of 10 and the 1 curve. Switching only when the alternative is better beyond noise
    kept BB at 0.0051 but not 4-digit addition (its 7 origins cannot tell the spaces apart), which the
    lowest-error rule, the forms' own, gets right. Only the winner is refitted: one more form's fit,
    not one per form."""
    assert best.law is not None
    chosen, note = best, None
    for space in opts.alt_spaces:
        if space == best.law.loss_space:
            continue
        alt = replace(opts, fit=replace(opts.fit, loss=replace(opts.fit.loss, space=space)))
        other = _score_form(best.form, feats, y, alt, should_stop)
        if other.skipped is not None or len(other.per_origin) < origins:
            continue
        other = replace(other, heldout_error=_rms(other.per_origin[:origins]),
                        heldout_rel_error=float(np.mean(other.rel_per_origin[:origins])))
        if other.ok and other.heldout_error < chosen.heldout_error:
            assert other.law is not None
            unclear = origins < 2 or _within_noise(other, chosen, _scatter(other.law, feats, y))
            note = (f"residuals not clear: {best.form} on {space} residuals {other.heldout_error:.3g} within noise "
                    f"of {best.heldout_error:.3g} on {best.law.loss_space} residuals (the lower is used)"
                    if unclear else None)
            chosen = other
    return chosen, note


def _fallback(scores: tuple[FormScore, ...], notes: list[str], order: Sequence[str]) -> Selection:
    """No form could be scored: take a fitted one (the first of `order`, then any) and say so;
    none fitted either: no choice."""
    fitted = [s for s in scores if s.law is not None]
    if not fitted:
        return Selection(scores, None, tuple(notes) + ("no form could be fitted and scored",))
    ranks = {name: i for i, name in enumerate(order)}
    best = min(fitted, key=lambda s: ranks.get(s.form, len(ranks)))
    why = (f"too few sizes to compare forms by held-out error: {best.form} taken without a comparison "
           "(run more sizes)")
    return Selection(scores, best, tuple(notes) + (why,))


def _clarity_notes(first: FormScore, close: list[FormScore], scatter: float, best: FormScore,
                   min_origins: int) -> list[str]:
    notes = []
    if close:
        others = ", ".join(f"{s.form} {s.heldout_error:.3g}" for s in close)
        notes.append(f"choice not clear: {others} within noise of {first.form} "
                     f"{first.heldout_error:.3g} (held-out log error; scatter {scatter:.2g})")
    if len(best.per_origin) < min_origins:
        notes.append(f"only {len(best.per_origin)} held-out origin(s) could be scored "
                     f"(at least {min_origins} make a clear choice): run more sizes")
    return notes


# ----------------------------------------------------------------------------- prediction band


@dataclass(frozen=True)
class Band:
    """A prediction at x with its band at `level`: lo <= value <= hi (for x of the first variable;
    two-variable laws take x as a tuple (N, D) of arrays).

    The band is the `level` interval of log L_b(x) + eps over resamples b: L_b is the law refitted
    on a group-bootstrap resample (parameter uncertainty), and eps ~ N(0, s(x)^2) the error of a new
    measurement, s(x) = max(scatter, extrapolation_rate * d): inside the data a new measurement
    scatters like the old ones (scatter: SD of the fit's log residuals); beyond it the form itself
    may be wrong, more so the further out (d: distance in log x beyond the largest fitted size;
    extrapolation_rate: RMS, over rolling origins and held-out points, of log error per unit of log
    distance extrapolated). The larger of the two, not their sum: a held-out error already contains
    the scatter of the held-out point.

    Calibration, measured on the 45 benchmark curves' extrapolated points (benchmarks/extrapolation.py):
    the bootstrap alone covered 51% (IC: 25%), bootstrap + scatter 66%; this band 96% (IC, 24 curves
    and 4,400 points: 92%; the other domains have 1-10 curves and reach 99-100%).
    """

    x: tuple[FloatArray, ...]
    value: FloatArray
    lo: FloatArray
    hi: FloatArray
    level: float
    n_resamples: int
    extrapolation_rate: float
    law: FittedLaw
    notes: tuple[str, ...] = field(default=())


def extrapolation_rate(law: FittedLaw, xs: XS, loss: ArrayLike, options: SelectOptions = SelectOptions(),
                       origin_laws: Sequence[FittedLaw] | None = None) -> float:
    """RMS over rolling origins and held-out points of (log error) / (log distance beyond the fit).

    origin_laws: the law's form refitted with the 1, 2, ... largest sizes left out, when the caller
    has them (`FormScore.origin_laws`, from the selection): then nothing is refitted."""
    feats, y = _as_features(xs), np.asarray(loss, dtype=float).ravel()
    subs = _origin_laws(law, feats, y, options) if origin_laws is None else list(origin_laws)
    if not subs:
        return 0.0
    with np.errstate(all="ignore"):
        ratios = [_rates(sub, feats, y, held) for sub, held in zip(subs, _held_masks(feats[0], len(subs)), strict=True)]
    every = np.concatenate(ratios)
    every = every[np.isfinite(every)]
    return float(np.sqrt(np.mean(every**2))) if every.size else 0.0


def _origin_laws(law: FittedLaw, feats: tuple[FloatArray, ...], y: FloatArray,
                 options: SelectOptions) -> list[FittedLaw]:
    m, data = prepare(law.form, feats, y, options.fit.upper_bound)
    w, masks = _origins(feats, _min_sizes(m.min_points(), m.n_vars, options), m.min_points(), options.max_origins)
    if not masks:
        return []
    with np.errstate(all="ignore"):
        fits = fit_rows(m, data, w[1:], options.fit, exact_rows=0)
    return [law_of_row(m, data, fits, k, w[k + 1], options.fit) for k in range(len(masks))]


def _held_masks(x: FloatArray, count: int) -> list[FloatArray]:
    """Masks of the points left out by origins 1..count: the k largest sizes of x."""
    levels = size_levels(x)
    sizes = np.unique(levels)
    return [levels >= sizes[-k] for k in range(1, count + 1)]


def _rates(sub: FittedLaw, feats: tuple[FloatArray, ...], y: FloatArray, held: FloatArray) -> FloatArray:
    dist = np.log(feats[0][held]) - math.log(sub.x_range[1])
    err = np.log(predict(sub, *(f[held] for f in feats))) - np.log(y[held])
    ahead = dist > 0
    return err[ahead] / dist[ahead]


def predict_with_band(law: FittedLaw, x_new: XS, xs: XS, loss: ArrayLike, *,
                      groups: ArrayLike | None = None, level: float = 0.9, n_resamples: int = 1000,
                      options: SelectOptions = SelectOptions(), rng: np.random.Generator | int | None = 0,
                      should_stop: Callable[[], bool] | None = None, calibrated: bool = True,
                      origin_laws: Sequence[FittedLaw] | None = None) -> Band:
    """The law's prediction at x_new with a `level` band (see `Band` for what the band contains).

    xs, loss are the data `law` was fitted to (with `options.fit`); groups: all points of a group
    are resampled together (the seeds of one size, the steps of one run). Cancellable between
    bootstrap chunks via should_stop (the band then uses the resamples done). calibrated=False
    gives the bare bootstrap band (parameter uncertainty only), for comparison. origin_laws: see
    `extrapolation_rate`. To reuse one bootstrap for intervals and bands, call `bootstrap` and
    `band_from_bootstrap` yourself (this function is the two in a row).
    """
    feats, y = _as_features(xs), np.asarray(loss, dtype=float).ravel()
    gen = np.random.default_rng(rng)
    with np.errstate(all="ignore"):
        boot = bootstrap(law.form, feats, y, groups=groups, n_resamples=n_resamples, rng=gen,
                         options=options.fit, should_stop=should_stop)
    rate = extrapolation_rate(law, feats, y, options, origin_laws) if calibrated else 0.0
    return band_from_bootstrap(law, boot, x_new, feats, y, rate=rate, level=level, rng=gen, calibrated=calibrated)


def band_from_bootstrap(law: FittedLaw, boot: Bootstrap, x_new: XS, xs: XS, loss: ArrayLike, *, rate: float,
                        level: float = 0.9, rng: np.random.Generator | int | None = 0,
                        calibrated: bool = True) -> Band:
    """The band of `predict_with_band` from a bootstrap already run (`solve.bootstrap` of law's form on
    xs, loss) and the extrapolation rate (`extrapolation_rate`); rng draws the measurement noise."""
    feats, y = _as_features(xs), np.asarray(loss, dtype=float).ravel()
    new = _as_features(x_new)
    with np.errstate(all="ignore"):
        log_pred = np.log(boot.predictions(*new)) if boot.n_done else np.log(predict(law, *new))[None, :]
        scatter = float(np.std(np.log(predict(law, *feats)) - np.log(y))) if calibrated else 0.0
    dist = np.maximum(np.log(new[0]) - math.log(law.x_range[1]), 0.0)
    noise = np.random.default_rng(rng).normal(size=(log_pred.shape[0], 1)) * np.maximum(scatter, rate * dist)[None, :]
    with np.errstate(over="ignore"):  # a band wider than floats can hold is [0, inf], said as such
        lo, hi = np.exp(np.percentile(log_pred + noise, (50 * (1 - level), 50 * (1 + level)), axis=0))
    notes = (f"bootstrap stopped after {boot.n_done} of {boot.n_requested} resamples",) if boot.stopped else ()
    return Band(new, predict(law, *new), lo, hi, level, boot.n_done, rate if calibrated else 0.0, law, notes)
