"""Scaling-law fits that can be trusted: fit, uncertainty, prediction, and the checks that say when not to.

Three laws, all fitted the same way:

* `Form.POWER`    L(x) = A * x^-alpha                 (pure power law, E = 0)
* `Form.OFFSET`   L(x) = E + A * x^-alpha             (power law with an irreducible loss E >= 0)
* `Form.TWO_VAR`  L(N, D) = E + A/N^alpha + B/D^beta  (Hoffmann et al. 2022, Approach 3)

How they are fitted, and why (see `huber_lse` for the objective): Huber loss (delta = 1e-3) on
the log-loss residuals of the log-sum-exp form of the law, minimised by L-BFGS-B with analytic
gradients from many starting points, keeping the best. Besiroglu et al. (2024) showed the
published Chinchilla numbers came from an optimiser that stopped early; so the tolerances here
are set far below anything the objective can resolve (it stops when it can no longer make
progress, not when progress looks small) and a single start is never trusted: every start gets
a short exploration budget, and the best of them is then run to convergence.

Start grid. Like the replication's grid over (e, a, b, alpha, beta), but anchored to the data so
the same grid works for N ~ 1e9 and for width ~ 64: each power term starts at a fraction of the
mean loss at the geometric centre of its variable, E at a fraction of the smallest loss. The whole
grid is scored in one vectorised pass; L-BFGS-B then runs from the best grid point of every
exponent combination (the exponents are where separate basins live) plus the best points overall.

Uncertainty is a bootstrap over *groups* (runs or seeds, never steps of one run), each resample
refitted from the full fit's optimum and the best few grid points, cancellable between resamples.
The checks - held-out prediction of the largest model, monotonicity of the data, identifiability
warnings and stability of the exponent over training time - are what make a fit pane honest: a
law that cannot predict the model it did not see, or whose exponent drifts between epochs, is a
curve through points, not a law.

Only numpy, scipy and the standard library are imported (plus scaletui.records for FitResult):
this module runs in the app's process and must never pull in torch.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import ctypes
import enum
import functools
import io
import itertools
import math
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from scaletui.analysis.huber_lse import Design, jacobian, value_and_grad, values_at
from scaletui.records import FitResult

__all__ = [
    "Form", "FitOptions", "LawFit", "BootstrapResult", "HeldOut", "PredictiveCheck", "Violation",
    "Monotonicity", "Stability", "FitData", "CsvError",
    "fit_law", "fit_power_law", "fit_two_variable", "predict", "objective", "bootstrap_law",
    "predictive_check", "check_monotone", "fit_warnings", "conditioning", "exponent_stability",
    "load_csv", "row_list", "to_fit_result", "start_grid", "HOFFMANN_2022", "BESIROGLU_2024",
]

# Published Chinchilla fits, for tests and for the "does my fitter have the 2022 bug" check.
HOFFMANN_2022: dict[str, float] = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BESIROGLU_2024: dict[str, float] = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


class Form(str, enum.Enum):
    """Which law; the value is the human-readable form stored in `FitResult.form`."""

    POWER = "A*x^-alpha"
    OFFSET = "E + A*x^-alpha"
    TWO_VAR = "E + A/N^alpha + B/D^beta"

    @property
    def n_vars(self) -> int:
        return 2 if self is Form.TWO_VAR else 1

    @property
    def has_offset(self) -> bool:
        return self is not Form.POWER

    @property
    def param_names(self) -> tuple[str, ...]:
        """Natural parameters in display order (E first when the law has one)."""
        return {Form.POWER: ("A", "alpha"), Form.OFFSET: ("E", "A", "alpha"),
                Form.TWO_VAR: ("E", "A", "alpha", "B", "beta")}[self]

    @property
    def n_params(self) -> int:
        return len(self.param_names)


_COEF_NAMES = ("A", "B")
_EXPO_NAMES = ("alpha", "beta")


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the optimiser. The defaults reproduce Besiroglu et al. (2024) on their data.

    ftol/gtol are far below what the objective can resolve, so L-BFGS-B runs until it cannot
    improve (the replication's point: the 2022 fit stopped early). `n_starts` L-BFGS-B runs are
    made from the scored grid (0 = only the explicit starts).

    Two phases: every start runs for at most `explore_maxiter` iterations; the best of them then
    continues to `maxiter`. On degenerate data (no floor, flat losses) a start can crawl along a
    valley for thousands of iterations; only the winner deserves that, and the winner is always
    run to convergence, so the answer is never one that stopped early.

    Bounds: exponents within `exponent_bounds` (a negative exponent is a loss that grows with
    scale, not a scaling law); E >= `min_offset` x the smallest loss (below that E is zero for
    every purpose, and an unbounded log E would drift to -inf).
    """

    delta: float = 1e-3
    n_starts: int = 32
    exponent_bounds: tuple[float, float] = (0.0, 10.0)
    min_offset: float = 1e-6
    ftol: float = 1e-15
    gtol: float = 1e-15
    explore_maxiter: int = 500
    maxiter: int = 20_000
    maxfun: int = 40_000


@dataclass(frozen=True)
class LawFit:
    """One fitted law. `params` holds natural parameters (E = 0.0 for `Form.POWER`);
    `theta` the optimum in the log-space layout of `huber_lse`."""

    form: Form
    params: dict[str, float]
    theta: tuple[float, ...]
    objective: float
    n_points: int
    delta: float
    converged: bool
    message: str
    n_iter: int
    grad_norm: float  # max |projected gradient| at the optimum
    n_starts: int
    n_near_best: int  # how many starts ended at (numerically) the same objective as the best
    exponent_bounds: tuple[float, float] = (0.0, 10.0)

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @property
    def E(self) -> float:  # noqa: N802 - the literature's name
        return self.params.get("E", 0.0)

    @property
    def A(self) -> float:  # noqa: N802
        return self.params["A"]


