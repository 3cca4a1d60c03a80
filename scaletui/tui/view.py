"""What the user chose to see: one object, owned by the app, read by every region of the screen.

Everything here changes by a key press, or (the selection) by following training until the user
moves the cursor; nothing here changes because data arrived. It is changed in place: the regions hold
the same object the app does. The data is `SweepState`. Plain Python,
no textual: the rules (which experiment is shown when the preferred one is missing, what `n` picks
next) are unit tested.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from scaletui.tui.compare import free_slot, next_metric
from scaletui.tui.model import SORT_KEYS

DETAIL_PANES = ("loss", "grad", "alerts", "events")  # under 100 columns one is shown, `p` cycles


def _after(options: Sequence[str], current: str) -> str:
    return options[(options.index(current) + 1) % len(options)]


@dataclass
class View:
    """The table's order and filters, the experiment shown, the selection, the detail pane, the plot."""

    # the runs table
    group_by: str = "width"  # width: grouped by width, ranked by depth; depth: the other way round
    sort: str = "rank"
    reverse: bool = False
    query: str = ""
    experiment: str | None = None  # None: every experiment in the database
    # The sweep file's experiment is a preference: shown alone when the database has it, else every
    # experiment is (a missing name must not hide every run); `n` replaces it with the user's choice.
    preferred: str | None = None
    chosen: bool = False
    # the dashboard
    pane: str = "loss"
    selected: int | None = None
    follow: bool = True  # select the run that is training, until the user moves the cursor
    # the loss plot
    log_y: bool = True  # on a linear axis the first steps' loss squashes the rest of the curve
    smooth: bool = False
    # runs compared side by side: marked run -> its colour slot (kept while others come and go)
    marks: dict[int, int] = field(default_factory=dict)
    metric: str | None = None  # the metric compared; None until the user picks one with `v`

    @staticmethod
    def preferring(experiment: str | None) -> View:
        """The view on opening: the preferred experiment, until the database says whether it has it."""
        return View(experiment=experiment, preferred=experiment)

    @property
    def across(self) -> str:
        """The axis runs are ranked along within a group: deltas compare along it."""
        return "depth" if self.group_by == "width" else "width"

    def flip_grouping(self) -> None:
        self.group_by = self.across

    def next_sort(self) -> None:
        self.sort = _after(SORT_KEYS, self.sort)

    def next_pane(self) -> None:
        self.pane = _after(DETAIL_PANES, self.pane)

    def toggle_mark(self, run_id: int) -> None:
        """`m`: mark the run (it gets the lowest free colour), or unmark it."""
        if self.marks.pop(run_id, None) is None:
            self.marks[run_id] = free_slot(self.marks.values())

    def toggle_marks(self, run_ids: Iterable[int]) -> None:
        """`M`: mark every one of `run_ids` (a group); if all are marked already, unmark them."""
        run_ids = list(run_ids)
        if all(run_id in self.marks for run_id in run_ids):
            for run_id in run_ids:
                del self.marks[run_id]
            return
        for run_id in run_ids:
            if run_id not in self.marks:
                self.marks[run_id] = free_slot(self.marks.values())

    def clear_marks(self) -> None:
        self.marks.clear()

    def next_metric(self, present: Collection[str], shown: str | None) -> None:
        """`v`: the metric after the one `shown`, among those the compared runs logged."""
        self.metric = next_metric(present, shown)

    def next_experiment(self, names: Sequence[str]) -> None:
        """`n`: all experiments, then each in turn; the user's choice replaces the preference."""
        choices: list[str | None] = [None, *names]
        current = choices.index(self.experiment) if self.experiment in choices else 0
        self.chosen = True
        self.experiment = choices[(current + 1) % len(choices)]

    def resolve_experiment(self, names: Sequence[str]) -> bool:
        """The preferred experiment if the database has it, else all of them; True when that changed
        what is shown."""
        if self.chosen or self.preferred is None:
            return False
        wanted = self.preferred if self.preferred in names else None
        changed = wanted != self.experiment
        self.experiment = wanted
        return changed

    def missing_experiment(self, names: Sequence[str]) -> str | None:
        """The preferred experiment while the database (read: `names`) does not have it."""
        if self.chosen or self.preferred is None or self.preferred in names:
            return None
        return self.preferred

    def fit_experiment(self, names: Sequence[str]) -> str | None:
        """The grid and the fit need one experiment: the one shown, else the newest."""
        if self.experiment is not None:
            return self.experiment
        return names[-1] if names else None
