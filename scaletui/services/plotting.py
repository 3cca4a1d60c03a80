"""Publication-ready PNGs of fitted scaling laws (matplotlib, Agg backend).

matplotlib is imported inside `write_png` only: `scaletui fit` without `--png` (and the app)
never pays for it, and the Agg backend is forced so a headless server or an SSH session
without a display can write the file.

What a figure shows, per curve: the mean loss at each x with the seed spread (min..max) as
error bars, the chosen law (its form and numbers in the legend), its calibrated prediction band,
the held-out sizes marked with the value the law predicted for them when fitted without them (open
marker) next to what was measured (filled), and the predictions asked for (crosses with their
band). The two-variable law gets a parity plot (fitted vs measured loss, linear axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.forms import predict
from scaletui.services.fit_report import FitReport

__all__ = ["law_text", "write_png"]


def law_text(report: FitReport) -> str:
    """The fitted law as a formula with numbers, e.g. `L = 0.31 + 38.6 x^-0.496` (x: the report's x name)."""
    p, x = report.law.params, report.x_name
    writers = {
        "M1": lambda: f"L = {p['A']:.3g} {x}^-{p['alpha']:.3f}",
        "M2": lambda: f"L = {p['E']:.3g} + {p['A']:.3g} {x}^-{p['alpha']:.3f}",
        "M3": lambda: f"L = {p['E']:.3g} (1 + {p['x_c']:.3g}/{x})^{p['alpha']:.3f}",
        "M4": lambda: (f"(L - {p['E']:.3g}) / ({p['E0']:.3g} - L)^{p['gamma']:.3g} = "
                       f"{p['A']:.3g} {x}^-{p['alpha']:.3f}"),
        "CHINCHILLA": lambda: f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}",
    }
    if report.law.form in writers:
        return writers[report.law.form]()
    return _bnsl_text(p, x)


def _bnsl_text(p: dict[str, float], x: str) -> str:
    breaks = "".join(f" (1 + ({x}/{p[f'd{i}']:.3g})^(1/{p[f'f{i}']:.3g}))^-({p[f'c{i}']:.3g}*{p[f'f{i}']:.3g})"
                     for i in (1, 2) if f"c{i}" in p)
    return f"L = {p['E']:.3g} + {p['A']:.3g} {x}^-{p['alpha']:.3f}{breaks}"


def _curve(ax: Any, report: FitReport, color: Any) -> None:
    pts = report.points
    x = np.array([q.x for q in pts])
    mean = np.array([q.mean for q in pts])
    err = np.array([[q.mean - q.lo for q in pts], [q.hi - q.mean for q in pts]])
    name = report.group or report.source
    ax.errorbar(x, mean, yerr=err, fmt="o", color=color, ms=5, capsize=3, label=f"{name} (mean, seed range)")
    top = max([x.max(), *(p.at[0] for p in report.predictions)])
    grid = np.geomspace(x.min(), top, 200)
    ax.plot(grid, predict(report.law, grid), "-", color=color, lw=1.5,
            label=f"{name}: {report.law.form}, {law_text(report)}")
    band = report.band
    if band is not None and np.all(np.isfinite(band.lo)):
        order = np.argsort(band.x[0])
        ax.fill_between(band.x[0][order], band.lo[order], band.hi[order], color=color, alpha=0.18, lw=0,
                        label=f"{band.level:.0%} prediction band")
    _heldout(ax, report, color)
    for p in report.predictions:
        ax.errorbar([p.at[0]], [p.value], yerr=[[p.value - p.lo], [p.hi - p.value]] if np.isfinite(p.lo) else None,
                    fmt="x", color=color, ms=8, capsize=4, label=f"predicted at {p.at[0]:.3g}: {p.value:.4g}")


def _heldout(ax: Any, report: FitReport, color: Any) -> None:
    held = report.heldout.leave_one
    if held is not None:
        ax.plot(held.x_out, held.predicted, "D", mfc="none", mec=color, ms=9, mew=1.5,
                label=f"held out: predicted ({held.max_rel_error:.1%} off)")
        ax.plot(held.x_out, held.actual, "D", color=color, ms=6, label="held out: actual")


def _parity(ax: Any, report: FitReport) -> None:
    fitted = predict(report.law, *report.xs)
    ax.scatter(report.loss, fitted, s=12, alpha=0.7, label=law_text(report))
    lo, hi = float(min(report.loss.min(), fitted.min())), float(max(report.loss.max(), fitted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="fitted = measured")
    ax.set_xlabel("measured loss")
    ax.set_ylabel("fitted loss")


def write_png(reports: Sequence[FitReport], path: str | Path, *, title: str | None = None, dpi: int = 200) -> Path:
    """Write one log-log figure with every report's curve; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    try:
        if reports and len(reports[0].xs) == 2:
            _parity(ax, reports[0])
        else:
            colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(reports), 1)))
            for report, color in zip(reports, colors, strict=False):
                _curve(ax, report, color)
            ax.set_xlabel(reports[0].x_name if reports else "x")
            ax.set_ylabel(reports[0].loss_label or "loss" if reports else "loss")
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, frameon=False)
        ax.set_title(title or _default_title(reports), fontsize=10)
        out = Path(path)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def _default_title(reports: Sequence[FitReport]) -> str:
    if not reports:
        return ""
    r = reports[0]
    return f"{r.source}: loss = {r.loss_label}" if r.loss_label else r.source
