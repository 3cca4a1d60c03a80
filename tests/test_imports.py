"""The dependency direction of DESIGN.md, enforced.

Two checks: a static one over every import statement in the package (lazy imports
inside functions included), and a runtime one that imports the headless entry
points in a fresh interpreter and looks at sys.modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scaletui"

# Which top-level modules each part of the package may never import.
FORBIDDEN = {
    "engine": {"scaletui.store", "scaletui.tui", "scaletui.runner", "scaletui.cli", "textual", "sqlite_utils"},
    "store": {"torch", "torchvision", "textual", "scaletui.engine", "scaletui.tui", "scaletui.runner"},
    "analysis": {"torch", "torchvision", "textual", "sqlite_utils", "scaletui.engine", "scaletui.store",
                 "scaletui.tui", "scaletui.runner"},
    "config.py": {"torch", "textual", "sqlite_utils", "scaletui.engine", "scaletui.store", "scaletui.tui"},
    "records.py": {"torch", "textual", "sqlite_utils", "numpy", "scaletui"},
    "datasets.py": {"torch", "textual", "sqlite_utils", "numpy", "scaletui"},
    "fitting.py": {"torch", "torchvision", "textual", "scaletui.engine", "scaletui.tui", "scaletui.runner"},
    "cli_fit.py": {"torch", "torchvision", "textual", "scaletui.engine", "scaletui.tui", "scaletui.runner"},
    "plotting.py": {"torch", "torchvision", "textual", "scaletui.engine", "scaletui.tui", "scaletui.runner"},
    # The app only reads, through store.Reader, and starts training as a subprocess: no torch, no SQL.
    "tui": {"torch", "torchvision", "sqlite_utils", "scaletui.engine", "scaletui.runner"},
}


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violates(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_static_dependency_direction(part: str) -> None:
    target = PACKAGE / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files, f"nothing found for {part}"
    bad = {
        f"{f.relative_to(PACKAGE)} imports {name}"
        for f in files
        for name in imported_names(f)
        if violates(name, FORBIDDEN[part])
    }
    assert not bad, sorted(bad)


def test_only_tui_imports_textual() -> None:
    outside = [f for f in PACKAGE.rglob("*.py") if "tui" not in f.relative_to(PACKAGE).parts]
    offenders = [str(f) for f in outside if any(violates(n, {"textual", "textual_plotext"}) for n in imported_names(f))]
    assert not offenders


def loaded_after(code: str) -> set[str]:
    """Run `code` in a fresh interpreter and return the top-level modules it loaded."""
    probe = code + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HELP = "import sys\nfrom scaletui.cli import main\nsys.argv=['scaletui','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass"
# `scaletui fit` all the way through a (CSV) fit, without storing it.
CSV = PACKAGE.parent / "tests" / "analysis" / "data" / "chinchilla_svg_extracted_data.csv"
FIT = (f"import sys\nfrom scaletui.cli import main\nsys.argv=['scaletui','fit','--csv',{str(CSV)!r},"
       "'--csv-x','Model Size','--csv-y','loss','--bootstrap','2','--no-save']\n"
       "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code")


@pytest.mark.parametrize(
    "code",
    [
        HELP,
        "import scaletui.cli",
        "import scaletui.config",
        "import scaletui.runner",
        "import scaletui.store.schema, scaletui.store.writer, scaletui.store.reader",
        "import scaletui.cli_fit, scaletui.fitting",
        FIT,
    ],
)
def test_headless_modules_never_import_torch_or_textual(code: str) -> None:
    loaded = loaded_after(code)
    assert "torch" not in loaded and "textual" not in loaded, sorted(loaded)


def test_engine_never_loads_store_or_textual() -> None:
    code = "import scaletui.engine.loop, scaletui.engine.data, scaletui.engine.models"
    full = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(sorted(m for m in sys.modules if m.startswith(('scaletui.store','textual','sqlite_utils'))))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert full.stdout.strip() == "[]"
