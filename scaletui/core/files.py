"""Files written whole or not at all: the one way scaletui replaces a file that others may read.

A file is written beside its final name under a temporary name, flushed and fsynced, then renamed onto
the final name (`os.replace`, atomic on POSIX), and the folder is fsynced so that the rename itself
survives a crash. A reader sees the old file or the new one, never a half-written one; two processes
racing both write whole files and the last rename wins. A write that fails or is interrupted removes
its temporary file; one killed outright (SIGKILL, power loss) leaves it, under a name that starts with
a dot and ends with `.tmp`, for its owner to clean up (engine/checkpoints.py does).

Standard library only (see ARCHITECTURE.md: core imports nothing else of scaletui's).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "write_atomically"]


def write_atomically(final: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file beside `final` (named `.<final name>.<random>.tmp`), make it
    durable, rename it onto `final`, and make the rename durable."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable (POSIX); a no-op where folders cannot be opened or
    synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
