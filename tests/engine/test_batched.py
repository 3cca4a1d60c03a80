"""Batched training: every member of a bundle behaves as the same run trained alone.

Tolerance. A member and the same run alone do the same arithmetic in a different order: batched
matmuls (`baddbmm` over (M, ...) weights) instead of `addmm`, LayerNorm's affine as its own op, the
loss reduced per member, the stacked Adam where members' rates differ, per-member norms as
segment sums. Measured over these 60-step runs the losses agree to ~1e-6; the tests allow 1e-4
(relative, 1e-5 absolute) on every train loss, evaluation and final loss, and 1e-3 on the per-layer
statistics (norms of float32 tensors summed in another order). Everything structural (initial
values, dropout masks on a CPU, batch order, which steps are recorded, layer names and indices,
statuses, the steps where runs end) must be exactly the same.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from scaletui.core.records import RunOutcome
from scaletui.core.specs import DataSpec, EarlyStopping, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.engine.batched import Member, train_bundle
from scaletui.engine.bundles import bundle_key, check_bundle
from scaletui.engine.checkpoints import list_checkpoints
from scaletui.engine.loop import CHECKPOINT_KEYS, train_run
from scaletui.engine.sinks import MemorySink
from tests.engine.conftest import StopAfter

REL, ABS = 1e-4, 1e-5  # losses (see the module docstring)
STATS_REL = 1e-3  # per-layer norms


def spec_of(seed: int = 0, model: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
            **train: Any) -> RunSpec:
    t: dict[str, Any] = dict(optimizer="adam", lr=3e-3, batch_size=32, steps=60, eval_every=20, log_every=10,
                             checkpoint_every=1000, device="cpu")  # fmt: skip
    t.update(train)
    m: dict[str, Any] = dict(arch="mlp", width=16, depth=2, dropout=0.0, norm="none")
    m.update(model or {})
    # 256 examples / batch 32 = 8 steps per epoch: runs cross epoch boundaries.
    return RunSpec("test", DataSpec(**{"train_size": 256, **(data or {})}), ModelSpec(**m), TrainSpec(**t), seed=seed)


def alone(spec: RunSpec, data_dir: Path, ckpt: Path, stop: Any = None) -> tuple[RunOutcome, MemorySink]:
    sink = MemorySink()
    outcome = train_run(spec, sink, stop or threading.Event(), data_dir=data_dir, checkpoint_dir=ckpt / spec.key)
    return outcome, sink


def together(specs: Sequence[RunSpec], data_dir: Path, ckpt: Path, stops: Sequence[Any] | None = None
             ) -> tuple[list[RunOutcome], list[MemorySink], list[tuple[int, RunOutcome]]]:
    sinks = [MemorySink() for _ in specs]
    stops = stops or [threading.Event() for _ in specs]
    members = [Member(spec, sink, stop, ckpt / spec.key) for spec, sink, stop in zip(specs, sinks, stops, strict=True)]
    reported: list[tuple[int, RunOutcome]] = []
    outcomes = train_bundle(members, data_dir=data_dir, on_finished=lambda i, o: reported.append((i, o)))
    return outcomes, sinks, reported


def assert_same_run(a: tuple[RunOutcome, MemorySink], b: tuple[RunOutcome, MemorySink]) -> None:
    """Same records at the same steps, same layers, same ending; values within the stated tolerance."""
    (out_a, sink_a), (out_b, sink_b) = a, b
    assert (out_b.status, out_b.step, out_b.best_step) == (out_a.status, out_a.step, out_a.best_step)
    assert [(r.step, r.key) for r in sink_b.metric_rows] == [(r.step, r.key) for r in sink_a.metric_rows]
    for ra, rb in zip(sink_a.metric_rows, sink_b.metric_rows, strict=True):
        assert rb.value == pytest.approx(ra.value, rel=REL, abs=ABS), (ra.step, ra.key)
    assert [(r.step, r.layer, r.name, r.nonfinite) for r in sink_b.layer_rows] == \
        [(r.step, r.layer, r.name, r.nonfinite) for r in sink_a.layer_rows]
    for ra, rb in zip(sink_a.layer_rows, sink_b.layer_rows, strict=True):
        for field in ("grad_norm", "weight_norm", "update_ratio"):
            assert getattr(rb, field) == pytest.approx(getattr(ra, field), rel=STATS_REL, abs=1e-7), (ra.step, field)
    for field in ("final_train_loss", "final_test_loss", "final_test_acc", "best_test_loss", "smoothed_test_loss"):
        assert getattr(out_b, field) == pytest.approx(getattr(out_a, field), rel=REL, abs=ABS), field
    assert sink_b.info == sink_a.info and sink_b.resumed_from == sink_a.resumed_from
    assert sink_b.events == sink_a.events


# --------------------------------------------------------------------------- equivalence


CASES = {
    "mlp-plain-sgd": ({"arch": "mlp"}, {"optimizer": "sgd", "lr": 0.05}),
    "mlp-batchnorm-dropout-momentum": ({"arch": "mlp", "norm": "batch", "dropout": 0.2, "init": "he"},
                                       {"optimizer": "momentum", "lr": 0.02, "weight_decay": 1e-3}),
    "mlp-layernorm-adam-l2": ({"arch": "mlp", "norm": "layer", "depth": 3, "init": "xavier"},
                              {"optimizer": "adam", "weight_decay": 1e-2}),
    "resmlp-layernorm-dropout-adamw-clip-cosine": (
        {"arch": "resmlp", "norm": "layer", "dropout": 0.1, "init": "he"},
        {"optimizer": "adamw", "weight_decay": 0.3, "grad_clip": 0.5, "schedule": "linear_warmup_cosine",
         "warmup_steps": 10}),
    "resmlp-batchnorm-adam": ({"arch": "resmlp", "norm": "batch", "dropout": 0.1, "init": "orthogonal"},
                              {"optimizer": "adam"}),
    "resmlp-plain-momentum-clip": ({"arch": "resmlp", "depth": 3}, {"optimizer": "momentum", "lr": 0.01,
                                                                     "grad_clip": 1.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_member_matches_the_same_run_trained_alone(mnist1d_dir: Path, tmp_path: Path, case: str) -> None:
    model, train = CASES[case]
    specs = [spec_of(seed, model, **train) for seed in (0, 1, 2)]
    outcomes, sinks, reported = together(specs, mnist1d_dir, tmp_path / "bundle")
    assert sorted(i for i, _ in reported) == [0, 1, 2]
    for spec, outcome, sink in zip(specs, outcomes, sinks, strict=True):
        assert outcome.status is RunStatus.DONE
        assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcome, sink))
    finals = [o.final_train_loss for o in outcomes]
    assert len(set(finals)) == 3, "members with different seeds must not train alike"


def test_members_with_their_own_learning_rate_and_weight_decay(mnist1d_dir: Path, tmp_path: Path) -> None:
    model = {"arch": "resmlp", "norm": "layer"}
    specs = [spec_of(0, model, optimizer="adamw", lr=1e-3, weight_decay=0.0),
             spec_of(1, model, optimizer="adamw", lr=1e-2, weight_decay=0.5)]
    assert len({bundle_key(s) for s in specs}) == 1
    outcomes, sinks, _ = together(specs, mnist1d_dir, tmp_path / "bundle")
    for spec, outcome, sink in zip(specs, outcomes, sinks, strict=True):
        assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcome, sink))
    for optimizer in ("sgd", "momentum", "adam"):
        pair = [spec_of(0, optimizer=optimizer, lr=0.02, weight_decay=0.0),
                spec_of(0, optimizer=optimizer, lr=0.005, weight_decay=0.05)]
        outcomes, sinks, _ = together(pair, mnist1d_dir, tmp_path / optimizer)
        for spec, outcome, sink in zip(pair, outcomes, sinks, strict=True):
            assert_same_run(alone(spec, mnist1d_dir, tmp_path / f"alone-{optimizer}"), (outcome, sink))


def test_label_noise_is_each_members_own(mnist1d_dir: Path, tmp_path: Path) -> None:
    specs = [spec_of(seed, data={"label_noise": 0.3}) for seed in (3, 4)]
    outcomes, sinks, _ = together(specs, mnist1d_dir, tmp_path / "bundle")
    for spec, outcome, sink in zip(specs, outcomes, sinks, strict=True):
        assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcome, sink))


def test_one_member_alone_in_a_bundle_is_the_same_run(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = spec_of(5, {"arch": "resmlp", "norm": "batch", "dropout": 0.3})
    outcomes, sinks, _ = together([spec], mnist1d_dir, tmp_path / "bundle")
    assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcomes[0], sinks[0]))


# --------------------------------------------------------------------------- members end on their own


def test_a_diverging_member_leaves_and_the_others_finish(mnist1d_dir: Path, tmp_path: Path) -> None:
    specs = [spec_of(0, optimizer="sgd", lr=0.05, steps=200), spec_of(0, optimizer="sgd", lr=1e4, steps=200),
             spec_of(1, optimizer="sgd", lr=0.05, steps=200)]
    outcomes, sinks, reported = together(specs, mnist1d_dir, tmp_path / "bundle")
    assert [o.status for o in outcomes] == [RunStatus.DONE, RunStatus.DIVERGED, RunStatus.DONE]
    assert reported[0][0] == 1, "the diverged member is reported when it leaves, before the others end"
    diverged = alone(specs[1], mnist1d_dir, tmp_path / "alone")
    assert diverged[0].status is RunStatus.DIVERGED and outcomes[1].step == diverged[0].step
    assert [r.step for r in sinks[1].metric_rows if r.key == "train_loss"] == list(range(1, outcomes[1].step + 1))
    for i in (0, 2):
        assert_same_run(alone(specs[i], mnist1d_dir, tmp_path / "alone"), (outcomes[i], sinks[i]))


def test_a_member_stops_early_while_the_others_go_on(mnist1d_dir: Path, tmp_path: Path) -> None:
    # lr 1e-6 barely moves: no evaluation improves the test loss by 0.05, so patience 2 ends it at step 40.
    rule = EarlyStopping(patience=2, metric="test_loss", min_delta=0.05)
    specs = [spec_of(0, lr=1e-6, early_stopping=rule), spec_of(0, lr=1e-2, early_stopping=rule)]
    outcomes, sinks, _ = together(specs, mnist1d_dir, tmp_path / "bundle")
    assert outcomes[0].status is RunStatus.EARLY_STOPPED and outcomes[0].step == 40
    for spec, outcome, sink in zip(specs, outcomes, sinks, strict=True):
        assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcome, sink))


def test_stopping_one_member_checkpoints_it_and_it_resumes_alone(mnist1d_dir: Path, tmp_path: Path) -> None:
    """A member stopped on its own (the app's `k`) writes a checkpoint in the unbatched format: the same
    run resumed by the unbatched loop ends exactly where it would have without the stop."""
    specs = [spec_of(seed, {"arch": "resmlp", "norm": "layer", "dropout": 0.1}, optimizer="adamw",
                     weight_decay=0.1, checkpoint_every=10) for seed in (0, 1)]
    ckpt = tmp_path / "bundle"
    outcomes, sinks, _ = together(specs, mnist1d_dir, ckpt, stops=[threading.Event(), StopAfter(25)])
    assert [o.status for o in outcomes] == [RunStatus.DONE, RunStatus.INTERRUPTED] and outcomes[1].step == 25
    assert [s for s, _ in list_checkpoints(ckpt / specs[1].key)] == [20, 25]
    assert [r.step for r in sinks[1].metric_rows if r.key == "train_loss"] == list(range(1, 26))

    reference = alone(specs[1], mnist1d_dir, tmp_path / "alone")
    resumed, sink = alone(specs[1], mnist1d_dir, ckpt)
    assert sink.resumed_from == [25] and resumed.status is RunStatus.DONE
    before = [r for r in sinks[1].metric_rows]
    merged = MemorySink(info=sink.info, resumed_from=[0], metric_rows=before + sink.metric_rows,
                        layer_rows=sinks[1].layer_rows + sink.layer_rows)
    assert_same_run(reference, (resumed, merged))
    assert_same_run(alone(specs[0], mnist1d_dir, tmp_path / "alone"), (outcomes[0], sinks[0]))


def test_a_bundle_resumes_members_that_stopped_at_different_steps(mnist1d_dir: Path, tmp_path: Path) -> None:
    """One member has an unbatched checkpoint at step 30, the other starts fresh: the fresh one trains
    until step 30, where the other joins; both end as if never interrupted."""
    model = {"arch": "mlp", "norm": "batch", "dropout": 0.1}
    specs = [spec_of(0, model, optimizer="momentum", lr=0.02), spec_of(1, model, optimizer="momentum", lr=0.02)]
    ckpt = tmp_path / "ckpt"
    first, first_sink = alone(specs[0], mnist1d_dir, ckpt, stop=StopAfter(30))
    assert first.status is RunStatus.INTERRUPTED and first.step == 30

    outcomes, sinks, _ = together(specs, mnist1d_dir, ckpt)
    assert [o.status for o in outcomes] == [RunStatus.DONE, RunStatus.DONE]
    assert sinks[0].resumed_from == [30] and sinks[1].resumed_from == [0]
    merged = MemorySink(info=sinks[0].info, resumed_from=[0], metric_rows=first_sink.metric_rows + sinks[0].metric_rows,
                        layer_rows=first_sink.layer_rows + sinks[0].layer_rows)
    assert_same_run(alone(specs[0], mnist1d_dir, tmp_path / "alone"), (outcomes[0], merged))
    assert_same_run(alone(specs[1], mnist1d_dir, tmp_path / "alone"), (outcomes[1], sinks[1]))


def test_a_stop_of_the_whole_bundle_checkpoints_every_member(mnist1d_dir: Path, tmp_path: Path) -> None:
    specs = [spec_of(seed) for seed in (0, 1, 2)]
    stop = threading.Event()
    stop.set()
    outcomes, sinks, _ = together(specs, mnist1d_dir, tmp_path, stops=[stop] * 3)
    assert [(o.status, o.step) for o in outcomes] == [(RunStatus.INTERRUPTED, 0)] * 3
    assert all([s for s, _ in list_checkpoints(tmp_path / spec.key)] == [0] for spec in specs)
    assert all([r.step for r in sink.metric_rows] == [0, 0, 0] for sink in sinks)  # the step-0 evaluation only


# --------------------------------------------------------------------------- checkpoints and host syncs


def test_a_members_checkpoint_has_the_unbatched_format(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = spec_of(0, {"arch": "resmlp", "norm": "batch", "dropout": 0.1}, optimizer="adamw", weight_decay=0.1)
    alone(spec, mnist1d_dir, tmp_path / "alone", stop=StopAfter(12))
    together([spec, spec_of(1, {"arch": "resmlp", "norm": "batch", "dropout": 0.1}, optimizer="adamw",
                            weight_decay=0.1)], mnist1d_dir, tmp_path / "bundle", stops=[StopAfter(12), StopAfter(12)])
    a = torch.load(tmp_path / "alone" / spec.key / "step_00000012.pt", weights_only=True)
    b = torch.load(tmp_path / "bundle" / spec.key / "step_00000012.pt", weights_only=True)
    assert list(b) == list(a) and set(CHECKPOINT_KEYS) <= set(b)
    def layout(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Size, torch.dtype, int]]:
        """Names, shapes, dtypes and stored bytes: a view of the whole stack would store all of it."""
        return [(k, v.shape, v.dtype, v.untyped_storage().nbytes()) for k, v in tensors.items()]

    assert layout(b["model"]) == layout(a["model"])
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert list(state_b) == list(state_a)
    for i in state_a:
        assert layout(state_b[i]) == layout(state_a[i])
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]
    assert b["torch_rng"].shape == a["torch_rng"].shape and b["cuda_rng"] is None
    assert b["sampler"]["pos"] == a["sampler"]["pos"] and torch.equal(b["sampler"]["perm"], a["sampler"]["perm"])
    assert torch.equal(b["torch_rng"], a["torch_rng"]), "the same dropout draws as alone, to the last one"


def test_one_host_transfer_per_logging_step_for_the_whole_bundle(mnist1d_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.Tensor.tolist

    def counting(self: torch.Tensor) -> Any:
        calls.append(tuple(self.shape))
        return real(self)

    specs = [spec_of(seed, steps=40, eval_every=40, log_every=5) for seed in range(4)]
    together(specs[:1], mnist1d_dir, tmp_path / "warm")  # datasets and fused-kernel checks happen once
    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    together(specs, mnist1d_dir, tmp_path / "bundle")
    # 8 logging steps (5..40) + 2 evaluations (steps 0 and 40), whatever the number of members
    assert len(calls) == 10, calls


# --------------------------------------------------------------------------- what may be bundled


def test_bundle_keys_group_runs_that_differ_only_in_seed_lr_and_weight_decay() -> None:
    base = spec_of(0)
    assert bundle_key(base) == bundle_key(spec_of(7, lr=0.1, weight_decay=0.3))
    assert bundle_key(base) != bundle_key(spec_of(0, {"width": 32}))
    assert bundle_key(base) != bundle_key(spec_of(0, optimizer="sgd"))
    assert bundle_key(base) != bundle_key(spec_of(0, momentum=0.5))
    assert bundle_key(base) != bundle_key(spec_of(0, device="cuda"))
    resnet = RunSpec("test", DataSpec(dataset="cifar10"), ModelSpec(arch="resnet", width=8, depth=1), TrainSpec())
    assert bundle_key(resnet) is None


def test_bundles_that_cannot_be_trained_as_one_are_refused() -> None:
    with pytest.raises(ValueError, match="may differ only in"):
        check_bundle([spec_of(0), spec_of(1, {"depth": 3})])
    with pytest.raises(ValueError, match="not trained in bundles"):
        check_bundle([RunSpec("t", DataSpec(dataset="cifar10"), ModelSpec(arch="resnet"), TrainSpec())])
    with pytest.raises(ValueError, match="each run once"):
        check_bundle([spec_of(0), spec_of(0)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_members_match_alone_on_cuda(mnist1d_dir: Path, tmp_path: Path) -> None:
    """On a GPU (no dropout: CUDA's fused dropout draws another stream than a member's generator)."""
    specs = [spec_of(seed, {"arch": "resmlp", "norm": "layer"}, optimizer="adamw", weight_decay=0.1, grad_clip=1.0,
                     device="cuda") for seed in (0, 1)]
    outcomes, sinks, _ = together(specs, mnist1d_dir, tmp_path / "bundle")
    for spec, outcome, sink in zip(specs, outcomes, sinks, strict=True):
        assert_same_run(alone(spec, mnist1d_dir, tmp_path / "alone"), (outcome, sink))
