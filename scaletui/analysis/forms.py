"""The functional forms a scaling law can take, what their parameters mean, and where they come from.

A form is a documented formula with named parameters; a fitted law (`FittedLaw`) is a form plus
parameter values plus how they were fitted. `FittedLaw` (defined in
`scaletui.core.records`, re-exported here) is the one fit record: analysis returns it, storage
stores it and display shows it, so it holds only plain data and `predict(law, *xs)` evaluates it.
Fitting lives in `solve`, choosing between forms in `select`.

Forms (x is the scaling variable: parameters, data, compute; L the loss or error, lower is better):

* **M1** pure power law, `L = A x^-alpha`. The classic form (Kaplan et al. 2020); no floor, so it
  keeps falling forever. Alabdulmohsin, Neyshabur, Zhai 2022 ("Revisiting Neural Scaling Laws in
  Language and Vision", arXiv:2209.06640) call it M1.
* **M2** offset power law, `L = E + A x^-alpha`: an irreducible loss E that the law approaches
  (Hestness et al. 2017; the paper's M2). scaletui's law until now.
* **M3** `L = E (1 + x_c/x)^alpha`, the paper's M3 written `beta (1/x + gamma)^c` with
  `E = beta gamma^c`, `x_c = 1/gamma`, `alpha = c`: a power law `E x_c^alpha x^-alpha` for x << x_c that
  bends to the floor E for x >> x_c.
* **M4** `(L - E) / (E0 - L)^gamma = A x^-alpha`, the paper's M4 (their err_inf, err_0, beta, c, alpha
  are E, E0, A, -alpha, gamma here): the loss falls from E0 (random guessing) at x -> 0 to E at
  x -> infinity along a sigmoid in log x. gamma = 0 is M2; gamma > 0 lets a metric bounded above (an
  error rate) start flat near its bound. L has no closed form: `m4_excess` solves for it.
* **BNSL1**, **BNSL2** broken neural scaling law with one or two breaks, Caballero, Gupta, Rish,
  Krueger 2023 ("Broken Neural Scaling Laws", arXiv:2210.14891):
  `L = E + A x^-alpha prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i)` (their a, b, c0 are E, A, alpha):
  the log-log slope is alpha before the first break and grows by c_i at break i (located at x = d_i,
  sharpness f_i: smaller is sharper). It fits curves whose slope changes, e.g. a sudden drop.
* **CHINCHILLA** `L(N, D) = E + A/N^alpha + B/D^beta`, two variables (model size N, training tokens D):
  Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Approach 3), refitted by
  Besiroglu, Erdil, Barnett, You 2024 ("Chinchilla Scaling: A replication attempt", arXiv:2404.10102).

Only numpy (and scaletui.core): this module runs in the app's process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from scaletui.core.records import FittedLaw  # the one fit record; re-exported here

__all__ = [
    "FORMS",
    "ONE_VARIABLE_FORMS",
    "FittedLaw",
    "LawForm",
    "Param",
    "form",
    "law_values",
    "m4_excess",
    "predict",
]

FloatArray = np.ndarray
Params = Mapping[str, "float | FloatArray"]  # arrays evaluate many parameter sets at once (a bootstrap)
Law = Callable[[Params, tuple[FloatArray, ...]], FloatArray]

INF = float("inf")


@dataclass(frozen=True)
class Param:
    """One parameter of a form: its name, what it means, and the range a fit may give it.

    The range is the form's own (an exponent is not negative); a fit narrows it with the data
    (a floor lies below the smallest loss) - see `solve`.
    """

    name: str
    meaning: str
    lower: float = -INF
    upper: float = INF


@dataclass(frozen=True)
class LawForm:
    """A functional form: formula, parameters, number of variables, source, and its evaluator."""

    name: str
    title: str
    formula: str
    params: tuple[Param, ...]
    source: str
    law: Law = field(repr=False, compare=False)
    n_vars: int = 1
    has_floor: bool = True  # has an irreducible loss E (the fit can work on log(L - E))
    finite_at_zero: bool = False  # L stays finite as x -> 0, so it can respect a metric's upper bound

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def n_params(self) -> int:
        return len(self.params)


# ----------------------------------------------------------------------------- evaluators


def _m1(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
    return p["A"] * xs[0] ** -p["alpha"]


def _m2(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
    return p["E"] + p["A"] * xs[0] ** -p["alpha"]


def _m3(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
    return p["E"] * np.exp(p["alpha"] * np.log1p(p["x_c"] / xs[0]))


def _softplus(z: FloatArray) -> FloatArray:
    """log(1 + e^z) without overflow."""
    return np.logaddexp(0.0, z)


def _m4_step(v: FloatArray, g: FloatArray, c: FloatArray) -> tuple[FloatArray, FloatArray]:
    """phi(v) - c and Halley's step for it (`m4_excess`), from one exponential: with a = e^-|v|,
    softplus(-v) = max(-v, 0) + log1p(a), s(v) = 1/(1 + a) (v >= 0) or a/(1 + a) (v < 0),
    phi' = 1 - s + gamma s, phi'' = (gamma - 1) s (1 - s); Halley converges cubically, so a few
    steps reach machine precision from the usual starting point."""
    a = np.exp(-np.abs(v))
    s = np.where(v >= 0, 1.0, a) / (1.0 + a)
    phi = g * v + (g - 1.0) * (np.maximum(-v, 0.0) + np.log1p(a)) - c
    d1 = np.maximum((1.0 - s) + g * s, 1e-300)
    d2 = (g - 1.0) * s * (1.0 - s)
    return phi, phi / (d1 - 0.5 * phi * d2 / d1)


def _m4_root(g: FloatArray, c: FloatArray, iterations: int) -> FloatArray:
    """The root v of phi(v) = c (see `m4_excess`) for flat arrays; only unsettled entries are
    iterated (most settle in 3-4 steps, a few need the bisection fallback). gamma = 0 with c >= 0
    has no root (the M2 limit, which `m4_excess` answers without v): those entries are not iterated
    (they used to run all `iterations` steps, in every call where one occurred)."""
    ge = np.maximum(g, 1e-12)
    lo = np.minimum(c, c / ge) - np.maximum(g - 1.0, 0.0) * np.log(2.0) - 1.0
    hi = np.maximum(c, (c + 1.0) / ge) + 1.0
    v = np.clip(np.where(c < 0, c, c / ge), lo, hi)
    todo = np.flatnonzero((g > 0) | (c < 0))
    for _ in range(iterations):
        vt, gt, ct, lt, ht = v[todo], g[todo], c[todo], lo[todo], hi[todo]
        phi, step = _m4_step(vt, gt, ct)
        below = phi < 0
        lt, ht = np.where(below, vt, lt), np.where(below, ht, vt)
        trial = vt - step
        inside = (trial >= lt) & (trial <= ht)
        v_next = np.where(inside, trial, 0.5 * (lt + ht))
        # Halley converges cubically: after a step of size d the error is ~d^3
        settled = inside & (np.abs(step) <= 1e-6 * (1.0 + np.abs(vt)))
        v[todo], lo[todo], hi[todo] = v_next, lt, ht
        todo = todo[~settled]
        if todo.size == 0:
            break
    return v


def m4_excess(t: ArrayLike, gamma: ArrayLike, b: ArrayLike,
              iterations: int = 60) -> tuple[FloatArray, FloatArray]:
    """Solve M4 for the loss above its floor: w / (b - w)^gamma = e^t with 0 < w < b.

    t = log(A x^-alpha), b = E0 - E. With w = b s(v), s the logistic function, the equation reads
    phi(v) = log s(v) - gamma log(1 - s(v)) = c,  c = t - (1 - gamma) log b,
    and phi'(v) = s(-v) + gamma s(v) > 0, so the root is unique. Since
    phi(v) = v + (gamma - 1) softplus(v) = gamma v + (gamma - 1) softplus(-v), the root lies in
    [min(c, c/gamma) - max(gamma - 1, 0) log 2 - 1,  max(c, (c + 1)/gamma) + 1]; a safeguarded iteration
    (Halley's method, bisection whenever a step leaves the bracket) finds it to machine precision.
    Returns (v, log w), with log w = log b - softplus(-v) (full precision as w -> b).
    gamma = 0 is M2, w = e^t: the root when e^t < b; beyond it w = e^t exceeds b (the M2 limit).
    Arguments broadcast together.
    """
    t_, g, lb = np.broadcast_arrays(np.asarray(t, float), np.asarray(gamma, float),
                                    np.log(np.asarray(b, float)))
    c = t_ - (1.0 - g) * lb
    v = _m4_root(g.ravel(), c.ravel(), iterations).reshape(c.shape)
    log_w = np.where((g > 0) | (c < 0), lb - _softplus(-v), t_)  # gamma = 0, c < 0: the same root
    return v, log_w


def _m4(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
    t = np.log(p["A"]) - p["alpha"] * np.log(xs[0])
    _, log_w = m4_excess(t, p["gamma"], p["E0"] - p["E"])
    return p["E"] + np.exp(log_w)


def _bnsl_log_excess(p: Params, logx: FloatArray, breaks: int) -> FloatArray:
    """log(L - E) of a broken power law, summing log-terms so steep breaks do not overflow."""
    out = np.log(p["A"]) - p["alpha"] * logx
    for i in range(1, breaks + 1):
        c, d, f = p[f"c{i}"], p[f"d{i}"], p[f"f{i}"]
        out = out - c * f * _softplus((logx - np.log(d)) / f)
    return out


def _bnsl(breaks: int) -> Law:
    def law(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
        return p["E"] + np.exp(_bnsl_log_excess(p, np.log(xs[0]), breaks))
    return law


def _chinchilla(p: Params, xs: tuple[FloatArray, ...]) -> FloatArray:
    return p["E"] + p["A"] * xs[0] ** -p["alpha"] + p["B"] * xs[1] ** -p["beta"]


# ----------------------------------------------------------------------------- the registry

_E = Param("E", "irreducible loss: the limit as x -> infinity", 0.0)
_A = Param("A", "coefficient of the power term (loss above E at x = 1)", 0.0)
_ALPHA = Param("alpha", "scaling exponent: slope of log(L - E) against log x", 0.0)
_PAPER = "Alabdulmohsin, Neyshabur, Zhai 2022, arXiv:2209.06640"
_BNSL_SOURCE = "Caballero, Gupta, Rish, Krueger 2023, arXiv:2210.14891"


def _break_params(breaks: int) -> tuple[Param, ...]:
    out: list[Param] = []
    for i in range(1, breaks + 1):
        out += [Param(f"c{i}", f"change of the log-log slope at break {i}", 0.0),
                Param(f"d{i}", f"x at which break {i} happens", 0.0),
                Param(f"f{i}", f"sharpness of break {i} (smaller is sharper)", 0.0)]
    return tuple(out)


def _bnsl_form(breaks: int) -> LawForm:
    formula = "L = E + A x^-alpha " + " ".join(
        f"(1 + (x/d{i})^(1/f{i}))^(-c{i} f{i})" for i in range(1, breaks + 1))
    return LawForm(f"BNSL{breaks}", f"broken power law, {breaks} break{'s' * (breaks > 1)}", formula,
                   (_E, _A, Param("alpha", "log-log slope before the first break", 0.0)) + _break_params(breaks),
                   _BNSL_SOURCE, _bnsl(breaks))


FORMS: dict[str, LawForm] = {f.name: f for f in (
    LawForm("M1", "pure power law", "L = A x^-alpha", (_A, _ALPHA),
            f"Kaplan et al. 2020; M1 of {_PAPER}", _m1, has_floor=False),
    LawForm("M2", "offset power law", "L = E + A x^-alpha", (_E, _A, _ALPHA),
            f"Hestness et al. 2017; M2 of {_PAPER}", _m2),
    LawForm("M3", "power law bending to a floor", "L = E (1 + x_c/x)^alpha",
            (Param("E", "the limit as x -> infinity", 0.0),
             Param("x_c", "x where the power law bends to the floor", 0.0), _ALPHA),
            f"M3 of {_PAPER} (beta (1/x + gamma)^c with E = beta gamma^c, x_c = 1/gamma)", _m3,
            has_floor=False),
    LawForm("M4", "sigmoid in log x between two plateaus", "(L - E) / (E0 - L)^gamma = A x^-alpha",
            (_E, Param("E0", "the loss as x -> 0 (random guessing)", 0.0), _A, _ALPHA,
             Param("gamma", "how long the loss stays near E0 before the power law (0 = M2)", 0.0)),
            f"M4 of {_PAPER} (their err_inf, err_0, beta, c, alpha = E, E0, A, -alpha, gamma)", _m4,
            finite_at_zero=True),
    _bnsl_form(1),
    _bnsl_form(2),
    LawForm("CHINCHILLA", "two-variable law of model size N and data D", "L = E + A/N^alpha + B/D^beta",
            (_E, Param("A", "coefficient of the model-size term", 0.0),
             Param("alpha", "model-size exponent", 0.0),
             Param("B", "coefficient of the data term", 0.0), Param("beta", "data exponent", 0.0)),
            "Hoffmann et al. 2022 (Approach 3); Besiroglu et al. 2024, arXiv:2404.10102", _chinchilla,
            n_vars=2),
)}
ONE_VARIABLE_FORMS: tuple[str, ...] = tuple(name for name, f in FORMS.items() if f.n_vars == 1)


def form(name: str) -> LawForm:
    """The form called `name` (case-insensitive); ValueError naming the known forms otherwise."""
    found = FORMS.get(name.upper())
    if found is None:
        raise ValueError(f"unknown form {name!r}; known forms: {', '.join(FORMS)}")
    return found


def law_values(form_name: str, params: Params, *xs: ArrayLike) -> FloatArray:
    """Evaluate form `form_name` with natural `params` at x (or at N, D for two-variable forms).

    Parameters may be arrays that broadcast against x (shape (S, 1) against x of shape (1, n)
    evaluates S laws at n points)."""
    f = form(form_name)
    feats = tuple(np.asarray(x, dtype=float) for x in xs)
    if len(feats) != f.n_vars:
        raise ValueError(f"{f.name} takes {f.n_vars} variable(s), got {len(feats)}")
    missing = set(f.param_names) - set(params)
    if missing:
        raise ValueError(f"{f.name} needs parameters {sorted(missing)}")
    return np.asarray(f.law(params, feats), dtype=float)


def predict(law: FittedLaw, *xs: ArrayLike) -> FloatArray:
    """The fitted law at x (one-variable forms) or at (N, D) (CHINCHILLA)."""
    return law_values(law.form, law.params, *xs)
