"""Checkpoint files: atomic to write, safe to load, tolerant of a torn newest file.

A worker can be killed at any instant, so a checkpoint is written to a temporary
file in the same folder, fsynced, then renamed over its final name (core/files.py): a reader
sees the old file or the new one, never half of one. Files are loaded with
`torch.load(weights_only=True)`, so everything in a checkpoint is a tensor, a
plain number, a string or a dict/list of those (generator states are uint8
tensors). The newest two are kept: if the newest is unreadable anyway (a disk
that lied about fsync, a truncated copy), the previous one is used and the bad
file is renamed aside, with an event saying so. A process killed mid-write leaves
its temporary file behind; the next load of that run's folder deletes it.

A checkpoint stands for records as well as weights: resuming at step S means the
caller already holds the records of steps 1..S. So the caller may say how far its
records reach (`max_step`); a newer checkpoint would leave a gap, and is renamed
aside (`*.unrecorded`, which also stops it outranking the checkpoints of the new
start when old ones are pruned) with an event saying why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from scaletui.core.files import write_atomically
from scaletui.core.records import Sink

KEEP = 2
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_TEMPORARY = re.compile(r"^\.step_\d{8}\.pt\..*\.tmp$")  # core.files.write_atomically's temporary names


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found)


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any]) -> Path:
    """Write `payload` as step_{step:08d}.pt atomically and keep only the newest KEEP checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    write_atomically(final, lambda f: torch.save(payload, f))
    for _, old in list_checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return final


def load_latest_checkpoint(
    folder: Path, sink: Sink, required: tuple[str, ...] = (), max_step: int | None = None
) -> dict[str, Any] | None:
    """The newest readable checkpoint in `folder` at or before `max_step` (None: start from scratch).

    Checkpoints past `max_step` are renamed to `*.unrecorded` and reported with one
    `sink.event("checkpoint", ...)`. An unreadable file, or one missing a `required` key,
    is renamed to `*.corrupt` and reported the same way; the previous one is tried next.
    """
    _remove_torn_writes(folder)
    candidates = list_checkpoints(folder)
    beyond = [] if max_step is None else [path for step, path in candidates if step > max_step]
    payload = _newest_readable([c for c in candidates if c[1] not in beyond], sink, required)
    if max_step is not None and beyond:
        _set_aside_unrecorded(beyond, max_step, int(payload["step"]) if payload else 0, sink)
    return payload


def _newest_readable(
    candidates: list[tuple[int, Path]], sink: Sink, required: tuple[str, ...]
) -> dict[str, Any] | None:
    for i in range(len(candidates) - 1, -1, -1):
        _, path = candidates[i]
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            _check_payload(payload, required)
            return payload
        except Exception as exc:  # truncated zip, bad pickle, wrong contents: all mean "unusable"
            fallback = candidates[i - 1][1].name if i > 0 else "a fresh start"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            sink.event("checkpoint", f"{path.name} unreadable ({type(exc).__name__}: {reason}); using {fallback}")
            os.replace(path, path.with_name(path.name + ".corrupt"))
    return None


def _set_aside_unrecorded(paths: list[Path], max_step: int, start: int, sink: Sink) -> None:
    """Rename checkpoints past the caller's records aside and say which step the run starts from instead."""
    names = ", ".join(path.name for path in paths)
    verb = "is" if len(paths) == 1 else "are"
    sink.event("checkpoint", f"{names} {verb} beyond the {max_step} steps this database holds for the run; "
                             f"starting from step {start}")
    for path in paths:
        os.replace(path, path.with_name(path.name + ".unrecorded"))


def _remove_torn_writes(folder: Path) -> None:
    """Delete temporary files of writes that never finished (only the run's own worker loads its folder,
    before it saves anything, so none of these can still be in progress)."""
    folder = Path(folder)
    if folder.is_dir():
        for name in os.listdir(folder):
            if _TEMPORARY.match(name):
                (folder / name).unlink(missing_ok=True)


def _check_payload(payload: Any, required: tuple[str, ...]) -> None:
    if not isinstance(payload, dict):
        raise ValueError(f"expected a dict, got {type(payload).__name__}")
    missing = [k for k in required if k not in payload]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
