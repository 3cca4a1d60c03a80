"""`scaletui fit --frontier` as a user runs it: a real subprocess over a real database with a data axis.

The database (tests/frontierdb.py) is a width x steps grid whose final losses follow L(N, D) = 0.4 + 40/N^0.5 +
20/D^0.4 with 1% noise per point, N = params, D = steps x 32 examples seen, flops_per_example = 2N (so C = 6ND).
The truth's compute-optimal policy is computed here by brute force along C = 6ND, not by the closed forms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.fitdb import fill as fill_without_data_axis
from tests.fitdb import plan
from tests.frontierdb import BATCH, LAW, STEPS, WIDTHS, fill, params_of, true_loss

pytestmark = pytest.mark.slow  # every test starts the real CLI (numpy + scipy imports, fits)

BUDGETS = (1e9, 1e10, 1e11)


def true_n_opt(compute: float) -> float:
    """argmin over N of the true law along C = 6 N D, on a fine log grid."""
    n = np.geomspace(1e2, 1e8, 400_001)
    return float(n[np.argmin(true_loss(n, compute / (6 * n)))])


@pytest.fixture(scope="module")
def grid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill(tmp_path_factory.mktemp("frontier") / "runs.db")


def frontier_json(db: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = run_cli("fit", "--db", str(db), "--frontier", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["frontier"]  # type: ignore[no-any-return]


def test_json_recovers_the_law_and_the_policy_with_intervals(grid_db: Path) -> None:
    f = frontier_json(grid_db, "--bootstrap", "200", *(x for c in BUDGETS for x in ("--budget", str(c))))
    assert f["form"] == "CHINCHILLA" and f["N"] == "params" and f["D"].startswith("examples seen")
    assert f["k"] == pytest.approx(6.0) and f["runs"] == len(WIDTHS) * len(STEPS) * 2
    assert f["bootstrap"] == 200 and f["resampled"] == "(N, D) points"
    for name in ("alpha", "beta", "E"):
        lo, hi = f["intervals"][name]
        assert lo <= LAW[name] <= hi, name
    true_a = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    assert f["a_interval"][0] <= true_a <= f["a_interval"][1]
    assert f["a"] + f["b"] == pytest.approx(1.0)
    assert [b["compute"] for b in f["budgets"]] == list(BUDGETS)
    for b in f["budgets"]:
        truth = true_n_opt(b["compute"])
        assert b["N_opt_interval"][0] <= truth <= b["N_opt_interval"][1], (b["compute"], truth)
        assert b["N_opt"] * b["D_opt"] == pytest.approx(b["compute"] / 6, rel=1e-9)
        assert b["N_opt"] == pytest.approx(truth, rel=0.5)
        assert b["loss_interval"][0] <= b["loss"] <= b["loss_interval"][1]


def test_json_names_the_run_closest_to_the_frontier(grid_db: Path) -> None:
    f = frontier_json(grid_db, "--bootstrap", "0")
    points = f["points"]
    assert len(points) == len(WIDTHS) * len(STEPS)
    assert f["closest"] == min(points, key=lambda p: abs(math.log(p["loss_ratio"])))
    assert f["closest_by_size"] == min(points, key=lambda p: abs(p["log10_N_over_N_opt"]))
    for p in points:
        assert p["D"] == p["steps"] * BATCH and p["compute"] == pytest.approx(6 * p["N"] * p["D"])
        assert p["N"] in [params_of(w) for w in WIDTHS] and len(p["runs"]) == 2
    assert f["budgets"][0]["compute"] == pytest.approx(min(p["compute"] for p in points))
    assert f["budgets"][-1]["compute"] == pytest.approx(10 * max(p["compute"] for p in points))
    assert f["bootstrap"] == 0 and f["a_interval"] == [None, None]
    assert any("repeat their data" in w for w in f["warnings"])  # 1600 steps x 32 > 4096 examples


def test_text_prints_the_policy_the_closest_run_and_a_terminal_plot(grid_db: Path, tmp_path: Path) -> None:
    png = tmp_path / "frontier.png"
    out = run_cli("fit", "--db", str(grid_db), "--frontier", "--bootstrap", "50", "--budget", "1e10",
                  "--png", str(png))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "compute-optimal frontier of L(N, D)" in text and "C = k N D, k = 3 x flops_per_example / N = 6" in text
    assert "N_opt = G (C/k)^a" in text and "1e+10" in text
    assert "closest to optimal (loss / frontier loss at its compute): N=" in text
    assert "frontier" in text and "closest" in text and "training compute C (FLOPs, log)" in text
    assert "\x1b[" not in text  # the terminal plot has no colour codes when piped
    assert f"plot written to {png}" in text and png.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "expected"), [
    (("--budget", "0"), "fit: Invalid value for '--budget': 0.0 is not in the range x>0"),
    (("--budget", "-3e9"), "fit: Invalid value for '--budget'"),
    (("--budget", "inf"), "error: --budget inf: a compute budget must be a finite number of FLOPs > 0"),
    (("--strategies",), "error: --frontier: not with --strategies"),
    (("--group-by", "width"), "error: --group-by: not with --frontier"),
    (("--x", "width"), "error: --x: not with --frontier"),
    (("--form", "M2"), "error: --form: M2 fits one x; --frontier fits L(N, D) = CHINCHILLA"),
])
def test_bad_options_are_one_line_and_exit_2(grid_db: Path, args: tuple[str, ...], expected: str) -> None:
    out = run_cli("fit", "--db", str(grid_db), "--frontier", *args, "--bootstrap", "0")
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not out.stdout, out.stderr


def test_budget_without_frontier_is_refused(grid_db: Path) -> None:
    out = run_cli("fit", "--db", str(grid_db), "--budget", "1e9", "--bootstrap", "0")
    assert out.returncode == 2 and out.stderr.strip() == "error: --budget: only with --frontier"


def test_a_sweep_without_a_data_axis_is_refused(tmp_path: Path) -> None:
    """tests/fitdb.py's sweep varies width only: every run saw the same number of examples."""
    db = fill_without_data_axis(tmp_path / "runs.db", plan())
    out = run_cli("fit", "--db", str(db), "--frontier", "--bootstrap", "0")
    assert out.returncode == 2
    assert out.stderr.startswith("error: --frontier: experiment 'law': every run saw D = 1.6e+04 examples")
    assert "sweep train.steps" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_too_few_points_for_five_parameters_are_refused(tmp_path: Path) -> None:
    db = fill(tmp_path / "runs.db", widths=(8, 16), steps=(100, 200))
    out = run_cli("fit", "--db", str(db), "--frontier", "--bootstrap", "0")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --frontier: experiment 'frontier': only 4 distinct (N, D) points; "
                                  "L(N, D) has 5 parameters and needs at least 6")
