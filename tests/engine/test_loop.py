"""The training loop end to end on tiny MNIST-1D runs: records, endings, checkpoints, resume."""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from scaletui.core.records import RunOutcome
from scaletui.core.specs import DataSpec, EarlyStopping, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import EMA_BETA, RunStatus
from scaletui.engine.checkpoints import list_checkpoints
from scaletui.engine.loop import train_run
from scaletui.engine.optim import lr_at
from scaletui.engine.sinks import MemorySink
from tests.engine.conftest import StopAfter


def tiny_spec(model: dict[str, Any] | None = None, **train: Any) -> RunSpec:
    t: dict[str, Any] = dict(optimizer="adam", lr=3e-3, batch_size=32, steps=25, eval_every=10, log_every=5,
                             checkpoint_every=1000, device="cpu")  # fmt: skip
    t.update(train)
    m: dict[str, Any] = dict(arch="mlp", width=16, depth=2, dropout=0.1, norm="batch")
    m.update(model or {})
    # 256 examples / batch 32 = 8 steps per epoch: runs cross epoch boundaries.
    return RunSpec("test", DataSpec(train_size=256), ModelSpec(**m), TrainSpec(**t), seed=1)


def run(spec: RunSpec, data_dir: Path, ckpt: Path, stop: Any = None, sink: MemorySink | None = None,
        device: torch.device | None = None) -> tuple[RunOutcome, MemorySink]:
    sink = sink if sink is not None else MemorySink()
    outcome = train_run(spec, sink, stop or threading.Event(), data_dir=data_dir, checkpoint_dir=ckpt, device=device)
    return outcome, sink


def steps_of(sink: MemorySink, key: str) -> list[int]:
    return [s for s, _ in sink.series(key)]


