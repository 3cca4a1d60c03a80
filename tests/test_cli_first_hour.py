"""What a newcomer meets in the first hour with the CLI: one rule for finding the database, a --help that
lists every command, plain words from `suggest`, a dry run that plans without data, and a headless
summary that states the mean and spread of each size."""

from __future__ import annotations

from pathlib import Path

from scaletui.analysis.configurator import propose_lr
from tests.conftest import run_cli, write_toml
from tests.fitdb import fill, plan


def sweep_file_naming(cwd: Path, db: str, shared_data_dir: Path) -> Path:
    """A valid ./experiments.toml whose experiment.db is `db` (relative to cwd)."""
    return write_toml(cwd / "experiments.toml", {
        "experiment": {"name": "elsewhere", "db": db, "data_dir": str(shared_data_dir)},
        "data": {"dataset": "mnist1d", "train_size": 256},
        "model": {"arch": "mlp", "width": 8, "depth": 1},
        "train": {"steps": 10, "batch_size": 32},
    })


def test_help_lists_every_command_and_the_database_rule() -> None:
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for command in ("scaletui run --headless", "scaletui ls", "scaletui fit", "scaletui suggest"):
        assert command in out.stdout, command
    assert "experiment.db of ./experiments.toml" in out.stdout


def test_ls_fit_and_suggest_use_the_database_the_sweep_file_names(tmp_path: Path, shared_data_dir: Path) -> None:
    (tmp_path / "results").mkdir()
    fill(tmp_path / "results" / "mine.db", plan(), experiment="law")
    sweep_file_naming(tmp_path, "results/mine.db", shared_data_dir)
    listed = run_cli("ls", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "law" in listed.stdout and "mlp w128 d1 s1" in listed.stdout
    fitted = run_cli("fit", "--bootstrap", "0", "--no-save", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert "law: L(params)" in fitted.stdout
    suggested = run_cli("suggest", "--width", "256", "--depth", "1", cwd=tmp_path)
    assert suggested.returncode == 0, suggested.stderr
    assert "experiment 'law'" in suggested.stdout  # learned from the sweep file's database, not an empty default
    explicit = run_cli("ls", "--db", str(tmp_path / "nothing.db"), cwd=tmp_path)
    assert explicit.returncode == 2 and "nothing.db" in explicit.stderr  # --db still wins


def test_a_broken_sweep_file_is_one_line_for_ls(tmp_path: Path) -> None:
    (tmp_path / "experiments.toml").write_text("[experiment\nname = 'x'\n", encoding="utf-8")
    out = run_cli("ls", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: experiments.toml: invalid TOML")
    assert len(out.stderr.strip().splitlines()) == 1


def test_suggest_explains_a_fallback_in_plain_words() -> None:
    proposal = propose_lr([], 10**6, rule="power_law", ref_lr=1e-3, ref_params=250_000)
    assert "size(s)" not in proposal.note and ">=" not in proposal.note
    assert "no size of this experiment tried 3 or more learning rates" in proposal.note
    assert "the new model has 4.0x the parameters of the run the rate comes from" in proposal.note
    assert "anchor" not in proposal.note.split(";")[-1]


def test_dry_run_plans_without_the_data_and_says_what_a_real_run_needs(tmp_path: Path) -> None:
    sweep = write_toml(tmp_path / "mnist.toml", {
        "experiment": {"name": "mnist", "db": str(tmp_path / "m.db"), "data_dir": str(tmp_path / "data")},
        "data": {"dataset": "mnist"},
        "model": {"arch": "mlp", "width": [32, 64], "depth": 2},
        "train": {"steps": 100},
    })
    out = run_cli("run", "--dry-run", str(sweep))
    assert out.returncode == 0, out.stderr
    assert "2 runs over model.width (2)" in out.stdout
    assert "warning: mnist.toml: data.dataset: mnist is not available offline" in out.stderr
    assert "train-images-idx3-ubyte" in out.stderr and str(tmp_path / "data" / "MNIST" / "raw") in out.stderr
    assert not (tmp_path / "m.db").exists()
    real = run_cli("run", "--headless", str(sweep))
    assert real.returncode == 2 and "not available offline" in real.stderr  # a real run still refuses


def test_a_sweep_fills_an_empty_database_file_that_ls_calls_not_ready(tmp_path: Path, shared_data_dir: Path
                                                                      ) -> None:
    db = tmp_path / "made-by-touch.db"
    db.touch()
    listed = run_cli("ls", "--db", str(db))
    assert listed.returncode == 2
    assert listed.stderr.strip() == f"error: {db}: waiting for the sweep to create its tables"
    sweep = sweep_file_naming(tmp_path, str(db), shared_data_dir)
    trained = run_cli("run", "--headless", str(sweep))
    assert trained.returncode == 0, trained.stderr
    assert "mlp w8 d1 s0" in run_cli("ls", "--db", str(db)).stdout
