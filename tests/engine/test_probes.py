"""Per-layer norms from the fused probe against the same quantities computed directly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scaletui.core.specs import ModelSpec
from scaletui.engine.models import build_model, weight_layers
from scaletui.engine.probes import LayerProbe


def _layer_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


@pytest.mark.parametrize("grads_will_change", [True, False])
def test_probe_matches_direct_computation(grads_will_change: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="mlp", width=8, depth=2, norm="layer"), (5,), 3)
    layers = weight_layers(model)
    probe = LayerProbe(layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(16, 5)), torch.randint(0, 3, (16,))).backward()
    before = [[p.detach().clone() for p in m.parameters()] for _, m in layers]
    grads = [[p.grad.clone() for p in m.parameters()] for _, m in layers]
    probe.before_step(grads_will_change=grads_will_change)
    opt.step()
    out = probe.after_step()
    assert len(out) == probe.num_values == 3 * 6 and all(t.dim() == 0 for t in out)
    stats = probe.layer_stats(7, torch.stack(out).tolist())
    assert [s.name for s in stats] == ["fc1", "fc2", "head"] and [s.layer for s in stats] == [0, 1, 2]
    for s, (_, m), w0, g in zip(stats, layers, before, grads, strict=True):
        after = [p.detach() for p in m.parameters()]  # weight and bias: a layer owns both
        assert s.step == 7 and s.nonfinite == 0
        assert s.grad_norm == pytest.approx(_layer_norm(g), rel=1e-5)
        assert s.weight_norm == pytest.approx(_layer_norm(after), rel=1e-5)
        delta = _layer_norm([a - b for a, b in zip(after, w0, strict=True)])
        assert s.update_ratio == pytest.approx(delta / _layer_norm(after), rel=1e-4)
        assert s.update_ratio > 0


def test_nonfinite_gradients_are_counted_only_where_they_are() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    probe = LayerProbe(weight_layers(model))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[1].weight.grad[0, :3] = float("nan")
    model[1].bias.grad[1] = float("inf")
    probe.before_step()
    stats = probe.layer_stats(1, torch.stack(probe.after_step()).tolist())
    assert stats[0].nonfinite == 0 and math.isfinite(stats[0].grad_norm)
    assert stats[1].nonfinite == 4 and not math.isfinite(stats[1].grad_norm)
    assert stats[1].update_ratio == 0.0  # no optimizer step happened: delta W = 0


def test_missing_grads_and_frozen_zero_layers() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False))
    nn.init.zeros_(model[0].weight)
    probe = LayerProbe(weight_layers(model))
    probe.before_step()
    (stat,) = probe.layer_stats(1, torch.stack(probe.after_step()).tolist())
    assert (stat.grad_norm, stat.weight_norm, stat.update_ratio, stat.nonfinite) == (0.0, 0.0, 0.0, 0)


def test_after_step_needs_before_step() -> None:
    probe = LayerProbe(weight_layers(nn.Sequential(nn.Linear(2, 2))))
    with pytest.raises(RuntimeError):
        probe.after_step()


def test_huge_norms_overflow_to_inf_instead_of_raising() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    probe = LayerProbe(weight_layers(model))
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # finite gradients: a norm that overflowed has no NaN/Inf values
    (stat,) = probe.layer_stats(3, [1e200, 1e200, 1.0, 1.0, 0.0, 0.0])
    assert stat.grad_norm == math.inf and stat.nonfinite == 0 and stat.weight_norm == pytest.approx(math.sqrt(2))
