"""Model families: every combination builds and runs, and sizes match hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scaletui.core.specs import ModelSpec, TrainSpec
from scaletui.core.vocabulary import Arch, Init, Norm
from scaletui.engine.models import (
    DROPOUT_LEVELS,
    Dropout,
    build_model,
    count_params,
    dropout_factors,
    forward_flops,
    model_info,
    weight_layers,
)

VECTOR = (40,)
IMAGE = (3, 8, 8)


@pytest.mark.parametrize("init", Init.choices())
@pytest.mark.parametrize("norm", Norm.choices())
@pytest.mark.parametrize("arch", Arch.choices())
def test_every_model_builds_and_runs(arch: str, norm: str, init: str) -> None:
    torch.manual_seed(0)
    shape = IMAGE if arch == "resnet" else VECTOR
    spec = ModelSpec(arch=arch, width=4 if arch == "resnet" else 16, depth=2, dropout=0.1, init=init, norm=norm)
    model = build_model(spec, shape, num_classes=7)
    x = torch.randn(5, *shape)
    out = model(x)
    assert out.shape == (5, 7) and bool(torch.isfinite(out).all())
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x[:1]).shape == (1, 7)


def test_mlp_param_count_by_hand() -> None:
    # 40 -> 16 -> 16 -> 10 with biases: (40*16+16) + (16*16+16) + (16*10+10)
    plain = build_model(ModelSpec(arch="mlp", width=16, depth=2), VECTOR, 10)
    assert count_params(plain) == 656 + 272 + 170 == 1098
    # LayerNorm / BatchNorm1d add a scale and a shift per hidden unit per layer.
    for norm in ("layer", "batch"):
        assert count_params(build_model(ModelSpec(width=16, depth=2, norm=norm), VECTOR, 10)) == 1098 + 2 * 2 * 16


def test_resmlp_param_count_by_hand() -> None:
    # stem 40*16+16, two blocks of 16*16+16, head 16*10+10
    model = build_model(ModelSpec(arch="resmlp", width=16, depth=2), VECTOR, 10)
    assert count_params(model) == 656 + 2 * 272 + 170 == 1370
    assert count_params(build_model(ModelSpec(arch="resmlp", width=16, depth=2, norm="layer"), VECTOR, 10)) == 1434


def test_layer_names_in_depth_order() -> None:
    mlp = build_model(ModelSpec(arch="mlp", width=8, depth=3, norm="batch", dropout=0.1), VECTOR, 10)
    assert [n for n, _ in weight_layers(mlp)] == ["fc1", "fc2", "fc3", "head"]
    resmlp = build_model(ModelSpec(arch="resmlp", width=8, depth=2), VECTOR, 10)
    assert [n for n, _ in weight_layers(resmlp)] == ["stem", "blocks.0.fc", "blocks.1.fc", "head"]
    # Input side first: each layer's input size is the previous layer's output size.
    sizes = [(m.in_features, m.out_features) for _, m in weight_layers(mlp)]
    assert sizes == [(40, 8), (8, 8), (8, 8), (8, 10)]


def test_mlp_forward_flops_is_two_per_multiply_add() -> None:
    model = build_model(ModelSpec(arch="mlp", width=16, depth=2, norm="batch"), VECTOR, 10)
    assert forward_flops(model, VECTOR) == 2 * (40 * 16 + 16 * 16 + 16 * 10)
    assert model.training  # measuring does not leave the model in eval mode


def test_conv_forward_flops() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 1, stride=2))
    # 8x8 output with 3*3*3 MACs each for 4 channels, then 4x4 output with 4 MACs each for 6 channels
    assert forward_flops(conv, IMAGE) == 2 * (8 * 8 * 4 * 27 + 4 * 4 * 6 * 4)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_resnet_has_6n_plus_2_layers(n: int) -> None:
    """Counting convs and the fc, not the two 1x1 projection shortcuts (stages 2 and 3)."""
    model = build_model(ModelSpec(arch="resnet", width=4, depth=n, norm="batch"), IMAGE, 10)
    names = [name for name, _ in weight_layers(model)]
    shortcuts = [name for name in names if "shortcut" in name]
    assert len(names) - len(shortcuts) == 6 * n + 2
    assert len(shortcuts) == 2
    assert names[0] == "stem.0" and names[-1] == "head"
    convs = [m for name, m in weight_layers(model) if isinstance(m, nn.Conv2d) and "shortcut" not in name]
    channels = [m.out_channels for m in convs]
    assert channels == [4] + [4] * 2 * n + [8] * 2 * n + [16] * 2 * n


def test_resnet_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="image"):
        build_model(ModelSpec(arch="resnet"), VECTOR, 10)


def test_unknown_names_are_rejected() -> None:
    for bad in (ModelSpec(arch="transformer"), ModelSpec(norm="group"), ModelSpec(init="lecun"), ModelSpec(depth=0)):
        with pytest.raises(ValueError):
            build_model(bad, VECTOR, 10)


@torch.no_grad()
def test_inits() -> None:
    torch.manual_seed(0)
    he = build_model(ModelSpec(width=512, depth=1, init="he"), (512,), 10)
    fc1 = he.fc1
    assert float(fc1.bias.abs().max()) == 0.0
    assert float(fc1.weight.std()) == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    xavier = build_model(ModelSpec(width=256, depth=1, init="xavier"), (256,), 10)
    assert float(xavier.fc1.weight.std()) == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    ortho = build_model(ModelSpec(width=32, depth=1, init="orthogonal"), (32,), 10)
    w = ortho.fc1.weight
    gain = nn.init.calculate_gain("relu")
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(32), atol=1e-4, rtol=0)
    default = build_model(ModelSpec(width=32, depth=1), (32,), 10)
    assert float(default.fc1.bias.abs().max()) > 0  # PyTorch's default init is left alone


def test_model_info_and_lr_scaling() -> None:
    model = build_model(ModelSpec(width=16, depth=2), VECTOR, 10)
    info = model_info(model, VECTOR, TrainSpec(lr=0.01))
    assert info.params == 1098 and info.flops_per_example == 2112
    assert info.layer_names == ("fc1", "fc2", "head") and info.lr == 0.01
    scaled = model_info(model, VECTOR, TrainSpec(lr=0.01, lr_scaling="sqrt_params", lr_ref_params=4392))
    assert scaled.lr == pytest.approx(0.02)
    with pytest.raises(ValueError, match="lr_ref_params"):
        model_info(model, VECTOR, TrainSpec(lr_scaling="sqrt_params"))


# --------------------------------------------------------------------------- dropout factors

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_dropout_factors_keep_1_minus_p_and_average_one(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    factors = dropout_factors((400, 1000), p, torch.float32, CPU, (g,))
    kept = round((1 - p) * DROPOUT_LEVELS)
    assert factors.unique().tolist() == [0.0, pytest.approx(DROPOUT_LEVELS / kept)]
    # 400k draws: the keep rate's standard error is below 0.1 percentage points
    assert (factors > 0).float().mean().item() == pytest.approx(kept / DROPOUT_LEVELS, abs=0.003)
    assert factors.double().mean().item() == pytest.approx(1.0, abs=0.005)
    # each of the four 16-bit lanes of a 64-bit draw is random on its own, not only their mix
    lanes = (factors.view(-1, 4) > 0).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), kept / DROPOUT_LEVELS), atol=0.005)


def test_a_bundle_s_factors_are_each_member_s_own_draws() -> None:
    states = [torch.Generator().manual_seed(seed).get_state() for seed in (1, 2, 3)]
    def generators() -> list[torch.Generator | None]:
        out: list[torch.Generator | None] = []
        for state in states:
            g = torch.Generator()
            g.set_state(state)
            out.append(g)
        return out
    together = dropout_factors((3, 7, 5), 0.2, torch.float32, CPU, generators())  # 35 draws: not a multiple of 4
    alone = [dropout_factors((7, 5), 0.2, torch.float32, CPU, (g,)) for g in generators()]
    assert torch.equal(together, torch.stack(alone))
    assert not torch.equal(alone[0], alone[1])


def test_dropout_module_draws_from_the_default_generator() -> None:
    x = torch.ones(64, 32)
    torch.manual_seed(5)
    a = Dropout(0.25)(x)
    torch.manual_seed(5)
    b = x * dropout_factors((64, 32), 0.25, torch.float32, CPU)
    assert torch.equal(a, b) and (a == 0).any()
    assert torch.equal(Dropout(0.25).eval()(x), x)


def test_dropout_factors_edges() -> None:
    ones = dropout_factors((10, 10), 1e-9, torch.float32, CPU)  # rounds to keeping everything
    assert torch.equal(ones, torch.ones(10, 10))
    assert dropout_factors((4, 4), 0.1, torch.float64, CPU).dtype == torch.float64
    with pytest.raises(ValueError, match="among 3 generators"):
        dropout_factors((4, 4), 0.1, torch.float32, CPU, (None, None, None))
