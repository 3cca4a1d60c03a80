"""examples/own_loop/regression.py stays a working script: a short version of its sweep trains through
the Python API into a fresh database, and `scaletui fit` fits the runs' loss against their size."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "own_loop" / "regression.py"


def test_a_short_sweep_of_the_example_trains_and_fits(tmp_path: Path) -> None:
    db = tmp_path / "own_loop.db"
    out = subprocess.run([sys.executable, str(EXAMPLE), "--db", str(db), "--widths", "4", "16", "64",
                          "--steps", "300"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("test loss") == 3 and "scaletui fit --db" in out.stdout
    with closing(sqlite3.connect(db)) as conn:
        runs = conn.execute("SELECT width, status, params, loss FROM run_summary ORDER BY width").fetchall()
        layers = conn.execute("SELECT count(DISTINCT run_id), count(DISTINCT layer) FROM layer_stats").fetchone()
    assert [(w, s) for w, s, _, _ in runs] == [(4, "done"), (16, "done"), (64, "done")]
    assert all(params > 0 and loss > 0 for _, _, params, loss in runs)
    assert layers == (3, 3)  # watched: two hidden layers and the head

    fit = run_cli("fit", "--db", str(db), "--experiment", "own-regression", "--bootstrap", "20", "--json")
    assert fit.returncode == 0, fit.stderr
    (report,) = json.loads(fit.stdout)["fits"]
    assert report["x"] == "params" and report["n_sizes"] == 3