def test_records_of_a_tiny_run(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec()
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.DONE and outcome.step == 25 and outcome.error is None
    assert sink.resumed_from == [0] and sink.info is not None
    assert sink.info.layer_names == ("fc1", "fc2", "head")

    assert steps_of(sink, "train_loss") == list(range(1, 26))  # every step, once
    log_steps = [5, 10, 15, 20, 25]
    assert steps_of(sink, "lr") == log_steps
    assert [(r.step, r.layer, r.name) for r in sink.layer_rows] == [
        (s, i, name) for s in log_steps for i, name in enumerate(("fc1", "fc2", "head"))
    ]
    assert all(r.grad_norm > 0 and r.weight_norm > 0 and 0 < r.update_ratio < 1 for r in sink.layer_rows)
    for key in ("test_loss", "test_acc", "train_acc"):
        assert steps_of(sink, key) == [0, 10, 20, 25]

    losses = [v for _, v in sink.series("train_loss")]
    tests = [v for _, v in sink.series("test_loss")]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert outcome.final_train_loss == pytest.approx(sum(losses[-5:]) / 5)
    assert outcome.final_test_loss == tests[-1]
    assert outcome.final_test_acc == sink.series("test_acc")[-1][1]
    assert outcome.best_test_loss == min(tests)
    assert outcome.best_step == [0, 10, 20, 25][tests.index(min(tests))]
    # Debiased EMA over the evaluations after step 0.
    ema = 0.0
    for v in tests[1:]:
        ema = EMA_BETA * ema + (1 - EMA_BETA) * v
    assert outcome.smoothed_test_loss == pytest.approx(ema / (1 - EMA_BETA ** len(tests[1:])))
    assert sink.flushes >= 1 and sink.events == []


def test_lr_rows_follow_the_schedule(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(schedule="linear_warmup_cosine", warmup_steps=10, steps=20, log_every=4, eval_every=100)
    _, sink = run(spec, mnist1d_dir, tmp_path)
    assert sink.series("lr") == [(s, pytest.approx(lr_at(s, spec.train, 3e-3))) for s in (4, 8, 12, 16, 20)]
    assert sink.series("lr")[-1][1] == pytest.approx(0.0, abs=1e-12)


def test_gradient_clipping_bounds_the_update(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(model={"norm": "none", "dropout": 0.0}, optimizer="sgd", lr=0.1, grad_clip=0.01, steps=10)
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.DONE
    for step in (5, 10):
        rows = [r for r in sink.layer_rows if r.step == step]
        assert sum(r.grad_norm**2 for r in rows) > 0.01**2  # raw gradients are reported, before clipping
        update = math.sqrt(sum((r.update_ratio * r.weight_norm) ** 2 for r in rows))
        assert update <= 0.1 * 0.01 * (1 + 1e-4)  # SGD: ||delta W|| = lr * ||clipped g||


def test_huge_learning_rate_diverges(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(model={"norm": "none", "dropout": 0.0}, optimizer="sgd", lr=1e4, steps=200)
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.DIVERGED
    match = re.search(r"(train|test) loss .* at step (\d+)$", outcome.error or "")
    assert match, outcome.error
    assert 1 <= int(match.group(2)) <= outcome.step < 200
    assert steps_of(sink, "train_loss") == list(range(1, outcome.step + 1))  # nothing lost before the end


def test_early_stopping_on_test_loss(mnist1d_dir: Path, tmp_path: Path) -> None:
    # No evaluation can improve the test loss by 10: the first one after step 0 exhausts patience 1.
    spec = tiny_spec(steps=50, early_stopping=EarlyStopping(patience=1, metric="test_loss", min_delta=10.0))
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.EARLY_STOPPED and outcome.step == 10
    assert steps_of(sink, "test_loss") == [0, 10]


def test_early_stopping_on_test_acc_counts_evaluations(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=50, early_stopping=EarlyStopping(patience=2, metric="test_acc", min_delta=1.0))
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.EARLY_STOPPED and outcome.step == 20
    assert steps_of(sink, "test_acc") == [0, 10, 20]


def test_no_early_stopping_when_improving(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=30, early_stopping=EarlyStopping(patience=1, metric="test_loss", min_delta=0.0))
    outcome, _ = run(spec, mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.DONE


class FlushSpy(MemorySink):
    """Notes, at every flush, the last train step recorded and which checkpoints exist."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.seen: list[tuple[int, set[int]]] = []

    def flush(self) -> None:
        super().flush()
        last = max(steps_of(self, "train_loss"), default=0)
        self.seen.append((last, {s for s, _ in list_checkpoints(self.folder)}))


def test_stop_checkpoints_and_resume_matches_uninterrupted(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=30)
    reference, ref_sink = run(spec, mnist1d_dir, tmp_path / "ref")

    ckpt = tmp_path / "ckpt"
    spy = FlushSpy(ckpt)
    first, _ = run(spec, mnist1d_dir, ckpt, stop=StopAfter(12), sink=spy)
    assert first.status is RunStatus.INTERRUPTED and first.step == 12
    assert [s for s, _ in list_checkpoints(ckpt)] == [12]
    assert steps_of(spy, "train_loss") == list(range(1, 13))  # the partial window was sent before stopping
    assert (12, set()) in spy.seen  # flushed with all records before the checkpoint existed

    second, sink2 = run(spec, mnist1d_dir, ckpt)
    assert second.status is RunStatus.DONE and second.step == 30
    assert sink2.resumed_from == [12]
    assert steps_of(sink2, "train_loss") == list(range(13, 31))
    assert steps_of(sink2, "test_loss") == [20, 30]  # no step-0 evaluation on resume

    resumed = spy.series("train_loss") + sink2.series("train_loss")
    for (s1, v1), (s2, v2) in zip(resumed, ref_sink.series("train_loss"), strict=True):
        assert s1 == s2 and v1 == pytest.approx(v2, abs=1e-6)
    for field in ("final_train_loss", "final_test_loss", "final_test_acc", "best_test_loss", "smoothed_test_loss"):
        assert getattr(second, field) == pytest.approx(getattr(reference, field), abs=1e-6), field
    assert second.best_step == reference.best_step


def test_periodic_checkpoints_keep_the_newest_two(mnist1d_dir: Path, tmp_path: Path) -> None:
    outcome, _ = run(tiny_spec(steps=22, checkpoint_every=5), mnist1d_dir, tmp_path)
    assert outcome.status is RunStatus.DONE
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=30, checkpoint_every=5)
    reference, _ = run(spec, mnist1d_dir, tmp_path / "ref")
    ckpt = tmp_path / "ckpt"
    first, _ = run(spec, mnist1d_dir, ckpt, stop=StopAfter(17))
    assert first.status is RunStatus.INTERRUPTED and [s for s, _ in list_checkpoints(ckpt)] == [15, 17]
    newest = ckpt / "step_00000017.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write

    second, sink = run(spec, mnist1d_dir, ckpt)
    assert sink.resumed_from == [15]
    assert len(sink.events) == 1
    kind, message = sink.events[0]
    assert kind == "checkpoint" and "step_00000017.pt" in message and "step_00000015.pt" in message
    assert (ckpt / "step_00000017.pt.corrupt").exists()
    assert second.status is RunStatus.DONE
    assert second.final_train_loss == pytest.approx(reference.final_train_loss, abs=1e-6)
    assert second.final_test_loss == pytest.approx(reference.final_test_loss, abs=1e-6)


def test_all_checkpoints_corrupt_starts_from_scratch(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=12, checkpoint_every=4)
    run(spec, mnist1d_dir, tmp_path, stop=StopAfter(9))
    for _, path in list_checkpoints(tmp_path):
        path.write_bytes(b"not a checkpoint")
    outcome, sink = run(spec, mnist1d_dir, tmp_path)
    assert sink.resumed_from == [0] and len(sink.events) == 2
    assert outcome.status is RunStatus.DONE and steps_of(sink, "train_loss") == list(range(1, 13))


def test_a_checkpoint_beyond_what_the_caller_recorded_is_not_resumed(mnist1d_dir: Path, tmp_path: Path) -> None:
    """The records of steps 11-12 are gone (another database, a lost commit): resume from 10, redo them."""
    spec = tiny_spec(steps=30, checkpoint_every=5)
    reference, ref_sink = run(spec, mnist1d_dir, tmp_path / "ref")
    ckpt = tmp_path / "ckpt"
    run(spec, mnist1d_dir, ckpt, stop=StopAfter(12))
    assert [s for s, _ in list_checkpoints(ckpt)] == [10, 12]

    sink = MemorySink()
    outcome = train_run(spec, sink, threading.Event(), data_dir=mnist1d_dir, checkpoint_dir=ckpt, resume_at_most=11)
    assert sink.resumed_from == [10]
    assert sink.events == [("checkpoint", ("step_00000012.pt is beyond the 11 steps this database holds for the run;"
                                           " starting from step 10"))]
    assert steps_of(sink, "train_loss") == list(range(11, 31))
    assert sink.series("train_loss") == pytest.approx(ref_sink.series("train_loss")[10:], abs=1e-6)
    assert outcome.status is RunStatus.DONE
    assert outcome.final_test_loss == pytest.approx(reference.final_test_loss, abs=1e-6)


def test_nothing_recorded_starts_from_scratch_despite_a_checkpoint(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = tiny_spec(steps=20, checkpoint_every=5)
    run(spec, mnist1d_dir, tmp_path, stop=StopAfter(12))
    sink = MemorySink()
    outcome = train_run(spec, sink, threading.Event(), data_dir=mnist1d_dir, checkpoint_dir=tmp_path, resume_at_most=0)
    assert sink.resumed_from == [0] and [kind for kind, _ in sink.events] == ["checkpoint"]
    assert sink.events[0][1].endswith("beyond the 0 steps this database holds for the run; starting from step 0")
    assert outcome.status is RunStatus.DONE and steps_of(sink, "train_loss") == list(range(1, 21))
    assert steps_of(sink, "test_loss") == [0, 10, 20]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 15]  # the new start's own, not the refused ones


def test_checkpoint_of_another_run_is_not_used(mnist1d_dir: Path, tmp_path: Path) -> None:
    run(tiny_spec(steps=10), mnist1d_dir, tmp_path, stop=StopAfter(3))
    with pytest.raises(ValueError, match="belongs to run"):
        run(tiny_spec(steps=10, lr=1e-2), mnist1d_dir, tmp_path)


class ExplodingSink(MemorySink):
    def layer_stats(self, rows: Any) -> None:
        raise RuntimeError("disk full")


def test_exceptions_propagate_after_a_flush(mnist1d_dir: Path, tmp_path: Path) -> None:
    sink = ExplodingSink()
    with pytest.raises(RuntimeError, match="disk full"):
        run(tiny_spec(), mnist1d_dir, tmp_path, sink=sink)
    assert sink.flushes == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_matches_uninterrupted(mnist1d_dir: Path, tmp_path: Path) -> None:
    """The same guarantees on a GPU: CUDA RNG state (dropout) and device-side sampler survive a checkpoint."""
    cuda = torch.device("cuda")
    spec = tiny_spec(steps=30)
    reference, ref_sink = run(spec, mnist1d_dir, tmp_path / "ref", device=cuda)
    first, sink1 = run(spec, mnist1d_dir, tmp_path / "ckpt", stop=StopAfter(12), device=cuda)
    assert first.status is RunStatus.INTERRUPTED
    second, sink2 = run(spec, mnist1d_dir, tmp_path / "ckpt", device=cuda)
    assert second.status is RunStatus.DONE and sink2.resumed_from == [12]
    resumed = [v for _, v in sink1.series("train_loss") + sink2.series("train_loss")]
    assert resumed == pytest.approx([v for _, v in ref_sink.series("train_loss")], abs=1e-6)
    assert second.final_test_loss == pytest.approx(reference.final_test_loss, abs=1e-6)