# ----------------------------------------------------------------------------- BLAS threads


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Callable[[], int], Callable[[int], None]], ...]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (Linux only).

    Why: L-BFGS-B on 3-5 parameters calls BLAS/LAPACK on tiny matrices thousands of times per
    fit. A multi-threaded OpenBLAS wakes its threads for them, and on a machine whose cores are
    busy (training workers, a CI runner) that makes a fit 2-20x slower. numpy and scipy each
    ship their own OpenBLAS, so both are found by scanning the process's mapped libraries.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ()
    paths = sorted({ln.split()[-1] for ln in maps.splitlines() if "openblas" in ln.lower() and "/" in ln})
    controls = []
    for path in paths:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path)
            for suffix in ("", "64_"):
                for prefix in ("openblas", "scipy_openblas"):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        set_.argtypes = [ctypes.c_int]
                        controls.append((get, set_))
    return tuple(controls)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list[int] = []


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run the body with single-threaded OpenBLAS; the last of any concurrent users restores
    the thread counts found by the first (the setting is process-wide, not per thread)."""
    global _blas_users
    controls = _openblas_thread_controls()
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved[:] = [int(get()) for get, _ in controls]
            for _, set_ in controls:
                set_(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for (_, set_), n in zip(controls, _blas_saved):
                    set_(n)


# ----------------------------------------------------------------------------- data plumbing


def _features(xs: ArrayLike | Sequence[ArrayLike]) -> tuple[np.ndarray, ...]:
    """One array (one variable) or a sequence/2-D array of variables -> tuple of 1-D float arrays."""
    arr = np.asarray(xs, dtype=float)
    if arr.ndim == 1:
        return (arr,)
    if arr.ndim == 2:
        return tuple(arr)
    raise ValueError(f"x must be one array or one array per variable, got shape {arr.shape}")


def _check_data(form: Form, feats: tuple[np.ndarray, ...], loss: np.ndarray) -> None:
    if len(feats) != form.n_vars:
        raise ValueError(f"{form.value} needs {form.n_vars} variable(s), got {len(feats)}")
    for f in feats:
        if f.shape != loss.shape:
            raise ValueError(f"x and loss must have the same length, got {f.shape} and {loss.shape}")
        if not np.all(np.isfinite(f) & (f > 0)):
            raise ValueError("every x must be finite and > 0 (the law is fitted in log space)")
    if not np.all(np.isfinite(loss) & (loss > 0)):
        raise ValueError("every loss must be finite and > 0 (the law is fitted in log space)")
    if loss.size < form.n_params:
        raise ValueError(f"{form.value} has {form.n_params} parameters; got only {loss.size} points")


def _design(form: Form, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, delta: float,
            weights: ArrayLike | None = None) -> Design:
    feats, y = _features(xs), np.asarray(loss, dtype=float)
    _check_data(form, feats, y)
    w = None if weights is None else np.asarray(weights, dtype=float)
    return Design(np.log(np.vstack(feats)), np.log(y), form.has_offset, delta, w)


# ----------------------------------------------------------------------------- parameters


def _params_from_theta(form: Form, theta: np.ndarray) -> dict[str, float]:
    k = form.n_vars
    out: dict[str, float] = {"E": math.exp(theta[k]) if form.has_offset else 0.0}
    expo = theta[k + int(form.has_offset):]
    for i in range(k):
        out[_COEF_NAMES[i]] = math.exp(theta[i])
        out[_EXPO_NAMES[i]] = float(expo[i])
    if form is Form.POWER:
        out.pop("E")
    return {name: out[name] for name in form.param_names}


def _theta_from_params(form: Form, params: Mapping[str, float]) -> np.ndarray:
    k = form.n_vars
    coef = [math.log(params[_COEF_NAMES[i]]) for i in range(k)]
    off = [math.log(max(params["E"], 1e-12))] if form.has_offset else []
    return np.array(coef + off + [float(params[_EXPO_NAMES[i]]) for i in range(k)])


Bounds = list[tuple[float | None, float | None]]


def _bounds(form: Form, d: Design, opts: FitOptions) -> Bounds:
    coef: Bounds = [(None, None)] * form.n_vars
    offset: Bounds = [(float(d.logy.min()) + math.log(opts.min_offset), None)] if form.has_offset else []
    return coef + offset + [opts.exponent_bounds] * form.n_vars


# ----------------------------------------------------------------------------- start grid

EXPONENT_GRID = (0.05, 0.25, 0.5, 1.0, 2.0)
TERM_FRACTIONS = (0.03, 0.1, 0.3, 1.0, 3.0)  # power term / mean loss, at the geometric centre of x
OFFSET_FRACTIONS = (1e-3, 0.25, 0.5, 0.75, 0.95)  # E / smallest loss


def start_grid(form: Form, d: Design) -> np.ndarray:
    """Data-anchored product grid of starting thetas, shape (M, n_params)."""
    k = form.n_vars
    y_mean, y_min = float(np.exp(d.logy).mean()), float(np.exp(d.logy).min())
    centres = d.logx.mean(axis=1)
    offsets = [math.log(f * y_min) for f in OFFSET_FRACTIONS] if form.has_offset else [None]
    rows = []
    for expo in itertools.product(EXPONENT_GRID, repeat=k):
        for fracs in itertools.product(TERM_FRACTIONS, repeat=k):
            coef = [math.log(fracs[i] * y_mean) + expo[i] * centres[i] for i in range(k)]
            rows += [coef + ([] if e is None else [e]) + list(expo) for e in offsets]
    return np.array(rows)


def _pick_starts(grid: np.ndarray, values: np.ndarray, n: int, k: int) -> np.ndarray:
    """The best grid point of every exponent combination first, then the best overall, up to n."""
    if n <= 0:
        return grid[:0]
    order = np.argsort(values, kind="stable")
    seen: set[tuple[float, ...]] = set()
    firsts = []
    for i in order:
        key = tuple(grid[i, -k:])
        if key not in seen:
            seen.add(key)
            firsts.append(i)
    chosen = list(dict.fromkeys(firsts[:n] + list(order)))[:n]
    return grid[chosen]


# ----------------------------------------------------------------------------- the optimiser


@dataclass(frozen=True)
class _Run:
    theta: np.ndarray
    fun: float
    success: bool
    message: str
    nit: int


def _minimise(theta0: np.ndarray, d: Design, bounds: Bounds, opts: FitOptions, maxiter: int) -> _Run:
    res = minimize(value_and_grad, theta0, args=(d,), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"ftol": opts.ftol, "gtol": opts.gtol, "maxiter": maxiter,
                            "maxfun": min(opts.maxfun, 4 * maxiter)})
    return _Run(np.asarray(res.x, dtype=float), float(res.fun), bool(res.success), str(res.message),
                int(res.nit))


def _finite_fun(run: _Run) -> float:
    return run.fun if np.isfinite(run.fun) else math.inf


def _multistart(d: Design, bounds: Bounds, starts: np.ndarray, opts: FitOptions) -> tuple[_Run, list[_Run]]:
    """Explore from every start with a short budget, then run the best one to convergence."""
    runs = [_minimise(s, d, bounds, opts, opts.explore_maxiter) for s in starts]
    best = min(runs, key=_finite_fun)
    if not best.success and np.isfinite(best.fun) and opts.maxiter > opts.explore_maxiter:
        more = _minimise(best.theta, d, bounds, opts, opts.maxiter - best.nit)
        best = _Run(more.theta, more.fun, more.success, more.message, best.nit + more.nit)
    return best, runs


def _projected_grad_norm(theta: np.ndarray, d: Design, bounds: Bounds) -> float:
    g = value_and_grad(theta, d)[1]
    for i, (lo, hi) in enumerate(bounds):
        if lo is not None and theta[i] <= lo and g[i] > 0:
            g[i] = 0.0
        if hi is not None and theta[i] >= hi and g[i] < 0:
            g[i] = 0.0
    return float(np.max(np.abs(g)))


def _is_converged(run: _Run, grad_norm: float, d: Design) -> bool:
    """Success, or a line search that gave up at a point where the gradient has vanished.

    With delta = 1e-3 the objective is nearly L1, so L-BFGS-B often ends by failing a line
    search at the optimum; that counts when the projected gradient is below 1e-6 of its scale
    (delta times the total weight, the largest a gradient component of one unit of log x can be).
    """
    scale = d.delta * (float(d.weights.sum()) if d.weights is not None else d.logy.size)
    return bool(np.isfinite(run.fun)) and (run.success or grad_norm <= 1e-6 * scale)


def _best_of(form: Form, d: Design, starts: np.ndarray, opts: FitOptions) -> LawFit:
    bounds = _bounds(form, d, opts)
    best, runs = _multistart(d, bounds, starts, opts)
    near = sum(1 for r in runs if r.fun <= best.fun + 1e-9 * abs(best.fun) + 1e-15)
    gnorm = _projected_grad_norm(best.theta, d, bounds)
    return LawFit(form, _params_from_theta(form, best.theta), tuple(best.theta.tolist()), best.fun,
                  int(d.logy.size), d.delta, _is_converged(best, gnorm, d), best.message, best.nit,
                  gnorm, len(runs), near, opts.exponent_bounds)


def _clip_to_bounds(theta: np.ndarray, bounds: Bounds) -> np.ndarray:
    lo = [-np.inf if b[0] is None else b[0] for b in bounds]
    hi = [np.inf if b[1] is None else b[1] for b in bounds]
    return np.clip(theta, lo, hi)


@_one_blas_thread()
def fit_law(form: Form, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
            weights: ArrayLike | None = None, starts: Sequence[Mapping[str, float]] = (),
            options: FitOptions = FitOptions()) -> LawFit:
    """Fit `form` to (xs, loss): L-BFGS-B from `options.n_starts` grid points and every explicit
    start (natural parameters, e.g. `HOFFMANN_2022`), keeping the lowest objective.

    xs: one array for the one-variable laws, (N, D) for `Form.TWO_VAR`. weights: per-point
    multiplicities (a bootstrap resample), default all ones.
    """
    d = _design(form, xs, loss, options.delta, weights)
    explicit = [_clip_to_bounds(_theta_from_params(form, s), _bounds(form, d, options)) for s in starts]
    grid = start_grid(form, d)
    picked = _pick_starts(grid, values_at(grid, d), options.n_starts, form.n_vars)
    all_starts = np.vstack([np.array(explicit).reshape(-1, form.n_params), picked])
    if len(all_starts) == 0:
        raise ValueError("no starting point: pass starts=... or options.n_starts > 0")
    return _best_of(form, d, all_starts, options)


def fit_power_law(x: ArrayLike, loss: ArrayLike, *, offset: bool = True, weights: ArrayLike | None = None,
                  options: FitOptions = FitOptions()) -> LawFit:
    """L(x) = E + A x^-alpha (offset=True) or A x^-alpha (offset=False)."""
    return fit_law(Form.OFFSET if offset else Form.POWER, x, loss, weights=weights, options=options)


def fit_two_variable(n: ArrayLike, d: ArrayLike, loss: ArrayLike, *, weights: ArrayLike | None = None,
                     starts: Sequence[Mapping[str, float]] = (), options: FitOptions = FitOptions()) -> LawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3)."""
    return fit_law(Form.TWO_VAR, (n, d), loss, weights=weights, starts=starts, options=options)


