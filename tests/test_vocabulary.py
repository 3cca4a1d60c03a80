"""One vocabulary: statuses and choices are spelled in `scaletui/core/vocabulary.py` and nowhere else.

The scan reads every module of the package as a syntax tree and looks at its string constants (not
docstrings, not the prose parts of f-strings): a constant that *is* a status or a distinctive choice, or
an SQL text that quotes one (`'done'`), fails the test with its file and line. Words that are also plain
English or column names ("none", "default", "momentum", "layer", "final", "best", "warning") are left
out of the scan on purpose: the enums cover them, the scan could not tell them from prose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaletui.core.vocabulary import (
    AlertKind,
    Arch,
    Choice,
    Init,
    LrScaling,
    Optimizer,
    RunEventKind,
    RunStatus,
    Schedule,
    sql_list,
)

PACKAGE = Path(__file__).resolve().parents[1] / "scaletui"
VOCABULARY = PACKAGE / "core" / "vocabulary.py"

SCANNED: frozenset[str] = frozenset(
    {s.value for s in RunStatus}
    | {a.value for a in Arch}
    | {Init.HE.value, Init.XAVIER.value, Init.ORTHOGONAL.value}
    | {Optimizer.SGD.value, Optimizer.ADAM.value, Optimizer.ADAMW.value}
    | {Schedule.COSINE.value, Schedule.LINEAR_WARMUP_COSINE.value}
    | {LrScaling.SQRT_PARAMS.value}
    | {k.value for k in AlertKind}
    | {RunEventKind.STORAGE_FAILED.value}
)


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def fstring_parts(tree: ast.AST) -> set[int]:
    return {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}


def literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant that is a scanned word or quotes one SQL-style."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = docstring_nodes(tree) | fstring_parts(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text in SCANNED or any(f"'{word}'" in text for word in SCANNED):
                yield node.lineno, text


def offenders(root: Path) -> list[str]:
    return [f"{path.relative_to(root.parent)}:{line}: {text!r}"
            for path in sorted(root.rglob("*.py")) if path != VOCABULARY
            for line, text in literals(path)]


def test_no_status_or_choice_is_spelled_outside_the_vocabulary() -> None:
    found = offenders(PACKAGE)
    assert not found, "import these from scaletui.core.vocabulary instead:\n" + "\n".join(found)


def test_the_scan_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "bad.py").write_text('"""a docstring that says done is fine"""\n'
                                    'STATUS = "early_stopped"\n'
                                    'SQL = "SELECT 1 FROM runs WHERE status IN (\'diverged\')"\n'
                                    'NOTE = f"done {1}"\n', encoding="utf-8")
    found = offenders(package)
    assert [line.split(": ", 1)[0] for line in found] == ["pkg/bad.py:2", "pkg/bad.py:3"]


@pytest.mark.parametrize("choice", [RunStatus, Arch, Optimizer, Schedule])
def test_a_member_is_its_text_everywhere(choice: type[Choice]) -> None:
    """Dict keys, sets, f-strings and SQL all see the plain text: that is what makes one vocabulary safe."""
    for member in choice:
        assert member == member.value and hash(member) == hash(member.value)
        assert {member: 1}[member.value] == 1 and f"{member}" == member.value
    assert sql_list(choice) == ", ".join(f"'{v}'" for v in sorted(choice.choices()))
