"""`--executor ray` without an address: a Ray instance of this machine alone, started and stopped by the
sweep itself (HOME is the test's folder: Ray writes its token file under ~/.ray when it starts one)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults.conftest import assert_complete_without_duplicates, rows
from tests.ray.conftest import RAY_MISSING, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(RAY_MISSING), reason=str(RAY_MISSING))]


def test_without_an_address_the_sweep_starts_its_own_ray(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(experiment={"workers": 1, "threads_per_worker": 1}, model={"width": [8], "depth": [1, 2]})
    env = ray_env(HOME=str(tmp_path))
    env.pop("RAY_AUTH_MODE")  # Ray's own default for an instance it starts
    out = subprocess.run([sys.executable, "-m", "scaletui", "run", "--headless", str(sweep), "--executor", "ray"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    db = tmp_path / "runs.db"
    assert_complete_without_duplicates(db)
    assert len(rows(db, "SELECT id FROM runs")) == 2