def predict(fit: LawFit, *xs: ArrayLike) -> np.ndarray:
    """The fitted law at x (one-variable laws) or at (N, D) (`Form.TWO_VAR`)."""
    feats = tuple(np.asarray(x, dtype=float) for x in xs)
    if len(feats) != fit.form.n_vars:
        raise ValueError(f"{fit.form.value} takes {fit.form.n_vars} variable(s), got {len(feats)}")
    return _law(fit.params, feats)


def _law(p: Mapping[str, float], feats: Sequence[np.ndarray]) -> np.ndarray:
    out = np.full(np.broadcast(*feats).shape, p.get("E", 0.0))
    for i, f in enumerate(feats):
        out = out + p[_COEF_NAMES[i]] * f ** -p[_EXPO_NAMES[i]]
    return out


def objective(form: Form, params: Mapping[str, float], xs: ArrayLike | Sequence[ArrayLike],
              loss: ArrayLike, *, delta: float = 1e-3, weights: ArrayLike | None = None) -> float:
    """The Huber-on-log-loss objective at given natural parameters (e.g. a published fit)."""
    d = _design(form, xs, loss, delta, weights)
    return value_and_grad(_theta_from_params(form, params), d)[0]


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap over groups. `samples[i, j]` is parameter `names[j]` refitted on resample i.

    Intervals are percentile intervals at `level`; standard errors are sample standard
    deviations (ddof=1). `band_*` is the prediction band at `band_x` (one array per variable).
    When cancelled, everything is computed from the `n_done` resamples finished so far.
    """

    fit: LawFit
    names: tuple[str, ...]
    samples: np.ndarray
    level: float
    intervals: dict[str, tuple[float, float]]
    std_errors: dict[str, float]
    band_x: tuple[np.ndarray, ...]
    band_fit: np.ndarray
    band_lo: np.ndarray
    band_hi: np.ndarray
    n_requested: int
    n_groups: int
    n_failed: int
    stopped: bool

    @property
    def n_done(self) -> int:
        return int(self.samples.shape[0])


def _group_index(groups: ArrayLike | None, n: int) -> tuple[np.ndarray, int]:
    """Map group labels to 0..G-1 (default: every point its own group)."""
    if groups is None:
        return np.arange(n), n
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must have one label per point ({n}), got shape {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.ravel(), int(inverse.max()) + 1


def _resample_weights(rng: np.random.Generator, index: np.ndarray, n_groups: int) -> np.ndarray:
    """Draw n_groups groups with replacement; each point weighs as often as its group was drawn."""
    counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
    return counts[index].astype(float)


def _default_band_x(feats: tuple[np.ndarray, ...], n: int = 64) -> tuple[np.ndarray, ...]:
    if len(feats) == 1:
        return (np.geomspace(feats[0].min(), feats[0].max(), n),)
    return feats  # two variables: the band at the observed (N, D) points


@dataclass(frozen=True, eq=False)
class _Refitter:
    """Refits one resample: from the full optimum plus the best few of 32 good grid points."""

    form: Form
    design: Design
    full_theta: np.ndarray
    candidates: np.ndarray
    n_warm_starts: int
    opts: FitOptions

    @staticmethod
    def build(form: Form, d: Design, full: LawFit, n_warm_starts: int, opts: FitOptions) -> _Refitter:
        grid = start_grid(form, d)
        best32 = grid[np.argsort(values_at(grid, d), kind="stable")[:32]]
        return _Refitter(form, d, np.array(full.theta), best32, n_warm_starts, opts)

    def __call__(self, weights: np.ndarray) -> np.ndarray | None:
        dw = self.design.reweighted(weights)
        extra = self.candidates[np.argsort(values_at(self.candidates, dw), kind="stable")[:self.n_warm_starts]]
        best, _ = _multistart(dw, _bounds(self.form, dw, self.opts), np.vstack([self.full_theta, extra]), self.opts)
        return best.theta if np.isfinite(best.fun) else None


@_one_blas_thread()
def bootstrap_law(form: Form, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
                  groups: ArrayLike | None = None, n_resamples: int = 1000, level: float = 0.9,
                  rng: np.random.Generator | int | None = None, fit: LawFit | None = None,
                  band_x: Sequence[ArrayLike] | None = None, n_warm_starts: int = 2,
                  options: FitOptions = FitOptions(),
                  should_stop: Callable[[], bool] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> BootstrapResult:
    """Bootstrap the fit by resampling *groups* (runs, seeds) with replacement.

    Each resample is refitted from the full fit's optimum and the `n_warm_starts` best of the
    32 best full-data grid points re-scored on the resample (a resample can move to another
    basin; the warm start alone would hide that). `should_stop` is checked before every
    resample and `progress(done, total)` called after (from the calling thread: run this in a
    worker thread and post messages from `progress`); a stopped run returns what it has.
    While it runs, OpenBLAS is single-threaded process-wide (see `_one_blas_thread`).
    """
    feats, y = _features(xs), np.asarray(loss, dtype=float)
    d = _design(form, feats, y, options.delta)
    full = fit if fit is not None else fit_law(form, feats, y, options=options)
    refit = _Refitter.build(form, d, full, n_warm_starts, options)
    index, n_groups = _group_index(groups, y.size)
    gen = np.random.default_rng(rng)
    thetas: list[np.ndarray | None] = []
    stopped = False
    for i in range(n_resamples):
        if should_stop is not None and should_stop():
            stopped = True
            break
        thetas.append(refit(_resample_weights(gen, index, n_groups)))
        if progress is not None:
            progress(i + 1, n_resamples)
    bx = _default_band_x(feats) if band_x is None else tuple(np.asarray(b, dtype=float) for b in band_x)
    ok = [t for t in thetas if t is not None]
    return _summarise(form, full, ok, level, bx, n_resamples, n_groups, len(thetas) - len(ok), stopped)


def _summarise(form: Form, full: LawFit, thetas: list[np.ndarray], level: float,
               band_x: tuple[np.ndarray, ...], n_requested: int, n_groups: int, failed: int,
               stopped: bool) -> BootstrapResult:
    names = form.param_names
    fits = [_params_from_theta(form, t) for t in thetas]
    samples = np.array([[f[nm] for nm in names] for f in fits]).reshape(-1, len(names))
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    band_fit = predict(full, *band_x)
    if fits:
        lo, hi = np.percentile(samples, q, axis=0)
        preds = np.array([_law(f, band_x) for f in fits])
        band_lo, band_hi = np.percentile(preds, q, axis=0)
        se = samples.std(axis=0, ddof=1) if len(fits) > 1 else np.full(len(names), np.nan)
    else:
        lo = hi = se = np.full(len(names), np.nan)
        band_lo = band_hi = np.full_like(band_fit, np.nan)
    return BootstrapResult(full, names, samples, level,
                           {nm: (float(lo[j]), float(hi[j])) for j, nm in enumerate(names)},
                           {nm: float(se[j]) for j, nm in enumerate(names)},
                           band_x, band_fit, band_lo, band_hi, n_requested, n_groups, failed, stopped)


# ----------------------------------------------------------------------------- held-out prediction


@dataclass(frozen=True)
class HeldOut:
    """The law fitted without the largest value(s) of the first variable, judged on them.

    One entry per held-out *point*: a distinct feature tuple (x; or (N, D) for the two-variable
    law, so an N trained at three D is three points). `actual` is the mean loss of the rows at
    exactly that point (its seeds), never a mean over different D: that would be a loss no run
    had. `x_out[i]` is the point's first variable, `points[i]` the whole tuple, `n_obs[i]` how
    many rows it averages; `rel_error[i]` = |predicted - actual| / actual.
    """

    x_out: tuple[float, ...]
    predicted: tuple[float, ...]
    actual: tuple[float, ...]
    rel_error: tuple[float, ...]
    fit: LawFit
    points: tuple[tuple[float, ...], ...] = ()
    n_obs: tuple[int, ...] = ()

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_error)


@dataclass(frozen=True)
class PredictiveCheck:
    """Leave out the largest x (`leave_one`), and the two largest (`leave_two`).
    A check is None when the remaining data cannot determine the law; `notes` says why."""

    leave_one: HeldOut | None
    leave_two: HeldOut | None
    notes: tuple[str, ...] = ()


def _judge(fit: LawFit, feats: tuple[np.ndarray, ...], y: np.ndarray, x_out: np.ndarray) -> HeldOut:
    """Predicted vs actual at every distinct held-out point, ascending (by N, then D)."""
    sel = np.isin(feats[0], x_out)
    tuples, inverse = np.unique(np.vstack([f[sel] for f in feats]).T, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n_obs = np.bincount(inverse, minlength=len(tuples))
    actual = np.bincount(inverse, weights=y[sel], minlength=len(tuples)) / n_obs
    pred = predict(fit, *tuples.T)
    err = np.abs(pred - actual) / actual
    return HeldOut(tuple(float(t[0]) for t in tuples), tuple(map(float, pred)), tuple(map(float, actual)),
                   tuple(map(float, err)), fit, tuple(tuple(map(float, t)) for t in tuples), tuple(map(int, n_obs)))


def _leave_out(form: Form, feats: tuple[np.ndarray, ...], y: np.ndarray, k: int,
               opts: FitOptions) -> tuple[HeldOut | None, str | None]:
    distinct = np.unique(feats[0])
    x_out = distinct[-k:]
    keep = ~np.isin(feats[0], x_out)
    kept_tuples = np.unique(np.vstack([f[keep] for f in feats]).T, axis=0)
    if len(distinct) - k < 2 or len(kept_tuples) < form.n_params:
        return None, (f"leave-{k}-out skipped: {len(distinct) - k} distinct x left, "
                      f"{form.n_params} parameters to fit")
    fit = fit_law(form, tuple(f[keep] for f in feats), y[keep], options=opts)
    return _judge(fit, feats, y, x_out), None


@_one_blas_thread()
def predictive_check(form: Form, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
                     options: FitOptions = FitOptions()) -> PredictiveCheck:
    """Fit without the largest x (all its seeds/points) and predict it; then without the two largest.

    For `Form.TWO_VAR` "x" is the first variable, N.
    """
    feats, y = _features(xs), np.asarray(loss, dtype=float)
    _check_data(form, feats, y)
    one, note1 = _leave_out(form, feats, y, 1, options)
    two, note2 = _leave_out(form, feats, y, 2, options)
    return PredictiveCheck(one, two, tuple(n for n in (note1, note2) if n))


# ----------------------------------------------------------------------------- monotonicity


@dataclass(frozen=True)
class Violation:
    """Within one group, a larger x whose mean loss is higher than the next smaller x's.

    `spread` is the seed spread: the larger of the two seed standard deviations (ddof=1);
    NaN when both sides have a single point, and then `exceeds_spread` is None (unknown).
    """

    group: Hashable
    x_small: float
    x_large: float
    loss_small: float
    loss_large: float
    spread: float
    exceeds_spread: bool | None

    @property
    def gap(self) -> float:
        return self.loss_large - self.loss_small


@dataclass(frozen=True)
class Monotonicity:
    """Is mean loss decreasing in x within each group? `by_group[g]` answers per group."""

    by_group: dict[Hashable, bool]
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def _mean_sd(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """(x, mean loss, seed sd) per distinct x, ascending; sd is NaN for a single point."""
    out = []
    for xv in np.unique(x):
        v = y[x == xv]
        out.append((float(xv), float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan))
    return out


def _group_violations(g: Hashable, x: np.ndarray, y: np.ndarray) -> list[Violation]:
    stats = _mean_sd(x, y)
    out = []
    for (xs, ms, ss), (xl, ml, sl) in zip(stats, stats[1:]):
        if ml > ms:
            spread = float(np.nanmax([ss, sl])) if not (math.isnan(ss) and math.isnan(sl)) else math.nan
            exceeds = None if math.isnan(spread) else bool(ml - ms > spread)
            out.append(Violation(g, xs, xl, ms, ml, spread, exceeds))
    return out


def check_monotone(x: ArrayLike, loss: ArrayLike, group: ArrayLike | None = None) -> Monotonicity:
    """Compare each pair of adjacent distinct x within each group (e.g. widths within a depth).

    Adjacent pairs, not all pairs: one bad size then shows as one or two violations next to
    it, which is what a researcher needs to look at, rather than as every pair it takes part in.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    ga = np.zeros(xa.shape, dtype=int) if group is None else np.asarray(group)
    by_group: dict[Hashable, bool] = {}
    violations: list[Violation] = []
    for g in np.unique(ga):
        sel = ga == g
        key = g.item() if hasattr(g, "item") else g
        found = _group_violations(key, xa[sel], ya[sel])
        by_group[key] = not found
        violations += found
    return Monotonicity(by_group, tuple(violations))


