"""Optimizer construction (fused where possible) and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from scaletui.core.specs import TrainSpec
from scaletui.engine.optim import build_optimizer, lr_at


def test_constant() -> None:
    spec = TrainSpec(schedule="constant", steps=100)
    assert [lr_at(s, spec, 0.1) for s in (0, 1, 50, 100)] == [0.1] * 4


def test_cosine_known_points() -> None:
    spec = TrainSpec(schedule="cosine", steps=100)
    assert lr_at(0, spec, 0.1) == pytest.approx(0.1)
    assert lr_at(50, spec, 0.1) == pytest.approx(0.05)
    assert lr_at(25, spec, 0.1) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(100, spec, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(150, spec, 0.1) == pytest.approx(0.0, abs=1e-12)  # clamped past the end


def test_linear_warmup_cosine_known_points() -> None:
    spec = TrainSpec(schedule="linear_warmup_cosine", steps=110, warmup_steps=10)
    assert lr_at(0, spec, 1.0) == 0.0
    assert lr_at(1, spec, 1.0) == pytest.approx(0.1)
    assert lr_at(5, spec, 1.0) == pytest.approx(0.5)
    assert lr_at(10, spec, 1.0) == pytest.approx(1.0)
    assert lr_at(60, spec, 1.0) == pytest.approx(0.5)  # half way through the cosine part
    assert lr_at(110, spec, 1.0) == pytest.approx(0.0, abs=1e-12)
    rates = [lr_at(s, spec, 1.0) for s in range(111)]
    assert max(rates) == pytest.approx(1.0) and rates.index(max(rates)) == 10


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="schedule"):
        lr_at(1, TrainSpec(schedule="step"), 0.1)


@pytest.mark.parametrize(
    ("name", "cls", "momentum"),
    [("sgd", torch.optim.SGD, 0.0), ("momentum", torch.optim.SGD, 0.8), ("adam", torch.optim.Adam, None),
     ("adamw", torch.optim.AdamW, None)],
)
def test_build_optimizer(name: str, cls: type, momentum: float | None) -> None:
    params = [torch.nn.Parameter(torch.ones(4))]
    opt = build_optimizer(iter(params), TrainSpec(optimizer=name, momentum=0.8, weight_decay=0.01), lr=0.5)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.5 and group["weight_decay"] == 0.01
    assert group["fused"] is True  # CPU float32 has fused kernels
    if momentum is not None:
        assert group["momentum"] == momentum and group["nesterov"] is False
    params[0].grad = torch.ones(4)
    opt.step()
    assert bool((params[0] < 1).all())


def test_fused_falls_back_where_unsupported() -> None:
    """PyTorch accepts fused=True for complex parameters but fails at step(); we must not pick it."""
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))]
    opt = build_optimizer(params, TrainSpec(optimizer="adam"), lr=0.1)
    assert not opt.param_groups[0]["fused"]
    params[0].grad = torch.ones(3, dtype=torch.complex64)
    opt.step()


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], TrainSpec(optimizer="lion"), lr=0.1)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_step_leaves_gradients_untouched(name: str) -> None:
    """LayerProbe reads gradient norms after optimizer.step() when nothing clips them."""
    params = [torch.nn.Parameter(torch.randn(6))]
    opt = build_optimizer(params, TrainSpec(optimizer=name, weight_decay=0.1), lr=0.1)
    for _ in range(3):
        params[0].grad = torch.randn(6)
        before = params[0].grad.clone()
        opt.step()
        assert torch.equal(params[0].grad, before)
