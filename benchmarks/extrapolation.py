"""How well do scaletui's fitted laws predict what they were not shown, against the published estimators?

Runs the fitting over the public data in `../shared/data/external/` (read through tests/refdata.py,
never copied) with each data set's published fit/extrapolate split, and prints per domain the median,
over curves, of the RMS log error (the benchmark's metric, rmse_log) and of the mean relative error
on the extrapolated points, for every form and for the auto-selected one, next to the authors' own
estimators (M2 and M4 of Alabdulmohsin et al. 2022, BNSL of Caballero et al. 2023, from
reference_errors.json); then the coverage of the 90% prediction band on the extrapolated points and
the run time.

Settings per domain are the authors' (their notebook): IC and BB are error rates bounded above by
1 (M4's E0 <= 1; auto then considers only forms that stay below the bound), NMT and LM have no
bound. "auto, no bound" shows the selection when the bound is not given.

    .venv/bin/python benchmarks/extrapolation.py [--delta 0.01] [--space auto] [--resamples 200]
        [--domains IC,NMT,LM,BB,BNSL] [--cores 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `paired`
import refdata
from paired import pin_cores

from scaletui.analysis.forms import FittedLaw, predict
from scaletui.analysis.select import SelectOptions, predict_with_band, select_form
from scaletui.analysis.solve import SPACES, FitOptions, LossSpec, default_alt_spaces, fit_law
from scaletui.services.fitting import AUTO

FORMS = ("M1", "M2", "M3", "M4", "BNSL1", "BNSL2")
DOMAINS = {"IC": "IC 5-shot", "NMT": "NMT", "LM": "LM", "BB": "BB", "BNSL": "4-digit addition"}
GOALS = {"IC": ("M4", 0.028), "NMT": ("M4", 0.018), "LM": ("M4", 0.0009), "BB": ("M4", 0.009),
         "BNSL": ("BNSL", 0.011)}  # the targets: the published figures, rounded
# On 4-digit addition BNSL1 on log residuals (0.0111) is the global optimum of that objective
# (tests/analysis/test_bnsl_addition.py); BNSL's published 0.0109 is the optimum of the squared error of
# log(1 + L) (Caballero et al.'s fitting script). `--space auto`, the product's default, tries the chosen
# form on log1p residuals too and keeps the space whose rolling-origin refits predict better: there log1p,
# 0.0109. Dropping any one of the 14 fitted points moves the log-residual error between 0.0108 and 0.0188.


@dataclass(frozen=True)
class Errors:
    rmse_log: float
    rel_err: float


def errors(law: FittedLaw | None, curve: refdata.Curve) -> Errors:
    """rmse_log and mean relative error of `law` on the curve's extrapolated points (NaN if no law)."""
    if law is None:
        return Errors(math.nan, math.nan)
    with np.errstate(all="ignore"):
        pred = predict(law, curve.x_test)
    rmse = float(np.sqrt(np.mean((np.log(pred) - np.log(curve.y_test)) ** 2)))
    return Errors(rmse, float(np.mean(np.abs(pred - curve.y_test) / curve.y_test)))


def fit_each_form(curve: refdata.Curve, fit: FitOptions) -> dict[str, Errors]:
    """Every form fitted on its own (M4 with the domain's bound), skipped forms as NaN."""
    out = {}
    for name in FORMS:
        try:
            out[name] = errors(fit_law(name, curve.x_fit, curve.y_fit, options=fit), curve)
        except ValueError:
            out[name] = Errors(math.nan, math.nan)
    return out


def coverage(law: FittedLaw, curve: refdata.Curve, options: SelectOptions, resamples: int,
             calibrated: bool = True) -> float:
    """Fraction of the extrapolated points inside the law's 90% prediction band."""
    band = predict_with_band(law, curve.x_test, curve.x_fit, curve.y_fit, n_resamples=resamples,
                             options=options, rng=0, calibrated=calibrated)
    return float(np.mean((curve.y_test >= band.lo) & (curve.y_test <= band.hi)))


@dataclass
class Tally:
    """Per domain: errors by row label, band coverage, selections, seconds."""

    errors: dict[str, list[Errors]]
    covered: list[float]
    picks: dict[str, int]
    seconds: float = 0.0
    covered_raw: list[float] = field(default_factory=list)