# ----------------------------------------------------------------------------- warnings

MIN_DISTINCT_X = 4  # a 3-parameter law through 3 sizes is an interpolation, not a law
NEGLIGIBLE_E = 1e-3  # E below this fraction of the smallest loss: no floor is identified
MAX_INTERVAL_RATIO = 10.0  # bootstrap interval hi/lo above this spans orders of magnitude
MAX_CONDITION = 1e4  # cond(J^T J): predictions 100x less sensitive along some direction than another


def conditioning(fit: LawFit, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike) -> float:
    """Condition number of J^T J at the optimum, J = d log L_hat / d theta with unit-norm columns.

    Why not the Huber objective's own Hessian: with delta = 1e-3 almost every residual is in the
    linear (L1) part, whose second derivative is zero, so that Hessian is near-singular at every
    good fit. J^T J is the curvature the least-squares version of the same fit would have at the
    same point: it is singular exactly when a direction in parameter space leaves every prediction
    unchanged (E -> 0 makes the e column vanish; E, A and alpha trading off over a narrow range
    of x makes columns nearly parallel). Two choices make the number independent of units: each
    coefficient is taken at the geometric centre of its variable (A x_c^-alpha, not A at x = 1,
    which for N ~ 1e9 would make A and alpha collinear by construction), and the columns are
    scaled to unit norm.
    """
    d = _design(fit.form, xs, loss, fit.delta)
    j = jacobian(np.array(fit.theta), d)
    k, first_expo = fit.form.n_vars, fit.form.n_vars + int(fit.form.has_offset)
    for i, centre in enumerate(d.logx.mean(axis=1)):  # coefficient at the data's centre, not at x = 1
        j[:, first_expo + i] += centre * j[:, i]
    norms = np.linalg.norm(j, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(j)):
        return math.inf
    s = np.linalg.svd(j / norms, compute_uv=False)
    return math.inf if s[-1] <= 0 else float((s[0] / s[-1]) ** 2)


