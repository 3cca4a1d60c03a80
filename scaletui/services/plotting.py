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
from typing import TYPE_CHECKING, Any

import numpy as np

from scaletui.analysis.forms import law_values, predict
from scaletui.analysis.frontier import frontier_loss as frontier_loss_at
from scaletui.analysis.frontier import n_opt, policy_bands
from scaletui.services.fit_report import FitReport

if TYPE_CHECKING:
    from scaletui.services.frontier import FrontierReport

__all__ = ["frontier_key", "frontier_text", "law_text", "plot_frontier", "write_frontier_png", "write_png"]


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


# ----------------------------------------------------------------------------- the compute-optimal frontier

FRONTIER_POINTS = 80


def _compute_grid(report: FrontierReport) -> np.ndarray:
    """Compute budgets spanning the runs and the asked budgets, for the frontier's curve."""
    values = [p.placement.compute for p in report.points] + [b.compute for b in report.budgets]
    return np.geomspace(min(values) / 1.5, max(values) * 1.5, FRONTIER_POINTS)


def _frontier_band(report: FrontierReport, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                       np.ndarray] | None:
    """(loss lo, loss hi, N_opt lo, N_opt hi) over `grid` from the bootstrap draws; None without them."""
    boot = report.boot
    if boot is None or boot.n_done == 0:
        return None
    bands = policy_bands(boot.names, boot.samples, grid, k=report.k, level=report.level)
    return bands.loss[0], bands.loss[1], bands.n_opt[0], bands.n_opt[1]


def _size_lines(ax: Any, report: FrontierReport, colors: Any, sizes: list[float]) -> None:
    """The law along each trained model size: L(N, D) against C = k N D over the D range the sweep trained."""
    ds = [p.placement.d for p in report.points]
    d = np.geomspace(min(ds), max(ds), 60)
    for size, color in zip(sizes, colors, strict=True):
        ax.plot(report.k * size * d, law_values("CHINCHILLA", report.law.params, np.full_like(d, size), d), "-",
                color=color, lw=0.8, alpha=0.5)


def _loss_panel(ax: Any, report: FrontierReport, grid: np.ndarray, band: Any, cmap: Any) -> None:
    sizes = sorted({p.placement.n for p in report.points})
    colors = cmap(np.linspace(0.0, 0.9, len(sizes)))
    _size_lines(ax, report, colors, sizes)
    for p in report.points:
        q = p.placement
        ax.errorbar([q.compute], [q.loss], yerr=[[q.loss - p.loss_range[0]], [p.loss_range[1] - q.loss]], fmt="o",
                    color=colors[sizes.index(q.n)], ms=4, capsize=2)
    ax.plot(grid, frontier_loss_at(report.law.params, grid, report.k), "k-", lw=1.8, label="frontier L(N_opt, D_opt)")
    if band is not None:
        ax.fill_between(grid, band[0], band[1], color="k", alpha=0.12, lw=0, label=f"{report.level:.0%} interval")
    best = report.points[report.closest].placement
    ax.plot([best.compute], [best.loss], "*", color="crimson", ms=14, mec="k",
            label=f"closest run: N={best.n:.3g}, D={best.d:.3g} ({best.ratio:.3f}x the frontier)")
    for n_text, color in ((f"N={s:.3g}", c) for s, c in zip(sizes, colors, strict=True)):
        ax.plot([], [], "o-", color=color, ms=4, lw=0.8, label=n_text)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(report.loss_label)
    ax.legend(fontsize=6, frameon=False)


