"""The README's example queries run on the database scaletui writes: every statement of its ```sql blocks
is executed on a fresh file with the full schema (no rows needed: a renamed column or table fails)."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from scaletui.store.writer import Store
from tests.conftest import REPO


def readme_statements() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    statements: list[str] = []
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                statements.append(pending.strip())
                pending = ""
        assert not pending.strip(), f"an unfinished statement in a README sql block: {pending.strip()[:80]}"
    return statements


def test_the_readme_has_example_queries() -> None:
    assert len(readme_statements()) >= 10


@pytest.mark.parametrize("statement", readme_statements(), ids=lambda s: s.splitlines()[0][:60])
def test_a_readme_query_runs_on_the_schema(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "runs.db"
    Store(path).close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(statement).fetchall()
