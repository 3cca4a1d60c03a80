"""The stacked optimizer against PyTorch's own, member by member, on both of its paths: the fused kernel
(every member at the same learning rate, weight decay and step) and the per-member arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaletui.core.specs import TrainSpec
from scaletui.core.vocabulary import Optimizer
from scaletui.engine.optim import build_optimizer
from scaletui.engine.stacked import FlatParams, parameter_slots
from scaletui.engine.stacked_optim import MemberOptState, StackedOptimizer

MEMBERS, STEPS = 3, 6


def _template() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _members() -> list[nn.Module]:
    out = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        out.append(_template())
    return out


def _flat(modules: list[nn.Module]) -> FlatParams:
    rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in modules]
    return FlatParams(parameter_slots(modules[0]), torch.stack(rows).contiguous())


def _grads(step: int) -> list[torch.Tensor]:
    """Each member's flat gradient at `step`: fixed random draws, different per member."""
    g = torch.Generator().manual_seed(100 + step)
    size = sum(p.numel() for p in _template().parameters())
    return [torch.randn(size, generator=g) for _ in range(MEMBERS)]


def _alone(module: nn.Module, kind: str, lr: float, wd: float, grads: list[torch.Tensor]) -> torch.Tensor:
    """The member trained alone by the torch optimizer optim.py builds, fed the same gradients."""
    optimizer = build_optimizer(module.parameters(), TrainSpec(optimizer=kind, lr=lr, weight_decay=wd), lr)
    for flat in grads:
        offset = 0
        for p in module.parameters():
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("kind", [Optimizer.ADAM.value, Optimizer.ADAMW.value])
@pytest.mark.parametrize(("lrs", "wds"), [([1e-2] * MEMBERS, [0.1] * MEMBERS),  # one plan: the fused kernel
                                         ([1e-2, 3e-3, 2e-2], [0.1, 0.0, 0.3])])  # each its own: per member
def test_every_member_matches_its_own_torch_optimizer(kind: str, lrs: list[float], wds: list[float]) -> None:
    modules = _members()
    params = _flat(modules)
    states = [MemberOptState(0, {"exp_avg": torch.zeros(params.data.shape[1]),
                                 "exp_avg_sq": torch.zeros(params.data.shape[1])}) for _ in range(MEMBERS)]
    optimizer = StackedOptimizer(kind, params, states, wds, {"betas": (0.9, 0.999), "eps": 1e-8})
    history = [_grads(step) for step in range(STEPS)]
    for grads in history:
        params.grad.copy_(torch.stack(grads))
        optimizer.step(lrs)
        assert torch.equal(params.grad, torch.stack(grads)), "the optimizer must leave the gradient as it is"
    for m, module in enumerate(modules):
        want = _alone(module, kind, lrs[m], wds[m], [grads[m] for grads in history])
        torch.testing.assert_close(params.data[m], want, rtol=1e-5, atol=1e-7)


def test_the_fused_path_is_taken_only_when_every_member_has_the_same_plan_and_step() -> None:
    params = _flat(_members())
    states = [MemberOptState(s, {"exp_avg": torch.zeros(params.data.shape[1]),
                                 "exp_avg_sq": torch.zeros(params.data.shape[1])}) for s in (4, 4, 7)]
    optimizer = StackedOptimizer(Optimizer.ADAMW.value, params, states, [0.1] * MEMBERS, {})
    taken: list[int] = []
    optimizer._fused_adam = lambda lr, wd, step: taken.append(step)  # type: ignore[method-assign]
    params.grad.normal_()
    optimizer.step([1e-2] * MEMBERS)  # steps 5, 5, 8: not one step count
    assert taken == []
    optimizer.steps = [9, 9, 9]
    optimizer.step([1e-2] * MEMBERS)
    assert taken == [10]
    optimizer.step([1e-2, 1e-2, 0.0])  # a member at another rate
    assert taken == [10]