def run_curve(curve: refdata.Curve, fit: FitOptions, alt_spaces: tuple[str, ...], resamples: int,
              tally: Tally) -> None:
    bounded = replace(fit, upper_bound=curve.up_bound)
    t0 = time.perf_counter()
    selection = select_form(curve.x_fit, curve.y_fit, SelectOptions(fit=bounded, alt_spaces=alt_spaces))
    tally.seconds += time.perf_counter() - t0
    tally.errors["auto"].append(errors(selection.law, curve))
    law = selection.law
    pick = "none" if law is None else law.form + ("" if law.loss_space == fit.loss.space else f"/{law.loss_space}")
    tally.picks[pick] += 1
    if curve.up_bound is not None:
        free = select_form(curve.x_fit, curve.y_fit, SelectOptions(fit=fit, alt_spaces=alt_spaces))
        tally.errors["auto, no bound"].append(errors(free.law, curve))
    for name, err in fit_each_form(curve, bounded).items():
        tally.errors[name].append(err)
    if resamples and law is not None:  # the band refits the law on the residuals it was chosen with
        chosen = SelectOptions(fit=replace(bounded, loss=LossSpec(law.loss_space, law.delta)))
        tally.covered.append(coverage(law, curve, chosen, resamples))
        tally.covered_raw.append(coverage(law, curve, chosen, resamples, False))


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def reference(curves: Sequence[refdata.Curve], ref: dict[str, dict[str, refdata.RefError]]) -> dict[str, float]:
    names = ("M2", "M4", "BNSL")
    return {n: median([ref[c.key][n].rmse_log for c in curves if n in ref.get(c.key, {})]) for n in names}


def fmt(v: float, width: int = 8) -> str:
    return f"{'-':>{width}}" if not math.isfinite(v) else f"{v:{width}.4f}"


def print_domain(domain: str, curves: Sequence[refdata.Curve], tally: Tally,
                 ref: dict[str, dict[str, refdata.RefError]]) -> tuple[bool, Tally]:
    """The domain's table; returns whether the auto-selected form met the goal, and the tally."""
    authors = reference(curves, ref)
    print(f"\n{DOMAINS[domain]} ({len(curves)} curves)   authors' rmse_log: M2 {fmt(authors['M2'], 0)}  "
          f"M4 {fmt(authors['M4'], 0)}  BNSL {fmt(authors['BNSL'], 0)}")
    print(f"  {'form':16} {'rmse_log':>9} {'rel_err':>9}  (medians over curves; '-' = not applicable)")
    for label in list(FORMS) + ["auto", "auto, no bound"]:
        if label in tally.errors:
            errs = tally.errors[label]
            rmse, rel = median([e.rmse_log for e in errs]), median([e.rel_err for e in errs])
            print(f"  {label:16} {fmt(rmse, 9)} {fmt(rel, 9)}")
    picks = ", ".join(f"{k} x{v}" for k, v in sorted(tally.picks.items(), key=lambda kv: -kv[1]))
    target_name, target = GOALS[domain]
    got = median([e.rmse_log for e in tally.errors["auto"]])
    ok = got <= target
    cov = (f"{np.mean(tally.covered):.0%} of held-out points (bootstrap alone: {np.mean(tally.covered_raw):.0%})"
           if tally.covered else "not measured")
    print(f"  auto chose: {picks}")
    print(f"  goal: auto <= {target_name}'s {target:g}: {got:.4f} -> {'ok' if ok else 'MISSED'}")
    print(f"  90% band coverage: {cov};  selection time {tally.seconds / len(curves):.2f} s per curve")
    return ok, tally


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delta", type=float, default=LossSpec().delta, help="Huber delta (inf = least squares)")
    ap.add_argument("--space", default=AUTO, choices=(AUTO, *SPACES),
                    help="residuals: auto (the product's default: log, the chosen form also on log1p), or one forced")
    ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples per band (0: skip coverage)")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    missing = refdata.missing_reason()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    print(f"CPUs: {pin_cores(args.cores)};  loss: Huber delta {args.delta:g} on {args.space} residuals;  "
          f"band: {args.resamples} bootstrap resamples")
    t0 = time.perf_counter()
    space = LossSpec().space if args.space == AUTO else args.space
    alt_spaces = default_alt_spaces(1) if args.space == AUTO else ()
    results = run_domains(args.domains.split(","), FitOptions(loss=LossSpec(space, args.delta)), alt_spaces,
                          args.resamples)
    covered = [c for _, t in results for c in t.covered]
    raw = [c for _, t in results for c in t.covered_raw]
    if covered:
        print(f"\n90% band coverage over all {len(covered)} curves: {np.mean(covered):.0%} of the held-out points "
              f"(mean per curve; the bootstrap alone: {np.mean(raw):.0%})")
    met = sum(ok for ok, _ in results)
    print(f"total {time.perf_counter() - t0:.0f} s;  goals met in {met} of {len(results)} domains")
    return 0


def run_domains(wanted: Sequence[str], fit: FitOptions, alt_spaces: tuple[str, ...],
                resamples: int) -> list[tuple[bool, Tally]]:
    """Every curve of the wanted domains; the table of each domain; whether its goal was met."""
    curves = [c for c in [*refdata.revisiting_curves(), refdata.bnsl_addition()] if c.domain in wanted]
    ref = refdata.reference_errors()
    results = []
    for domain in [d for d in DOMAINS if d in wanted]:
        mine = [c for c in curves if c.domain == domain]
        tally = Tally(defaultdict(list), [], defaultdict(int))
        for curve in mine:
            run_curve(curve, fit, alt_spaces, resamples, tally)
        results.append(print_domain(domain, mine, tally, ref))
    return results


if __name__ == "__main__":
    sys.exit(main())
