"""`s`: the configurator's proposal for the selected run's next width, in a text screen.

The proposal reads the database and fits learning-rate trends (numpy, scipy), so it is computed in a
thread worker, and `scaletui.services.suggest` is imported only then, not for the app's first frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App

from scaletui.core.rows import RunSummary
from scaletui.tui.screens.modals import TextScreen


def next_size(run: RunSummary, runs: Iterable[RunSummary]) -> tuple[int, int] | None:
    """(width, depth) to propose for: the next wider width of the run's experiment, else twice its width;
    None for a run without a width and depth (an own-loop run that did not log them)."""
    if run.width is None or run.depth is None:
        return None
    widths = sorted({r.width for r in runs if r.experiment == run.experiment and r.width is not None})
    wider = [w for w in widths if w > run.width]
    return (wider[0] if wider else 2 * run.width, run.depth)


def show_proposal(app: App[Any], db_path: Path, run: RunSummary, runs: Iterable[RunSummary]) -> None:
    """Compute the proposal in a thread worker; it opens a TextScreen when done."""
    size = next_size(run, runs)
    if size is None:
        app.notify("this run has no width and depth to propose a next size for", severity="warning")
        return
    width, depth = size
    work = partial(_propose, app, db_path, run.experiment, width, depth)
    app.run_worker(work, name="suggest", group="suggest", thread=True, exclusive=True, exit_on_error=False)


def _propose(app: App[Any], db_path: Path, experiment: str | None, width: int, depth: int) -> None:
    from scaletui.services.suggest import suggest_for

    proposal = suggest_for(db_path, experiment, width, depth)
    title = (f"next size w{width} d{depth}: lr {proposal.lr:.3g} by {proposal.rule} "
             f"(confidence {proposal.confidence})")
    body = f"{proposal.note}\n\n{proposal.toml_fragment(width, depth)}"
    app.call_from_thread(app.push_screen, TextScreen(title, body))
