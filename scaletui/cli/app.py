"""Opening the Textual app from the command line. textual is imported only here, inside the function:
`--help`, `ls`, `fit` and the headless path never load it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scaletui.cli.common import check_db_usable

if TYPE_CHECKING:
    from scaletui.core.config import Sweep


def open_app(db: Path, sweep: Sweep | None, *, start: bool, run_args: tuple[str, ...] = ()) -> None:
    """Run the app on `db` (and the sweep, which `r` starts, or which starts at once with `start`)."""
    if db.exists():
        check_db_usable(db, create=False, may_wait=True)
    from scaletui.tui.app import ScaleApp

    app = ScaleApp(db, sweep.source if sweep else None, experiment=sweep.name if sweep else None, start=start,
                   run_args=run_args)
    sys.exit(app.run() or 0)