def _size_panel(ax: Any, report: FrontierReport, grid: np.ndarray, band: Any) -> None:
    ax.plot(grid, n_opt(report.law.params, grid, report.k), "k-", lw=1.8,
            label=f"N_opt(C) = G (C/{report.k:.3g})^{report.a:.3f}")
    if band is not None:
        ax.fill_between(grid, band[2], band[3], color="k", alpha=0.12, lw=0, label=f"{report.level:.0%} interval")
    points = [p.placement for p in report.points]
    ratios = np.array([q.ratio for q in points])
    dots = ax.scatter([q.compute for q in points], [q.n for q in points], c=ratios, cmap="magma_r", s=22,
                      edgecolors="k", linewidths=0.3, label="trained runs (colour: loss / frontier loss)")
    ax.figure.colorbar(dots, ax=ax, label="loss / frontier loss")
    for b in report.budgets:
        ax.errorbar([b.compute], [b.n_opt], yerr=[[b.n_opt - b.n_interval[0]], [b.n_interval[1] - b.n_opt]]
                    if np.isfinite(b.n_interval[0]) else None, fmt="x", color="crimson", ms=7, capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("model size N (params)")
    ax.legend(fontsize=6, frameon=False)


def write_frontier_png(report: FrontierReport, path: str | Path, *, dpi: int = 200) -> Path:
    """Two panels: loss against compute (each trained point, the law along each model size, the frontier and
    its band, the closest run starred), and N_opt(C) with its band beside each run's N (budgets as crosses)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    grid = _compute_grid(report)
    band = _frontier_band(report, grid)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    try:
        _loss_panel(left, report, grid, band, plt.get_cmap("viridis"))
        _size_panel(right, report, grid, band)
        fig.suptitle(f"{report.experiment}: compute-optimal frontier of L(N, D) = E + A/N^alpha + B/D^beta; "
                     f"loss = {report.loss_label}; C = {report.k:.3g} N D", fontsize=9)
        out = Path(path)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def _log_ticks(lo: float, hi: float, n: int) -> tuple[list[float], list[str]]:
    ticks = np.linspace(lo, hi, n) if hi > lo else np.array([lo])
    return ticks.tolist(), [f"{10 ** t:.3g}" for t in ticks]


def plot_frontier(plt: Any, report: FrontierReport, y_ticks: int = 4) -> None:
    """Draw loss against compute on a plotext figure (the `plotext` module, or a textual-plotext widget's `plt`):
    the frontier L(N_opt(C), D_opt(C)) as a line, each trained (N, D) as its model size's digit (1 = smallest),
    the closest run as X. Log10 axes drawn by hand (plotext's own log axes fail below 1, where losses live),
    ticks labelled in the original units. No legend (plotext's would cover the smallest runs, top left): show
    `frontier_key` beside the plot."""
    grid = _compute_grid(report)
    best = frontier_loss_at(report.law.params, grid, report.k)
    sizes = sorted({p.placement.n for p in report.points})
    plt.plot(np.log10(grid).tolist(), np.log10(best).tolist(), marker="braille")
    for i, size in enumerate(sizes):
        pts = [p.placement for p in report.points if p.placement.n == size]
        plt.scatter([float(np.log10(q.compute)) for q in pts], [float(np.log10(q.loss)) for q in pts],
                    marker=_size_marker(i))
    top = report.points[report.closest].placement
    plt.scatter([float(np.log10(top.compute))], [float(np.log10(top.loss))], marker="X", color="red")
    ys = np.log10([p.placement.loss for p in report.points] + best.tolist())
    plt.xticks(*_log_ticks(float(np.log10(grid[0])), float(np.log10(grid[-1])), 5))
    plt.yticks(*_log_ticks(float(ys.min()), float(ys.max()), y_ticks))
    plt.xlabel("training compute C (FLOPs, log)")
    plt.ylabel(f"{report.loss_label} (log)")


def frontier_key(report: FrontierReport) -> str:
    """One line that says what `plot_frontier`'s line, digits and X are."""
    sizes = sorted({p.placement.n for p in report.points})
    key = ", ".join(f"{_size_marker(i)} N={size:.3g}" for i, size in enumerate(sizes))
    return f"line: the frontier; points: {key}; X: the closest run"


def frontier_text(report: FrontierReport, width: int = 78, height: int = 20) -> str:
    """`plot_frontier` for a terminal that prints it (the CLI): no colours, the key on the line below."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    plot_frontier(plt, report)
    return f"{plt.uncolorize(plt.build())}\n{frontier_key(report)}"


def _size_marker(i: int) -> str:
    return str(i + 1) if i < 9 else "o"
