"""A database on storage that refuses writes: a read-only file or folder, a disk that fills up.

Read-only is refused before anything runs (exit 2, one line, the file untouched, no `-wal` or
`-shm` created). A disk that fills mid-sweep stops the sweep with one line and exit 3; the file
stays intact, finished runs stay as they were, and the same command resumes once there is room.
A full disk is simulated with RLIMIT_FSIZE on the sweep's processes (writes past the limit fail
with EFBIG, which SQLite reports as an I/O error), which needs no privileges.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (
    Sweep,
    assert_complete_without_duplicates,
    assert_intact,
    fault_env,
    finished_snapshot,
    rows,
)

pytestmark = pytest.mark.slow

ONE_RUN = {"model": {"width": 8, "depth": 1}, "train": {"steps": 20}}
MORE_RUNS = {"model": {"width": [8, 16], "depth": [1, 2]}, "train": {"steps": 400}}


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A folder that becomes read-only when the returned function is called: chmod for a normal
    user, a read-only tmpfs mount for root (whom permissions do not stop)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)]).returncode != 0:
            pytest.skip("running as root without the right to mount: cannot make a read-only folder")
        mounted = True

    def make_read_only() -> Path:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            for path in folder.iterdir():
                path.chmod(0o444)
            folder.chmod(0o555)
        return folder

    yield make_read_only
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_read_only_database_folder_is_refused_untouched(fault_sweep: Callable[..., Sweep],
                                                        read_only_folder: Callable[[], Path]) -> None:
    sweep = fault_sweep(**ONE_RUN)
    assert sweep.run().returncode == 0
    target = sweep.db.parent / "ro" / "runs.db"
    shutil.copy(sweep.db, target)
    before = target.read_bytes()
    read_only_folder()

    for db in (target, target.with_name("new.db")):
        out = sweep.run(None, "--db", str(db))
        assert out.returncode == 2, out.stdout + out.stderr
        line = one_error_line(out.stderr)
        assert line == f"error: {db}: read-only (scaletui writes the database file and its -wal and -shm files" \
                       f" in {db.parent})"
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["runs.db"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to files whatever their permissions")
def test_read_only_database_file_is_refused_untouched(fault_sweep: Callable[..., Sweep]) -> None:
    sweep = fault_sweep(**ONE_RUN)
    assert sweep.run().returncode == 0
    sweep.db.chmod(0o444)
    before = sweep.db.read_bytes()
    out = sweep.run()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "read-only" in one_error_line(out.stderr)
    assert sweep.db.read_bytes() == before


def test_a_disk_that_fills_up_stops_the_sweep_cleanly(fault_sweep: Callable[..., Sweep]) -> None:
    sweep = fault_sweep(**ONE_RUN)
    assert sweep.run().returncode == 0
    finished = finished_snapshot(sweep.db)
    sweep = fault_sweep(**MORE_RUNS)  # the same database, three more runs and a longer one
    limit = sweep.db.stat().st_size + 64 * 1024

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [*sweep.command()]
    proc = subprocess.run(command, env=fault_env(None, sweep.marks), capture_output=True, text=True,
                          timeout=180, preexec_fn=small_disk)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith(f"error: {sweep.db}: cannot write the database (")
    assert_intact(sweep.db)
    assert {k: v for k, v in finished_snapshot(sweep.db).items() if k in finished} == finished

    out = sweep.run()  # room again: the same command picks up where the sweep stopped
    assert out.returncode == 0, out.stdout + out.stderr
    assert_complete_without_duplicates(sweep.db)
    assert rows(sweep.db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
