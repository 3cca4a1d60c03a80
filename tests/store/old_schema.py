"""Databases as an earlier release of scaletui made them, for the tests of each schema migration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scaletui.store import Store, schema


@contextmanager
def store_of_schema(monkeypatch: pytest.MonkeyPatch, path: Path, version: int) -> Iterator[Store]:
    """A Store whose database has only the first `version` migrations (`PRAGMA user_version` = version):
    what the last release before migration number `version` created. Outside the block the current
    schema is back, so the next Store or writer on `path` migrates it."""
    with monkeypatch.context() as old:
        old.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        old.setattr(schema, "SCHEMA_VERSION", version)
        with Store(path) as store:
            yield store
