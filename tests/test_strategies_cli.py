"""`scaletui fit --strategies` and `--regimes` as a user runs them: a real subprocess over a real database.

The database (tests/fitdb.py) is a width x depth grid whose runs follow loss = 0.3 + 40 params^-0.5 + 5/step,
params = 100 w^2 d, FLOPs per example = 2 params: along every strategy the law in params (and in FLOPs) has
alpha = 0.5, at every evaluation step, and no size ever loses to a smaller one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fitdb import ALPHA, EVAL_STEPS, WIDTHS, fill, plan

pytestmark = pytest.mark.slow  # every test starts the real CLI (numpy + scipy imports, fits)

DEPTHS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def grid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("grid") / "runs.db", plan(depths=DEPTHS))


@pytest.fixture(scope="module")
def one_depth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("line") / "runs.db", plan(depths=(1,)))


def test_strategies_json_fits_every_path_with_the_true_exponent(grid_db: Path) -> None:
    out = run_cli("fit", "--db", str(grid_db), "--strategies", "--bootstrap", "100", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)["strategies"]
    names = [x["name"] for x in s["strategies"]]
    assert names == ([f"width at depth {d}" for d in DEPTHS] + [f"depth at width {w}" for w in WIDTHS]
                     + ["both, along the diagonal"])
    for strategy in s["strategies"]:
        assert strategy["error"] is None, strategy["name"]
        for axis in ("params", "flops"):
            fit = strategy["fits"][axis]
            assert fit["law"]["alpha"] == pytest.approx(ALPHA, abs=0.02), (strategy["name"], axis)
            lo, hi = fit["alpha_interval"]
            assert lo <= ALPHA + 0.02 and hi >= ALPHA - 0.02
    assert s["cheapest"] in names and s["resampled"] == "seeds" and s["paired_resamples"]
    assert s["flops"].startswith("flops_per_example x steps trained x batch_size")
    assert not s["target_given"]


def test_strategies_table_names_the_cheapest_and_a_given_path(grid_db: Path) -> None:
    out = run_cli("fit", "--db", str(grid_db), "--strategies", "--bootstrap", "50", "--target-loss", "0.33",
                  "--path", "8,1;16,2;32,3;64,4")
    assert out.returncode == 0, out.stderr
    assert "target loss 0.33 (given)" in out.stdout
    assert "both, along the given path" in out.stdout and "fewest FLOPs to loss 0.33:" in out.stdout


def test_regimes_json_has_the_true_exponent_at_every_step_and_no_crossing(grid_db: Path) -> None:
    out = run_cli("fit", "--db", str(grid_db), "--regimes", "--bootstrap", "50", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["regimes"]
    assert r["regime"] == "evaluation step" and r["regimes"] == [float(s) for s in EVAL_STEPS[1:]]
    assert all(f["law"]["alpha"] == pytest.approx(ALPHA, abs=0.02) for f in r["fits"])
    assert r["crossings"] == [] and len(r["sizes"]) == len(WIDTHS) * len(DEPTHS)


@pytest.mark.parametrize(("args", "expected"), [
    (("--strategies", "--path", "8,1;999,1"), "error: --path: sizes not in the sweep: 999x1"),
    (("--strategies", "--path", "8,1;abc"), "error: --path '8,1;abc': 'abc' is not WIDTH,DEPTH"),
    (("--target-loss", "0.5"), "error: --target-loss: only with --strategies"),
    (("--regimes", "--x", "steps"), "error: x: regimes fit the law against a model size"),
    (("--strategies", "--group-by", "depth"), "error: --group-by: not with --strategies"),
])
def test_bad_options_are_one_line_and_exit_2(grid_db: Path, args: tuple[str, ...], expected: str) -> None:
    out = run_cli("fit", "--db", str(grid_db), *args, "--bootstrap", "0")
    assert out.returncode == 2
    assert out.stderr.startswith(expected) and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_grid_without_two_axes_is_one_line_and_exit_2(one_depth_db: Path) -> None:
    out = run_cli("fit", "--db", str(one_depth_db), "--strategies", "--bootstrap", "0")
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "needs at least 2 widths and 2 depths" in line and "1 depth(s) [1]" in line