def _interval_warnings(boot: BootstrapResult) -> list[str]:
    out = []
    for name, (lo, hi) in boot.intervals.items():
        if not (np.isfinite(lo) and np.isfinite(hi)):
            continue
        if lo <= 0 or hi / lo > MAX_INTERVAL_RATIO:
            out.append(f"{name} not identified: its {boot.level:.0%} bootstrap interval "
                       f"[{lo:.3g}, {hi:.3g}] spans more than a factor {MAX_INTERVAL_RATIO:g}")
    return out


def fit_warnings(fit: LawFit, xs: ArrayLike | Sequence[ArrayLike], loss: ArrayLike, *,
                 boot: BootstrapResult | None = None) -> tuple[str, ...]:
    """Plain-language reasons not to trust `fit`; empty when none apply.

    Criteria (module constants): fewer than MIN_DISTINCT_X distinct values of a variable; the
    optimiser did not converge; an exponent at its bound; E below NEGLIGIBLE_E of the smallest
    loss (no floor identified, A and alpha absorb it); a bootstrap interval whose hi/lo exceeds
    MAX_INTERVAL_RATIO (or reaches 0); J^T J with condition number above MAX_CONDITION.
    """
    feats, y = _features(xs), np.asarray(loss, dtype=float)
    out = []
    for name, f in zip(("x",) if fit.form.n_vars == 1 else ("N", "D"), feats):
        k = np.unique(f).size
        if k < MIN_DISTINCT_X:
            out.append(f"only {k} distinct {name} values: a law needs at least {MIN_DISTINCT_X}")
    if not fit.converged:
        out.append(f"optimiser did not converge: {fit.message} (|grad| = {fit.grad_norm:.2g})")
    lo, hi = fit.exponent_bounds
    for name in _EXPO_NAMES[:fit.form.n_vars]:
        if min(abs(fit.params[name] - lo), abs(fit.params[name] - hi)) < 1e-6:
            out.append(f"{name} = {fit.params[name]:.4g} is at its bound [{lo:g}, {hi:g}]")
    if fit.form.has_offset and fit.E < NEGLIGIBLE_E * float(y.min()):
        out.append(f"E = {fit.E:.3g} is ~0 (A = {fit.A:.3g}): the data show no loss floor; "
                   "E is not identified (try the pure power law)")
    if boot is not None:
        out += _interval_warnings(boot)
    cond = conditioning(fit, feats, y)
    if cond > MAX_CONDITION:
        out.append(f"ill-conditioned fit (cond(J^T J) = {cond:.2g}): parameters trade off "
                   "against each other and are not separately identified")
    return tuple(out)


# ----------------------------------------------------------------------------- stability over time


@dataclass(frozen=True)
class Stability:
    """The law refitted at every evaluation step. NaN where a step had too few sizes to fit.

    Over the last `last_k` fitted steps: range and sd of alpha, and `stable` = range within
    `rel_tol` of |median alpha|. A law whose exponent moves between training regimes predicts
    nothing about a larger model, whichever step one quotes.
    """

    steps: np.ndarray
    alpha: np.ndarray
    E: np.ndarray
    A: np.ndarray
    fits: tuple[LawFit | None, ...]
    last_k: int
    alpha_range: float
    alpha_std: float
    rel_range: float
    rel_tol: float
    stable: bool
    notes: tuple[str, ...] = field(default=())


@_one_blas_thread()
def exponent_stability(x: ArrayLike, loss: ArrayLike, step: ArrayLike, *, form: Form = Form.OFFSET,
                       last_k: int = 5, rel_tol: float = 0.1,
                       options: FitOptions = FitOptions(n_starts=8)) -> Stability:
    """Refit the one-variable law at each distinct step (warm-started from the previous step)."""
    if form.n_vars != 1:
        raise ValueError("exponent_stability fits one-variable laws")
    xa, ya, sa = (np.asarray(v, dtype=float) for v in (x, loss, step))
    steps = np.unique(sa)
    fits: list[LawFit | None] = []
    prev: LawFit | None = None
    for s in steps:
        sel = sa == s
        if np.unique(xa[sel]).size < form.n_params:
            fits.append(None)
            continue
        prev = fit_law(form, xa[sel], ya[sel], starts=[prev.params] if prev else (), options=options)
        fits.append(prev)
    return _stability_summary(steps, fits, last_k, rel_tol)


