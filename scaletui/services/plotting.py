"""Publication-ready PNGs of fitted scaling laws (matplotlib, Agg backend).

matplotlib is imported inside `write_png` only: `scaletui fit` without `--png` (and the app)
never pays for it, and the Agg backend is forced so a headless server or an SSH session
without a display can write the file.

What a figure shows, per curve: the mean loss at each x with the seed spread (min..max) as
error bars, the fitted law, its bootstrap prediction band, and the held-out sizes marked with
the value the law predicted for them when fitted without them (open marker) next to what was
measured (filled). The two-variable law gets a parity plot (fitted vs measured loss, linear axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaletui.analysis.powerlaw import predict
from scaletui.fitting import FitReport

__all__ = ["write_png", "law_text"]


def law_text(report: FitReport) -> str:
    """The fitted law as a formula with numbers, e.g. `L = 0.31 + 38.6 x^-0.496`."""
    p = report.fit.params
    if report.form.n_vars == 2:
        return f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}"
    offset = f"{p['E']:.3g} + " if "E" in p else ""
    return f"L = {offset}{p['A']:.3g} {report.x_name}^-{p['alpha']:.3f}"


def _curve(ax: Any, report: FitReport, color: Any) -> None:
    pts = report.points
    x = np.array([q.x for q in pts])
    mean = np.array([q.mean for q in pts])
    err = np.array([[q.mean - q.lo for q in pts], [q.hi - q.mean for q in pts]])
    name = report.group or report.source
    ax.errorbar(x, mean, yerr=err, fmt="o", color=color, ms=5, capsize=3, label=f"{name} (mean, seed range)")
    grid = np.geomspace(x.min(), x.max(), 200)
    ax.plot(grid, predict(report.fit, grid), "-", color=color, lw=1.5, label=f"{name}: {law_text(report)}")
    if report.boot is not None and np.all(np.isfinite(report.boot.band_lo)):
        bx = report.boot.band_x[0]
        ax.fill_between(bx, report.boot.band_lo, report.boot.band_hi, color=color, alpha=0.18, lw=0,
                        label=f"{report.boot.level:.0%} prediction band")
    held = report.check.leave_one
    if held is not None:
        ax.plot(held.x_out, held.predicted, "D", mfc="none", mec=color, ms=9, mew=1.5,
                label=f"held out: predicted ({held.rel_error[0]:.1%} off)")
        ax.plot(held.x_out, held.actual, "D", color=color, ms=6, label="held out: actual")


def _parity(ax: Any, report: FitReport) -> None:
    fitted = predict(report.fit, *report.xs)
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
        if reports and reports[0].form.n_vars == 2:
            _parity(ax, reports[0])
        else:
            colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(reports), 1)))
            for report, color in zip(reports, colors):
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
