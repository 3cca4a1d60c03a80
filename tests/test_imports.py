"""The dependency direction of ARCHITECTURE.md, enforced.

ARCHITECTURE.md draws the layers as folders: front ends (cli/, tui/, the Python API) -> services/ ->
base (engine/, store/, analysis/) -> core/ (the vocabulary). Arrows point down only. Two checks: a
static one over every import statement in the package (lazy imports inside functions included), and a
runtime one that imports the headless entry points in a fresh interpreter and looks at sys.modules.
A third keeps ARCHITECTURE.md honest: every package folder is named in it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.refdata import data_dir, missing_reason

PACKAGE = Path(__file__).resolve().parents[1] / "scaletui"
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"

_ABOVE_BASE = {"scaletui.services", "scaletui.cli", "scaletui.tui", "scaletui.api"}
_THIRD_PARTY = {"torch", "torchvision", "textual", "textual_plotext", "sqlite_utils", "numpy", "scipy", "click",
                "rich", "matplotlib", "plotext", "ray", "pyarrow"}
# Which modules each part of the package may never import.
FORBIDDEN = {
    # The vocabulary: the standard library and itself, nothing else.
    "core": _THIRD_PARTY | _ABOVE_BASE | {"scaletui.engine", "scaletui.store", "scaletui.analysis"},
    # Base packages: each knows only the vocabulary (and its own one heavy library).
    "engine": _ABOVE_BASE | {"scaletui.store", "scaletui.analysis", "textual", "sqlite_utils"},
    "store": _ABOVE_BASE | {"scaletui.engine", "scaletui.analysis", "torch", "torchvision", "textual", "numpy"},
    "analysis": _ABOVE_BASE | {"scaletui.engine", "scaletui.store", "torch", "torchvision", "textual",
                               "sqlite_utils"},
    # Services glue the base together; they never reach up into a front end.
    "services": {"scaletui.cli", "scaletui.tui", "scaletui.api", "textual", "textual_plotext"},
    # Front ends: the app reads through the services and starts training as a subprocess.
    "tui": {"torch", "torchvision", "sqlite_utils", "scaletui.engine", "scaletui.store", "scaletui.services.runner",
            "scaletui.cli", "scaletui.api"},
    "cli": {"torch", "torchvision", "textual", "scaletui.engine"},
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


HELP = (
    "import sys\nfrom scaletui.cli import main\nsys.argv=['scaletui','--help']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass"
)
# `scaletui fit` all the way through a (CSV) fit, without storing it.
CSV = data_dir() / "chinchilla_svg_extracted_data.csv"
FIT = (
    f"import sys\nfrom scaletui.cli import main\nsys.argv=['scaletui','fit','--csv',{str(CSV)!r},"
    "'--csv-x','Model Size','--csv-y','loss','--bootstrap','2','--no-save']\n"
    "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code"
)


@pytest.mark.parametrize(
    "code",
    [
        HELP,
        "import scaletui.cli",
        "import scaletui.core.config",
        "import scaletui.services.runner",
        "import scaletui.store.schema, scaletui.store.writer, scaletui.store.reader",
        "import scaletui.cli.fit, scaletui.services.fitting",
        "import scaletui.services.monitor, scaletui.services.suggest",
        "import scaletui; scaletui.init",
        FIT,
    ],
)
def test_headless_modules_never_import_torch_or_textual(code: str) -> None:
    if code == FIT and missing_reason():
        pytest.skip(missing_reason())
    loaded = loaded_after(code)
    assert "torch" not in loaded and "textual" not in loaded, sorted(loaded)


def _plan_and_prepare(sweep_file: Path) -> str:
    """Code that plans a sweep's tasks and prepares its datasets, as the runner does before any worker starts."""
    return (
        "from scaletui.core.config import load_sweep\n"
        "from scaletui.services.runner import plan_tasks, prepare_datasets\n"
        f"sweep = load_sweep({str(sweep_file)!r})\n"
        "prepare_datasets(sweep)\n"
        "tasks = plan_tasks(list(enumerate(sweep.runs)), sweep.workers, sweep.batch_runs)\n"
        "print(len(tasks), max(len(t.members) for t in tasks))"
    )


@pytest.mark.parametrize(("seeds", "bundled"), [([0], False), ([0, 1], True)])
def test_the_runner_imports_torch_only_to_plan_a_bundle(
    make_sweep: Callable[..., Path], seeds: list[int], bundled: bool
) -> None:
    """Importing torch costs the runner ~3 s of CPU before its first worker starts: a sweep with no two runs
    to bundle (one seed) plans and prepares MNIST-1D without it; two seeds of each shape make 4 bundles, which ask
    the model whether batching pays."""
    code = _plan_and_prepare(make_sweep(train={"seeds": seeds}))
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == (["4", "2", "True"] if bundled else ["4", "1", "False"])


def test_the_python_api_loads_no_torch_textual_or_scipy() -> None:
    """`import scaletui` and `scaletui.init` stay light in a researcher's script: torch only with `watch`."""
    loaded = loaded_after("import scaletui; scaletui.init; scaletui.Run; scaletui.NotANumber")
    assert not loaded & {"torch", "textual", "scipy"}, sorted(loaded)


def test_engine_never_loads_store_or_textual() -> None:
    code = "import scaletui.engine.loop, scaletui.engine.data, scaletui.engine.models"
    full = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys; print(sorted(m for m in sys.modules"
            " if m.startswith(('scaletui.store','textual','sqlite_utils'))))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert full.stdout.strip() == "[]"


def test_the_vocabulary_and_the_command_line_help_load_no_numpy() -> None:
    """`import scaletui.core...` and `scaletui --help` stay instant: no numpy, no store."""
    loaded = loaded_after("import scaletui.core.config, scaletui.core.rows\n" + HELP)
    assert not loaded & {"numpy", "scipy", "sqlite_utils", "torch", "textual"}, sorted(loaded)


def test_architecture_md_names_every_package_folder() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders and all(f"{name}/" in text for name in folders), folders
