"""Errors the store raises, each with a one-line message a front end can print as is.

Why a module of its own: the CLI and the app catch these to show a clean line
instead of a traceback, and they must be importable without opening anything.
"""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class NotAScaletuiDatabase(StoreError):
    """The file is not SQLite, or is an SQLite database that belongs to something else."""

    def __init__(self, path: str | Path, reason: str = "not a scaletui database") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DatabaseNotReady(StoreError):
    """The file exists but holds no tables yet: a sweep is creating it, or it was made empty by hand.

    A reader says so and tries again later, instead of failing with `no such table`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{path}: waiting for the sweep to create its tables")


class SchemaTooNew(StoreError):
    """The database was written by a newer scaletui than this one."""

    def __init__(self, path: str | Path, found: int, supported: int) -> None:
        self.path, self.found, self.supported = str(path), found, supported
        super().__init__(
            f"{path}: schema version {found} is newer than this scaletui supports ({supported}); upgrade scaletui"
        )


class SchemaTooOld(StoreError):
    """A read-only open found an older schema; the reader never migrates."""

    def __init__(self, path: str | Path, found: int, supported: int) -> None:
        self.path, self.found, self.supported = str(path), found, supported
        super().__init__(
            f"{path}: schema version {found} is older than {supported}; "
            "open it once for writing (e.g. `scaletui run`) to upgrade it"
        )


class StoreBusy(StoreError):
    """Another process kept the database locked for longer than we are willing to wait."""

    def __init__(self, path: str | Path, waited_s: float) -> None:
        self.path, self.waited_s = str(path), waited_s
        super().__init__(f"{path}: still locked by another process after {waited_s:.0f} s; giving up")


class StoreWriteFailed(StoreError):
    """The database cannot be written: disk full, I/O error, read-only file or folder.

    Nothing half-written stays behind (the failed transaction rolls back), but no run can record
    anything either, so the sweep stops and says why in one line.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot write the database ({reason}); free space or fix permissions, "
                         "then run the sweep again to resume")


class UnknownRun(StoreError):
    """A run id that has no row in `runs`."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id}")
