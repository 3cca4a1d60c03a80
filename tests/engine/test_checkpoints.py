"""Which checkpoint a run resumes from: the newest readable one the caller's records reach."""

from __future__ import annotations

from pathlib import Path

from scaletui.engine.checkpoints import list_checkpoints, load_latest_checkpoint, save_checkpoint
from scaletui.engine.sinks import MemorySink


def saved(folder: Path, *steps: int) -> Path:
    for step in steps:
        save_checkpoint(folder, step, {"step": step})
    return folder


def test_without_a_limit_the_newest_is_used(tmp_path: Path) -> None:
    sink = MemorySink()
    assert load_latest_checkpoint(saved(tmp_path, 20, 40), sink) == {"step": 40}
    assert sink.events == []


def test_a_checkpoint_beyond_the_recorded_steps_is_refused_with_a_reason(tmp_path: Path) -> None:
    sink = MemorySink()
    assert load_latest_checkpoint(saved(tmp_path, 20, 40), sink, max_step=39) == {"step": 20}
    assert sink.events == [("checkpoint", ("step_00000040.pt is beyond the 39 steps this database holds "
                                           "for the run; starting from step 20"))]


def test_nothing_recorded_means_a_fresh_start(tmp_path: Path) -> None:
    sink = MemorySink()
    assert load_latest_checkpoint(saved(tmp_path, 3000, 3500), sink, max_step=0) is None
    assert sink.events == [("checkpoint", ("step_00003000.pt, step_00003500.pt are beyond the 0 steps this "
                                           "database holds for the run; starting from step 0"))]


def test_refused_checkpoints_are_set_aside_so_new_ones_are_kept(tmp_path: Path) -> None:
    """Left in place they would outrank (and make the folder prune) the checkpoints of the new start."""
    load_latest_checkpoint(saved(tmp_path, 3000, 3500), MemorySink(), max_step=0)
    assert list_checkpoints(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00003000.pt.unrecorded",
                                                          "step_00003500.pt.unrecorded"]
    saved(tmp_path, 200, 400)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [200, 400]
    assert load_latest_checkpoint(tmp_path, MemorySink(), max_step=400) == {"step": 400}


def test_a_checkpoint_at_exactly_the_recorded_step_is_used(tmp_path: Path) -> None:
    sink = MemorySink()
    assert load_latest_checkpoint(saved(tmp_path, 20, 40), sink, max_step=40) == {"step": 40}
    assert sink.events == []