def _stability_summary(steps: np.ndarray, fits: list[LawFit | None], last_k: int, rel_tol: float) -> Stability:
    def col(name: str) -> np.ndarray:
        return np.array([math.nan if f is None else f.params.get(name, 0.0) for f in fits])

    alpha = col("alpha")
    tail = alpha[np.isfinite(alpha)][-last_k:]
    notes: tuple[str, ...] = ()
    if tail.size < 2:
        notes = (f"only {tail.size} step(s) could be fitted: stability unknown",)
        rng_, sd, rel, stable = math.nan, math.nan, math.nan, False
    else:
        rng_, sd = float(np.ptp(tail)), float(tail.std(ddof=1))
        rel = rng_ / abs(float(np.median(tail))) if np.median(tail) != 0 else math.inf
        stable = bool(rel <= rel_tol)
    return Stability(steps, alpha, col("E"), col("A"), tuple(fits), last_k, rng_, sd, rel, rel_tol,
                     stable, notes)


# ----------------------------------------------------------------------------- CSV and records


class CsvError(ValueError):
    """A CSV file that cannot be fitted, as one line naming the file and, where it applies, row and column."""


@dataclass(frozen=True)
class FitData:
    """Arrays ready for `fit_law`: `xs` (one array, or N and D), `loss`, optional `groups`.

    From a CSV file also, per point: `rows`, its spreadsheet row (the header is row 1); `split`,
    its values of the `split` columns (empty tuples without); `duplicate`, True where the row
    repeats an earlier row of the file cell for cell. `dropped` lists (row, split values) of the
    rows left out for having no loss.
    """

    xs: tuple[np.ndarray, ...]
    loss: np.ndarray
    groups: np.ndarray | None
    names: tuple[str, ...]
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    split: tuple[tuple[str, ...], ...] = ()
    duplicate: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    dropped: tuple[tuple[int, tuple[str, ...]], ...] = ()

    @property
    def form(self) -> Form:
        """The natural default law for these columns."""
        return Form.TWO_VAR if len(self.xs) == 2 else Form.OFFSET

    def take(self, index: np.ndarray) -> FitData:
        """The points at `index` (e.g. one curve); `dropped` stays the file's."""
        return FitData(tuple(v[index] for v in self.xs), self.loss[index],
                       None if self.groups is None else self.groups[index], self.names, self.rows[index],
                       tuple(self.split[i] for i in index), self.duplicate[index], self.dropped)


#: Separators tried, in this order, on the header (see `_pick_delimiter`).
CSV_DELIMITERS = (",", ";", "\t", "|")
#: What a dropped row's loss was, for messages.
NO_LOSS = "empty, NaN or inf"


def row_list(rows: Sequence[int], limit: int = 8) -> str:
    """Row numbers for a message: "3, 7, 9", or the first `limit` and how many in all."""
    shown = ", ".join(map(str, rows[:limit]))
    return shown if len(rows) <= limit else f"{shown}, ... ({len(rows)} in all)"


