"""Bad command lines and bad database files: one line on stderr, exit code 2, nothing written.

Hypothesis drives the command line in-process (click's CliRunner, which runs the real `main`
including its one-line error handling); a handful of real `scaletui` subprocesses check the same
promises end to end, for files that are not sweeps and databases that are not scaletui's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scaletui.cli import main
from scaletui.store.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.conftest import run_cli

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COMMANDS = sorted(main.commands)
OPTIONS = {opt for command in main.commands.values() for param in command.params for opt in param.opts}
words = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)


def assert_one_error_line(args: list[str], cwd: Path) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2, (args, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    assert not list(cwd.glob("*.db")), "a bad command line must not create a database"
    return lines[0]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@SETTINGS
@given(command=st.sampled_from(COMMANDS), option=words)
def test_unknown_options_are_one_line(cwd: Path, command: str, option: str) -> None:
    assume(f"--{option}" not in OPTIONS)
    line = assert_one_error_line([command, f"--{option}"], cwd)
    assert f"--{option}" in line


@SETTINGS
@given(name=words)
def test_unknown_commands_are_one_line(cwd: Path, name: str) -> None:
    assume(name not in COMMANDS)
    assert name in assert_one_error_line([name], cwd)


@SETTINGS
@given(workers=st.one_of(st.integers(max_value=0).map(str), words, st.floats(allow_nan=True).map(str)))
def test_bad_worker_counts_are_one_line(cwd: Path, workers: str) -> None:
    assume(not workers.isdigit() or int(workers) < 1)
    assert "--workers" in assert_one_error_line(["run", "--dry-run", "--workers", workers], cwd)


@SETTINGS
@given(option=st.sampled_from(["--db", "--workers"]), command=st.sampled_from(["run", "ls"]))
def test_options_missing_their_value_are_one_line(cwd: Path, option: str, command: str) -> None:
    assume(not (command == "ls" and option == "--workers"))
    assert option in assert_one_error_line([command, option], cwd)


def test_a_database_path_that_is_a_folder_is_one_line(cwd: Path) -> None:
    (cwd / "folder.db").mkdir()
    for args in (["ls", "--db", "folder.db"], ["run", "--dry-run", "--db", "folder.db"]):
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------- real processes


def one_line_exit_2(*args: str) -> str:
    out = run_cli(*args, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_bad_sweep_files_are_one_line_without_a_database(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    cases = {
        "broken.toml": ("[experiment\nname = 1", "broken.toml: invalid TOML: "),
        "types.toml": ('[experiment]\nname = "x"\n[model]\nwidth = "wide"\n[train]\nsteps = 5',
                       "types.toml: model.width: must be a positive integer, got 'wide'"),
        "unknown.toml": ('[experiment]\nname = "x"\n[model]\nwidht = 4\n[train]\nsteps = 5',
                         "unknown.toml: model.widht: "),
        "empty.toml": ('[experiment]\nname = "x"\n[model]\ndepth = []\n[train]\nsteps = 5',
                       "empty.toml: model.depth: "),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        line = one_line_exit_2("run", "--headless", str(tmp_path / name), "--db", str(db))
        assert line.startswith(f"error: {expected}"), line
    assert not db.exists()


def foreign_databases(tmp_path: Path) -> dict[str, Path]:
    """Files scaletui must refuse: not SQLite at all, someone else's SQLite, a newer scaletui's."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an SQLite file\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute("CREATE TABLE runs (id INTEGER)")
    return {"not an SQLite database": junk, "without a scaletui schema": other, "newer than this scaletui": newer}


def test_databases_that_are_not_ours_are_refused_untouched(make_sweep: Callable[..., Path], tmp_path: Path) -> None:
    sweep = make_sweep()
    for reason, db in foreign_databases(tmp_path).items():
        before = db.read_bytes()
        for args in (("run", "--headless", str(sweep), "--db", str(db)), ("ls", "--db", str(db))):
            line = one_line_exit_2(*args)
            assert str(db) in line and reason in line, line
        assert db.read_bytes() == before
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
