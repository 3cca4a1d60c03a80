"""The compute-optimal frontier in sentences: the law, the policy's exponents, the run closest to optimal.

`scaletui fit --frontier` prints these lines and the app's fit pane shows them in its frontier view's notes, so
both say the same thing in the same words. Plain strings only (no rich markup, no textual).
"""

from __future__ import annotations

import math

from scaletui.services.frontier import BudgetRow, FrontierReport, PointRow
from scaletui.services.strategies import interval_text

__all__ = ["budget_note", "closest_lines", "law_line", "point_text", "policy_line"]


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def law_line(r: FrontierReport) -> str:
    """The fitted L(N, D) with numbers, and how well it describes the runs."""
    p = r.law.params
    return (f"L = {_num(p['E'])} + {_num(p['A'])}/N^{p['alpha']:.3f} + {_num(p['B'])}/D^{p['beta']:.3f} "
            f"(rms log error {r.rms_log_error:.3g})")


def policy_line(r: FrontierReport) -> str:
    """The exponents of N_opt(C) and D_opt(C) with their intervals."""
    return (f"N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b (Hoffmann et al. 2022, Approach 3): a = {r.a:.3f} "
            f"{interval_text(*r.a_interval)}, b = {r.b:.3f} {interval_text(*r.b_interval)}")


def budget_note(b: BudgetRow) -> str:
    """How far the law is trusted at one budget: far beyond the data, extrapolated in N or D, or nothing."""
    if b.far:
        return "FAR BEYOND THE DATA"
    return f"{' and '.join(b.outside)} extrapolated" if b.outside else ""


def point_text(p: PointRow) -> str:
    """One trained (N, D) point against the frontier at its own compute."""
    q = p.placement
    shape = f"width {p.width}, " if p.width is not None else ""
    side = "bigger" if q.log10_n_ratio > 0 else "smaller"
    return (f"N={q.n:.4g}, D={q.d:.4g} ({shape}{p.steps} steps; runs {', '.join(map(str, p.run_ids))}): loss "
            f"{q.loss:.4g} at C={q.compute:.3g}, {q.ratio:.3f}x the frontier's {q.frontier_loss:.4g} there; N is "
            f"{10 ** abs(q.log10_n_ratio):.3g}x {side} than N_opt(C)")


def closest_lines(r: FrontierReport) -> list[str]:
    """The run closest to optimal by loss, and (when another) the one closest to N_opt(C) in log N."""
    lines = [f"closest to optimal (loss / frontier loss at its compute): {point_text(r.points[r.closest])}"]
    if r.closest_by_size != r.closest:
        lines.append(f"closest to N_opt(C) in log N: {point_text(r.points[r.closest_by_size])}")
    return lines
