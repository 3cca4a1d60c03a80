"""The model families a sweep scales, and how big each built model is.

A scaling law's x axis is made of parameters and FLOPs, so both are measured
from the built module rather than from formulas that could drift from the
code: `count_params` sums the parameters, `forward_flops` runs one dummy
example through forward hooks on every Linear/Conv2d.

`weight_layers` defines what "a layer" means for per-layer statistics: the
Linear and Conv2d modules in depth order (input side first), each owning its
weight and bias. Norm layers carry parameters too but are not layers here.

Families:
- mlp:    flatten -> depth x [Linear -> norm -> ReLU -> Dropout] -> Linear head
- resmlp: flatten -> Linear stem -> depth x [h + Dropout(norm(ReLU(Linear(h))))] -> Linear head
- resnet: the CIFAR ResNet of He et al. (2016): 3x3 stem, three stages of `depth`
          basic blocks with width, 2*width, 4*width channels (6n+2 layers),
          global average pool, (Dropout), Linear head.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from scaletui.core.records import ModelInfo
from scaletui.core.specs import ModelSpec, TrainSpec
from scaletui.core.vocabulary import OPTIMIZER_STATE_COPIES, Arch, Init, LrScaling, Norm, Optimizer


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, *,
                initialise: bool = True) -> nn.Module:
    """Build `spec` for inputs of `input_shape` (one example) and `num_classes` outputs, initialised
    (`initialise=False`: PyTorch's own init only, for a model built on the meta device for its shapes:
    `spec.init` on meta tensors goes through PyTorch's Python reference kernels, which import
    torch._dynamo, about 1 s of a worker's start for nothing)."""
    if spec.depth < 1 or spec.width < 1:
        raise ValueError(f"depth and width must be >= 1, got depth={spec.depth} width={spec.width}")
    if spec.norm not in Norm.choices():
        raise ValueError(f"unknown norm {spec.norm!r}; expected one of {', '.join(Norm.choices())}")
    if spec.arch == Arch.MLP:
        model: nn.Module = _mlp(spec, math.prod(input_shape), num_classes)
    elif spec.arch == Arch.RESMLP:
        model = ResMLP(spec, math.prod(input_shape), num_classes)
    elif spec.arch == Arch.RESNET:
        if len(input_shape) != 3:
            raise ValueError(f"resnet needs image inputs (C, H, W), got input shape {input_shape}")
        model = ResNet(spec, input_shape[0], num_classes)
    else:
        raise ValueError(f"unknown arch {spec.arch!r}; expected one of {', '.join(Arch.choices())}")
    if initialise:
        init_weights(model, spec.init)
    return model


# --------------------------------------------------------------------------- MLPs


#: A dropout draw is 16 random bits, so the keep probability is 1 - p rounded to a multiple of 1/65536.
DROPOUT_LEVELS = 1 << 16


def dropout_factors(shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device,
                    generators: Sequence[torch.Generator | None] = (None,)) -> torch.Tensor:
    """Inverted-dropout factors of `shape`, for 0 < p < 1: 1 / q where kept (probability q, 1 - p rounded
    to 1/DROPOUT_LEVELS, so the factors average exactly 1), else 0. `shape` is split along its first
    dimension into one equal part per generator (a bundle's members, (M, ...)), each part drawn from its
    generator exactly as a mask of the part's shape is drawn alone (None: the device's default generator).

    Why 16-bit draws: a float from `torch.rand` spends one 32-bit draw of the CPU's Mersenne twister (and
    ~9 ns) per element; 64-bit draws viewed as four 16-bit integers need a quarter of the draws, and the
    whole mask cost 93 us against 217 us for a (128, 160) mask on one thread; in a 16-member 160 x 6
    bundle of the default sweep the dropout draws were 16% of the time (torch.profiler). Every path
    (a run alone, each member of a bundle) draws through here, so a member draws exactly the masks it
    would alone."""
    parts = len(generators)
    if parts < 1 or shape[0] % parts:
        raise ValueError(f"cannot split a mask of shape {shape} among {parts} generators")
    n = math.prod(shape) // parts
    words = torch.empty(parts, (n + 3) // 4, dtype=torch.int64, device=device)
    for row, generator in zip(words, generators, strict=True):
        row.random_(-(2**63), None, generator=generator)  # the full 64-bit range: every bit random
    draws = words.view(torch.int16)[:, :n].reshape(shape)  # uniform on [-32768, 32767]
    kept = min(DROPOUT_LEVELS, max(1, round((1.0 - p) * DROPOUT_LEVELS)))
    # int16 -> float32 is exact, and comparing floats is vectorised where comparing int16 is not.
    factors = draws.to(torch.float32).lt_(kept - DROPOUT_LEVELS // 2).mul_(DROPOUT_LEVELS / kept)
    return factors if dtype == torch.float32 else factors.to(dtype)


class Dropout(nn.Module):
    """Inverted dropout whose factors come from `dropout_factors` with the default generator.

    Why not nn.Dropout: its CPU kernel draws the mask with `bernoulli_`, which costs about three times
    what `dropout_factors` does (300 us against 93 us for a (128, 160) mask, one thread). A batched
    bundle draws each member's factors from the member's own generator through the same function
    (engine/stacked.py), so a member draws exactly the masks it would alone, on a CPU and on CUDA alike."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return x * dropout_factors(tuple(x.shape), self.p, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _norm1d(kind: str, width: int) -> nn.Module | None:
    if kind == Norm.BATCH:
        return nn.BatchNorm1d(width)
    if kind == Norm.LAYER:
        return nn.LayerNorm(width)
    return None


def _mlp(spec: ModelSpec, in_features: int, num_classes: int) -> nn.Sequential:
    """Named layers (fc1, norm1, act1, drop1, ..., head) so per-layer statistics read well.
    Absent norms and zero dropout are left out rather than added as Identity: fewer modules per step."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width_in = in_features
    for i in range(1, spec.depth + 1):
        layers[f"fc{i}"] = nn.Linear(width_in, spec.width)
        norm = _norm1d(spec.norm, spec.width)
        if norm is not None:
            layers[f"norm{i}"] = norm
        layers[f"act{i}"] = nn.ReLU()
        if spec.dropout > 0:
            layers[f"drop{i}"] = Dropout(spec.dropout)
        width_in = spec.width
    layers["head"] = nn.Linear(width_in, num_classes)
    return nn.Sequential(layers)


class ResidualBlock(nn.Module):
    """h + Dropout(norm(ReLU(Linear(h)))): FC -> ReLU -> norm -> dropout, with a skip connection."""

    def __init__(self, width: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = _norm1d(norm, width) or nn.Identity()
        self.drop = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, width)
        return h + self.drop(self.norm(torch.relu(self.fc(h))))


class ResMLP(nn.Module):
    def __init__(self, spec: ModelSpec, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, spec.width)
        self.blocks = nn.Sequential(*(ResidualBlock(spec.width, spec.norm, spec.dropout) for _ in range(spec.depth)))
        self.head = nn.Linear(spec.width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, num_classes)
        return self.head(self.blocks(self.stem(x.flatten(1))))


# --------------------------------------------------------------------------- CIFAR ResNet


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == Norm.BATCH:
        return nn.BatchNorm2d(channels)
    if kind == Norm.LAYER:
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W)
    return nn.Identity()


def _conv(c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> nn.Conv2d:
    # A bias right before a normalisation is redundant; without one the conv keeps its bias.
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


class BasicBlock(nn.Module):
    """relu(norm(conv(relu(norm(conv(x))))) + shortcut(x)); shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride, norm)
        self.norm1 = _norm2d(norm, c_out)
        self.conv2 = _conv(c_out, c_out, 3, 1, norm)
        self.norm2 = _norm2d(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride, norm), _norm2d(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec, in_channels: int, num_classes: int) -> None:
        super().__init__()
        w = spec.width
        self.stem = nn.Sequential(_conv(in_channels, w, 3, 1, spec.norm), _norm2d(spec.norm, w), nn.ReLU())
        stages, c_in = [], w
        for i, c_out in enumerate((w, 2 * w, 4 * w)):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1, spec.norm)
                      for j in range(spec.depth)]  # fmt: skip
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.drop = Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        h = self.stages(self.stem(x))  # (B, 4w, H/4, W/4)
        return self.head(self.drop(h.mean(dim=(2, 3))))


# --------------------------------------------------------------------------- init and size


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise Linear/Conv2d weights (biases zeroed); `default` keeps PyTorch's init."""
    if init not in Init.choices():
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(Init.choices())}")
    if init == Init.DEFAULT:
        return
    for _, m in weight_layers(model):
        weight, bias = m.weight, m.bias
        assert isinstance(weight, torch.Tensor)  # Linear and Conv2d: what weight_layers returns
        if init == Init.HE:
            nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
        elif init == Init.XAVIER:
            nn.init.xavier_normal_(weight)
        else:
            nn.init.orthogonal_(weight, gain=nn.init.calculate_gain("relu"))
        if isinstance(bias, torch.Tensor):
            nn.init.zeros_(bias)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv2d modules in depth order (input side first): the layers of per-layer statistics.
    Registration order is forward order in every family here; a block's shortcut comes after its convs."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def count_params(model: nn.Module) -> int:
    """All trainable parameters, norms included."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one example: 2 per multiply-add of every Linear/Conv2d (norms, activations
    and bias additions are not counted). Measured with hooks on one dummy example in eval mode."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
        else:  # Conv2d: each output element is (C_in / groups) * kh * kw multiply-adds
            assert isinstance(module, nn.Conv2d)
            total += 2 * output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    param = next(model.parameters())
    hooks = [m.register_forward_hook(count) for _, m in weight_layers(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def effective_lr(spec: TrainSpec, params: int) -> float:
    """The base learning rate after `lr_scaling` (sqrt_params: lr * sqrt(lr_ref_params / params))."""
    if spec.lr_scaling == LrScaling.NONE:
        return spec.lr
    if spec.lr_scaling == LrScaling.SQRT_PARAMS:
        if not spec.lr_ref_params:
            raise ValueError("lr_scaling = sqrt_params needs lr_ref_params")
        return spec.lr * math.sqrt(spec.lr_ref_params / params)
    raise ValueError(f"unknown lr_scaling {spec.lr_scaling!r}; expected one of {', '.join(LrScaling.choices())}")


BYTES_PER_VALUE = 4  # float32 weights, gradients, optimizer state and activations


def training_memory_bytes(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, optimizer: str, batch_size: int
) -> int:
    """Estimated memory of one training step, in bytes, computed before anything is allocated:
    weights + gradients + optimizer state + every module's output for one batch (what autograd keeps).

    The model is built on the meta device (shapes only, no storage), so asking about a model
    far too big for the machine costs milliseconds and no memory.
    """
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes, initialise=False)
        activations = _activation_values(model, input_shape)
    copies = 2 + OPTIMIZER_STATE_COPIES[Optimizer(optimizer)]
    return BYTES_PER_VALUE * (count_params(model) * copies + batch_size * activations)


def _activation_values(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Values in the outputs of every leaf module for one example (a batch of 2: BatchNorm needs > 1)."""
    total = [0]

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        total[0] += output.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model(torch.empty(2, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] // 2


def model_info(model: nn.Module, input_shape: tuple[int, ...], spec: TrainSpec) -> ModelInfo:
    params = count_params(model)
    return ModelInfo(
        params=params,
        flops_per_example=forward_flops(model, input_shape),
        layer_names=tuple(name for name, _ in weight_layers(model)),
        lr=effective_lr(spec, params),
    )
