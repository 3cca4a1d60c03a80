"""core/files.py: a file is replaced whole or not at all, and a failed write leaves no temporary file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from scaletui.core.files import fsync_dir, write_atomically


def test_the_new_content_replaces_the_old_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    final = tmp_path / "data.bin"
    final.write_bytes(b"old")
    write_atomically(final, lambda f: f.write(b"new content"))
    assert final.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_a_write_that_fails_halfway_leaves_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    final = tmp_path / "data.bin"
    final.write_bytes(b"old")
    seen: list[str] = []

    def half_then_fail(f: BinaryIO) -> None:
        f.write(b"half of the new")
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "data.bin")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(final, half_then_fail)
    assert final.read_bytes() == b"old"
    # while it was written, it lay beside the final name, hidden and marked temporary (checkpoints.py's
    # clean-up of a killed writer's leftovers looks for exactly these names)
    assert len(seen) == 1 and seen[0].startswith(".data.bin.") and seen[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_a_new_file_is_created(tmp_path: Path) -> None:
    final = tmp_path / "fresh.npz"
    write_atomically(final, lambda f: f.write(b"x" * 10_000))
    assert final.stat().st_size == 10_000


def test_fsync_of_a_folder_that_cannot_be_opened_is_a_no_op(tmp_path: Path) -> None:
    fsync_dir(tmp_path / "missing")  # no exception
    fsync_dir(tmp_path)
