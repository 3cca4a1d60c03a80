"""Bad input for the Ray executor: one line, exit code 2, and no database written. These need no
cluster: nothing answers at the address, Ray is not installed, or a node runs other versions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, write_toml
from tests.ray.conftest import RAY_MISSING, free_port, ray_env


def run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`scaletui ARGS` in a fresh interpreter (after `prelude`, to break something in it first)."""
    code = f"{prelude}\nimport sys\nfrom scaletui.cli import main\nsys.argv = ['scaletui', *{list(args)!r}]\nmain()"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=180)


def assert_refused(out: subprocess.CompletedProcess[str], db: Path, expected: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], out.stderr
    assert not db.exists(), "a database was written before the cluster was checked"


@pytest.mark.skipif(bool(RAY_MISSING), reason=str(RAY_MISSING))
def test_an_unreachable_address_is_one_line_and_exit_2(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep()
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = run("run", "--headless", str(sweep), "--executor", "ray", "--ray-address", address)
    assert_refused(out, tmp_path / "runs.db", f"no Ray cluster answers at {address} (experiment.ray_address)")


def test_ray_not_installed_is_one_line_and_exit_2(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep(experiment={"executor": "ray"})
    out = run("run", "--headless", str(sweep), prelude="import sys; sys.modules['ray'] = None  # import ray fails")
    assert_refused(out, tmp_path / "runs.db", "experiment.executor: \"ray\" needs Ray installed: pip install")


def test_a_bad_address_option_is_one_line_and_exit_2(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    out = run("run", "--headless", str(make_sweep()), "--ray-address", "ray://head:10001")
    assert_refused(out, tmp_path / "runs.db", '--ray-address: must be "auto" or host:port')


@pytest.mark.skipif(bool(RAY_MISSING), reason=str(RAY_MISSING))
def test_a_node_with_other_versions_is_named() -> None:
    from scaletui.services.ray_executor import NodeFacts, node_facts, version_problem

    driver = node_facts()
    same = NodeFacts("n1", "10.0.0.2", "gpu-2", driver.scaletui, driver.ray, driver.python)
    assert version_problem(driver, [same]) is None
    older = NodeFacts("n2", "10.0.0.3", "gpu-3", driver.scaletui, "2.40.0", driver.python)
    problem = version_problem(driver, [same, older])
    assert problem == (f"version mismatch: node 10.0.0.3 (gpu-3) runs ray 2.40.0, this driver ray {driver.ray}; "
                       "install the same versions on every node")


def test_the_local_executor_never_imports_ray(tmp_path: Path) -> None:
    """A sweep on local workers, start to finish: `ray` is never loaded (a sweep of one's own function,
    so the check costs no dataset)."""
    (tmp_path / "train.py").write_text("def main(config, run):\n    run.log({'train_loss': 1.0}, step=1)\n")
    sweep = write_toml(tmp_path / "experiments.toml", {
        "experiment": {"name": "local", "db": str(tmp_path / "runs.db"), "workers": 1},
        "train": {"entrypoint": "train.py:main", "steps": 1}})
    code = ("import sys\nimport scaletui, scaletui.cli.run\nfrom scaletui.core.config import load_sweep\n"
            "from scaletui.services.runner import run_sweep\n"
            f"result = run_sweep(load_sweep({str(sweep)!r}))\n"
            "print(result.exit_code, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ray_env(), capture_output=True, text=True,
                         timeout=180)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr
