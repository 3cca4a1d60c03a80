"""examples/compute_optimal.toml, the sweep `scaletui fit --frontier` is shown on, stays valid and fit for it.

Training it takes minutes (its header has the measured time), so here it is validated, not trained: the real
`scaletui run --dry-run` accepts it, and its grid has what the frontier needs: a data axis in examples seen
(train.steps), several model sizes, and more (N, D) points than L(N, D) has parameters.
"""

from __future__ import annotations

from pathlib import Path

from scaletui.core.config import load_sweep
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "compute_optimal.toml"
N_PARAMS = 5  # E, A, alpha, B, beta


def test_dry_run_accepts_it_and_lists_every_run() -> None:
    runs = load_sweep(EXAMPLE).runs
    done = run_cli("run", "--dry-run", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert f"{len(runs)} runs over model.width" in done.stdout and "train.steps" in done.stdout


def test_its_grid_has_a_data_axis_sizes_and_enough_points() -> None:
    runs = load_sweep(EXAMPLE).runs
    seen = {r.train.steps * r.train.batch_size for r in runs}
    widths = {r.model.width for r in runs}
    assert len(seen) >= 4 and len(widths) >= 4
    assert len({(r.model.width, r.train.steps) for r in runs}) >= 3 * (N_PARAMS + 1)
    assert {r.data.dataset for r in runs} == {"mnist1d"} and {r.model.arch for r in runs} <= {"mlp", "resmlp"}
    assert len({r.seed for r in runs}) >= 2  # the bootstrap draws whole points; seeds show the noise


def test_its_header_gives_the_frontier_command_and_the_measured_time() -> None:
    header = Path(EXAMPLE).read_text(encoding="utf-8").split("\n[", 1)[0]
    assert "scaletui fit --frontier" in header and "scaletui run --headless examples/compute_optimal.toml" in header
    assert "measured" in header.lower() and "N_opt" in header