def _shown(text: str, limit: int = 40) -> str:
    """A cell or name as quoted in a message: repr (one line whatever it holds), cut to `limit`."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _decode(raw: bytes) -> str:
    """The text of a CSV file: UTF-16 when it starts with a UTF-16 byte-order mark (Excel's "Unicode
    text"), else UTF-8 without its byte-order mark, else Latin-1, which decodes any bytes, so a legacy
    export still reads (its labels may look odd; its numbers are ASCII either way)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode("utf-16").removeprefix("\ufeff")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _records(text: str, delimiter: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row, cells stripped of spaces) of every record with a non-empty cell."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for cells in reader:
            stripped = [c.strip() for c in cells]
            if any(stripped):
                yield reader.line_num, stripped
    except csv.Error as exc:
        raise CsvError(f"{path}: row {reader.line_num}: {exc}") from None


def _pick_delimiter(text: str, wanted: Sequence[str], path: Path) -> str:
    """The separator whose header names every wanted column; failing that, the one that splits the
    header into the most columns (ties: the order of CSV_DELIMITERS, so a comma wins)."""
    headers = {}
    for delimiter in CSV_DELIMITERS:
        with contextlib.suppress(CsvError):
            headers[delimiter] = next(_records(text, delimiter, path), (0, []))[1]
            if set(wanted) <= set(headers[delimiter]):
                return delimiter
    return max(CSV_DELIMITERS, key=lambda dl: len(headers.get(dl, [])))


@dataclass(frozen=True)
class _Table:
    """A CSV file's header and data records, every record checked against the header's width."""

    path: Path
    header: list[str]
    records: list[tuple[int, list[str]]]

    def cell(self, row: int, cells: list[str], name: str) -> str:
        i = self.header.index(name)
        if i >= len(cells):
            have = f"{len(cells)} cell" + ("s" if len(cells) != 1 else "")
            raise CsvError(f"{self.path}: row {row}, column {name!r}: missing (the row has {have}, "
                           f"the header {len(self.header)})")
        return cells[i]


def _read_table(path: Path, wanted: Sequence[str]) -> _Table:
    try:
        text = _decode(path.read_bytes())
    except OSError as exc:
        raise CsvError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    records = list(_records(text, _pick_delimiter(text, wanted, path), path))
    if not records:
        raise CsvError(f"{path}: empty file")
    (_, header), data = records[0], records[1:]
    for name in dict.fromkeys(wanted):
        if (count := header.count(name)) != 1:
            listed = ", ".join(_shown(h) for h in header[:12]) + (", ..." if len(header) > 12 else "")
            raise CsvError(f"{path}: no column {name!r}; columns are [{listed}]" if count == 0 else
                           f"{path}: column {name!r} appears {count} times in the header")
    for row, cells in data:
        if len(cells) > len(header) and any(cells[len(header):]):  # trailing empty cells are harmless
            raise CsvError(f"{path}: row {row}: {len(cells)} cells but the header has {len(header)} columns "
                           "(a separator inside an unquoted value?)")
    if not data:
        raise CsvError(f"{path}: no data rows (only a header)")
    return _Table(path, header, data)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CsvError(f"{where}: not a number: {_shown(text)}") from None


def _positive(table: _Table, row: int, cells: list[str], name: str) -> float:
    """An x, N, D or compute: a finite number > 0 (it is fitted in log space); anything else is refused."""
    where = f"{table.path}: row {row}, column {name!r}"
    text = table.cell(row, cells, name)
    if not text:
        raise CsvError(f"{where}: empty")
    value = _number(text, where)
    if not math.isfinite(value):
        raise CsvError(f"{where}: {text} is not a finite number")
    if value <= 0:
        raise CsvError(f"{where}: {text} is not > 0 (the law is fitted in log space)")
    return value


def _loss(table: _Table, row: int, cells: list[str], name: str) -> float | None:
    """A row's loss; None when it has none (empty, NaN or +inf: a run without a usable loss, like a
    diverged one). Text, and a loss <= 0 (log space), are refused."""
    where = f"{table.path}: row {row}, column {name!r}"
    text = table.cell(row, cells, name)
    value = _number(text, where) if text else math.nan
    if math.isnan(value) or value == math.inf:
        return None
    if value <= 0:
        raise CsvError(f"{where}: {text} is not > 0 (the law is fitted in log space)")
    return value


def _label(table: _Table, row: int, cells: list[str], name: str) -> str:
    text = table.cell(row, cells, name)
    if not text:
        raise CsvError(f"{table.path}: row {row}, column {name!r}: empty")
    return text


def _key(cells: list[str]) -> tuple[str, ...]:
    """A record as compared for exact duplicates (trailing empty cells do not count)."""
    end = len(cells)
    while end and not cells[end - 1]:
        end -= 1
    return tuple(cells[:end])


@dataclass
class _Parsed:
    """The rows of a CSV file that have a loss (numbers: the wanted columns, the loss last), and
    those that have none."""

    values: list[list[float]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    split: list[tuple[str, ...]] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    duplicate: list[bool] = field(default_factory=list)
    dropped: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)


def _parse_rows(table: _Table, numeric: Sequence[str], loss: str, group: str | None,
                split: Sequence[str]) -> _Parsed:
    out, seen = _Parsed(), set()
    for row, cells in table.records:
        key, curve = _key(cells), tuple(_label(table, row, cells, c) for c in split)
        y = _loss(table, row, cells, loss)
        if y is None:
            out.dropped.append((row, curve))
        else:
            out.values.append([_positive(table, row, cells, c) for c in numeric] + [y])
            out.units.append(_label(table, row, cells, group) if group is not None else "")
            out.rows.append(row)
            out.split.append(curve)
            out.duplicate.append(key in seen)
        seen.add(key)
    return out


def load_csv(path: str | Path, *, x: str | None = None, n: str | None = None, d: str | None = None,
             compute: str | None = None, loss: str = "loss", group: str | None = None,
             split: Sequence[str] = (), drop_highest: int = 0) -> FitData:
    """Read fit inputs from a CSV: either `x`, or `n` with `d` (or `compute`, giving D = C / (6N)).

    `group`: a column of labels (e.g. seed or run), the bootstrap's resampling unit. `split`: the
    columns whose values name a curve (one law per distinct combination). `drop_highest` removes
    that many highest-loss rows (the Chinchilla replication drops 5).

    Real-world files: UTF-8 with or without a byte-order mark, UTF-16 with one, else Latin-1; the
    separator is `,`, `;`, tab or `|`, whichever makes the header name the wanted columns; names
    and cells lose surrounding spaces; blank rows are skipped; rows are numbered as in a spreadsheet
    (the header is row 1). A row whose loss is empty, NaN or +inf is left out and listed in
    `dropped`. Everything else that cannot be fitted raises `CsvError` naming the file, row and
    column: a missing cell, more cells than the header, text where a number belongs, an empty or
    non-finite x (N, D, compute), any value <= 0 (the law is fitted in log space), an empty label.
    """
    if (x is None) == (n is None) or (n is not None and (d is None) == (compute is None)):
        raise ValueError("give either x=..., or n=... with exactly one of d=... / compute=...")
    p = Path(path)
    numeric = [c for c in (x, n, d, compute) if c is not None]
    labels = [*([group] if group is not None else []), *split]
    table = _read_table(p, [*numeric, loss, *labels])
    parsed = _parse_rows(table, numeric, loss, group, split)
    if not parsed.values:
        raise CsvError(f"{p}: no row has a loss in column {loss!r} "
                       f"(rows {row_list([r for r, _ in parsed.dropped])}: {NO_LOSS})")
    numbers = np.array(parsed.values)
    xs, names = _variables(numbers, x, n, d, compute)
    data = FitData(xs, numbers[:, -1], np.array(parsed.units) if group is not None else None, names,
                   np.array(parsed.rows, dtype=int), tuple(parsed.split), np.array(parsed.duplicate, dtype=bool),
                   tuple(parsed.dropped))
    return _without_highest(data, drop_highest, p)


def _variables(table: np.ndarray, x: str | None, n: str | None, d: str | None,
               compute: str | None) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """x; or N and D (D = C / (6N) from a compute column), with their names, from load_csv's columns."""
    if x is not None:
        return (table[:, 0],), (x,)
    dd = table[:, 1] if d is not None else table[:, 1] / (6.0 * table[:, 0])
    return (table[:, 0], dd), (n or "", d or f"{compute}/(6*{n})")


def _without_highest(data: FitData, drop_highest: int, path: Path) -> FitData:
    """`data` less its `drop_highest` highest losses (file order kept)."""
    if drop_highest < 0:
        raise ValueError(f"drop_highest must be >= 0, got {drop_highest}")
    if drop_highest >= data.loss.size:
        raise CsvError(f"{path}: drop_highest={drop_highest} would drop all {data.loss.size} rows with a loss")
    if drop_highest == 0:
        return data
    return data.take(np.sort(np.argsort(data.loss, kind="stable")[: data.loss.size - drop_highest]))


def to_fit_result(fit: LawFit, x: str, *, boot: BootstrapResult | None = None,
                  check: PredictiveCheck | None = None, warnings: Sequence[str] = ()) -> FitResult:
    """The storable/displayable record of a fit (scaletui.records.FitResult)."""
    return FitResult(
        form=fit.form.value, x=x, params=dict(fit.params),
        intervals=dict(boot.intervals) if boot is not None else {},
        n_points=fit.n_points, loss=fit.objective,
        heldout_rel_error=check.leave_one.max_rel_error if check and check.leave_one else None,
        heldout_rel_error_2=check.leave_two.max_rel_error if check and check.leave_two else None,
        warnings=tuple(warnings),
    )
