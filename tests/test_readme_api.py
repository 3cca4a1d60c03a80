"""The README's Python API example runs verbatim: its code block, after a prelude that defines what the
`...` of the example stands for (a tiny model, a loss tensor, a cost), in a fresh process and folder."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("torch")

SECTION = "## Your own training loop: the Python API"
PRELUDE = """import torch
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
steps = 30
loss = torch.tensor(0.5)
cost = 1.25
n_params = sum(p.numel() for p in model.parameters())
"""


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's API section"
    return match.group(1)


def test_the_readme_example_runs_verbatim(tmp_path: Path) -> None:
    example = readme_example()
    assert example.startswith("import scaletui\nwith scaletui.init(") and "run.watch(model, every=25)" in example
    script = tmp_path / "example.py"
    script.write_text(PRELUDE + example, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "never logged 'test_loss'" in out.stderr  # the example states no loss: it is told so
    with closing(sqlite3.connect(tmp_path / "runs" / "scaletui.db")) as conn:
        run = conn.execute("SELECT experiment, status, width, depth, lr, params, step FROM run_summary").fetchall()
        metrics = conn.execute("SELECT key, count(*), min(step), max(step) FROM metrics GROUP BY key").fetchall()
    assert run == [("ppo-width", "done", 256, 4, 3e-4, 8 * 4 + 8 + 8 + 1, 29)]
    assert sorted(metrics) == [("cost", 30, 0, 29), ("train_loss", 30, 0, 29)]
