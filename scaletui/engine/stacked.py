"""M same-shape models as one: stacked parameters, batched matmuls, each member's own randomness.

Why: on a CPU a small model's step is mostly dispatch overhead (a width-64 MLP step reaches 15-23%
of the matmul peak), so M runs that differ only in seed pay that overhead M times. Stacked, a layer
is one `torch.baddbmm` over (M, out, in) weights for all members. Measured before this module:
8 seeds stacked ran 1.65-1.76x the runs per hour of 8 separate runs; `torch.func.vmap` 1.15-1.51x;
`torch.compile` at most 1.16x.

Layout. Every member's parameters live in one (M, P) tensor, member-major, each member's P values
in the order of `template.named_parameters()`. Each parameter is an (M, *shape) leaf that is a view
into it, and its gradient is a view into one (M, P) gradient buffer, so the optimizer, per-member
gradient clipping and the per-layer norms are a few operations over two big tensors instead of a
few per parameter. Gradients are zeroed in place, never set to None: autograd then accumulates into
the views. Activations are (M, B, features).

Families. The forward pass is built once by reading the member module's structure: nn.Sequential,
Flatten, Linear, LayerNorm, BatchNorm1d, ReLU, models.py's Dropout, Identity, ResidualBlock and
ResMLP, i.e. every `mlp` and `resmlp` that build_model makes. BatchNorm keeps per-member statistics
by treating (member, feature) pairs as the channels of one `F.batch_norm`. The CIFAR ResNet is not
stacked (see `bundles.STACKABLE_ARCHS`).

Exactness. A member starts from the values build_model gave its seed (the caller builds it and
hands over its state dict). Dropout masks come from the member's own generator through the same calls
models.Dropout makes alone (`models.dropout_factors`, each member's part from its own generator),
so a member draws exactly the masks it would have drawn alone. What still differs from a member
trained alone is float reduction order: batched matmuls, LayerNorm's affine applied as a separate
op, the loss summed per member.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scaletui.core.records import LayerStats
from scaletui.engine.models import Dropout, ResidualBlock, ResMLP, dropout_factors, weight_layers
from scaletui.engine.probes import layer_records

# The parameter views are not dense (their member stride is P), so autograd warns once per process
# that their grads "do not obey the gradient layout contract" (it would like them contiguous): a
# performance note that does not apply, since the gradient views have the parameters' own strides.
_LAYOUT_WARNING = "grad and param do not obey the gradient layout contract"

Layer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in a member's row of the flat (M, P) tensor."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


def parameter_slots(template: nn.Module) -> list[Slot]:
    """Offsets of every parameter of `template`, in `named_parameters()` order."""
    slots, offset = [], 0
    for name, p in template.named_parameters():
        slots.append(Slot(name, tuple(p.shape), offset, p.numel()))
        offset += p.numel()
    return slots


class FlatParams:
    """Members' parameters as one (M, P) tensor, with (M, *shape) leaf views and gradient views."""

    def __init__(self, slots: list[Slot], data: torch.Tensor) -> None:
        self.slots = slots
        self.data = data  # (M, P)
        self.grad = torch.zeros_like(data)  # (M, P): each view's .grad is a slice of it
        self.views: dict[str, torch.Tensor] = {}
        m = data.shape[0]
        for slot in slots:
            view = data[:, slot.offset : slot.offset + slot.numel].view(m, *slot.shape)
            view.requires_grad_(True)
            view.grad = self.grad[:, slot.offset : slot.offset + slot.numel].view(m, *slot.shape)
            self.views[slot.name] = view

    @property
    def members(self) -> int:
        return int(self.data.shape[0])

    def zero_grad(self) -> None:
        """In place: autograd keeps accumulating into the views."""
        self.grad.zero_()


class StackedModel:
    """M members of one architecture, trained as one. Build with `StackedModel(template, states, rngs)`:
    `template` is a member module (its structure and names), `states` each member's state_dict, `rngs`
    each member's dropout generator (on the training device)."""

    def __init__(self, template: nn.Module, states: Sequence[dict[str, torch.Tensor]],
                 rngs: Sequence[torch.Generator]) -> None:
        if not states or len(states) != len(rngs):
            raise ValueError("a stacked model needs one state and one generator per member (at least one)")
        self.template = template
        self.rngs = list(rngs)
        self.slots = parameter_slots(template)
        rows = [torch.cat([state[s.name].reshape(-1) for s in self.slots]) for state in states]
        self.params = FlatParams(self.slots, torch.stack(rows).contiguous())
        buffer_names = [name for name, _ in template.named_buffers()]
        self.buffers = {name: torch.stack([state[name] for state in states]).contiguous() for name in buffer_names}
        self.state_keys = list(template.state_dict().keys())
        self.training = True
        self._forward = _compile(template, "", self)

    @property
    def members(self) -> int:
        return self.params.members

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(M, B, *input_shape) -> (M, B, num_classes)."""
        return self._forward(x)

    def backward(self, losses: torch.Tensor) -> None:
        """Gradients of every member's own loss ((M,) losses; members share no parameter, so the sum's
        gradient is each member's own), accumulated into the flat gradient buffer."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LAYOUT_WARNING)
            losses.sum().backward()

    def member_state(self, m: int) -> OrderedDict[str, torch.Tensor]:
        """Member m's state_dict, with the keys and order of the template's own (copies, not views)."""
        state: OrderedDict[str, torch.Tensor] = OrderedDict()
        views = self.params.views
        for key in self.state_keys:
            source = views[key] if key in views else self.buffers[key]
            state[key] = source[m].detach().clone()
        return state

    def layer_slots(self) -> tuple[list[str], list[Slot], list[int]]:
        """Per-layer statistics' layers: names (weight_layers order), the slots of their weight and
        bias, and which layer owns each slot (what LayerProbe measures, in its order)."""
        by_name = {s.name: s for s in self.slots}
        names, slots, owner = [], [], []
        for i, (name, module) in enumerate(weight_layers(self.template)):
            names.append(name)
            for suffix in ("weight", "bias"):
                if isinstance(getattr(module, suffix, None), torch.Tensor):
                    slots.append(by_name[f"{name}.{suffix}" if name else suffix])
                    owner.append(i)
        return names, slots, owner


# --------------------------------------------------------------------------- the forward pass


def _compile(module: nn.Module, prefix: str, model: StackedModel) -> Layer:
    """The stacked forward of `module` (named `prefix` in the template), as one closure."""
    if isinstance(module, nn.Sequential):
        parts = [_compile(child, f"{prefix}{name}.", model) for name, child in module.named_children()]
        return _chain(parts)
    if isinstance(module, ResMLP):
        stem, blocks, head = (_compile(getattr(module, n), f"{prefix}{n}.", model) for n in ("stem", "blocks", "head"))
        return lambda x: head(blocks(stem(x.flatten(2))))
    if isinstance(module, ResidualBlock):
        fc, norm, drop = (_compile(getattr(module, n), f"{prefix}{n}.", model) for n in ("fc", "norm", "drop"))
        return lambda h: h + drop(norm(torch.relu(fc(h))))
    return _leaf(module, prefix, model)


def _chain(parts: list[Layer]) -> Layer:
    def forward(x: torch.Tensor) -> torch.Tensor:
        for part in parts:
            x = part(x)
        return x

    return forward


def _leaf(module: nn.Module, prefix: str, model: StackedModel) -> Layer:
    if isinstance(module, nn.Linear):
        return _linear(model.params.views, prefix)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm(module, model.params.views, prefix)
    if isinstance(module, nn.BatchNorm1d):
        return _batch_norm(module, model, prefix)
    if isinstance(module, Dropout):
        return _dropout(module.p, model)
    if isinstance(module, nn.ReLU):
        return torch.relu
    if isinstance(module, nn.Flatten):
        return lambda x: x.flatten(2)  # (M, B, ...) -> (M, B, features)
    if isinstance(module, nn.Identity):
        return lambda x: x
    raise NotImplementedError(f"no stacked version of {type(module).__name__} ({prefix.rstrip('.') or 'model'})")


def _linear(views: dict[str, torch.Tensor], prefix: str) -> Layer:
    # Views of the parameters (unsqueeze, transpose) are taken at every call, never once here: the
    # optimizer updates the flat tensor in place, after which a view made earlier no longer leads
    # its gradient back to the parameter.
    weight = views[prefix + "weight"]  # (M, out, in)
    bias = views.get(prefix + "bias")  # (M, out)
    if bias is None:
        return lambda x: torch.bmm(x, weight.transpose(1, 2))
    return lambda x: torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))  # (M, B, in) -> (M, B, out)


def _layer_norm(module: nn.LayerNorm, views: dict[str, torch.Tensor], prefix: str) -> Layer:
    shape, eps = tuple(module.normalized_shape), module.eps
    if not module.elementwise_affine:
        return lambda x: F.layer_norm(x, shape, None, None, eps)
    weight, bias = views[prefix + "weight"], views[prefix + "bias"]  # (M, W)
    return lambda x: torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, shape, None, None, eps), weight.unsqueeze(1))


def _batch_norm(module: nn.BatchNorm1d, model: StackedModel, prefix: str) -> Layer:
    """Per-member statistics: (member, feature) pairs are the channels of one batch norm over (B, M*W)."""
    if not module.track_running_stats or not module.affine:
        raise NotImplementedError("stacked BatchNorm1d needs running statistics and an affine transform")
    views, buffers = model.params.views, model.buffers
    weight, bias = views[prefix + "weight"], views[prefix + "bias"]  # (M, W)
    running_mean, running_var = buffers[prefix + "running_mean"], buffers[prefix + "running_var"]  # (M, W)
    tracked = buffers[prefix + "num_batches_tracked"]  # (M,)
    momentum, eps = module.momentum, module.eps
    if momentum is None:
        raise NotImplementedError("stacked BatchNorm1d needs a momentum (cumulative averages are not stacked)")

    def forward(x: torch.Tensor) -> torch.Tensor:  # (M, B, W)
        m, b, w = x.shape
        if model.training:
            tracked.add_(1)
        channels = x.transpose(0, 1).reshape(b, m * w)  # (B, M*W)
        out = F.batch_norm(channels, running_mean.view(-1), running_var.view(-1), weight.reshape(-1),
                           bias.reshape(-1), model.training, momentum, eps)
        return out.view(b, m, w).transpose(0, 1)

    return forward


def _dropout(p: float, model: StackedModel) -> Layer:
    """Each member's mask from its own generator, drawn as models.Dropout draws it alone."""
    if p <= 0:
        return lambda x: x

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not model.training:
            return x
        if p >= 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return x * dropout_factors(tuple(x.shape), p, x.dtype, x.device, model.rngs)

    return forward


# --------------------------------------------------------------------------- evaluation


def evaluate_members(model: StackedModel, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """Summed cross-entropy and number correct of every member on (x, y), as an (M, 2) float64 tensor on
    the device. `x` is (N, *input_shape), shared by every member; `y` is (N,) shared, or (M, N) when
    each member has its own labels (label noise). No host sync."""
    m = model.members
    total = torch.zeros(m, 2, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch):
        chunk = x[i : i + batch]
        logits = model(chunk.unsqueeze(0).expand(m, *chunk.shape))  # (M, b, C)
        target = (y[i : i + batch] if y.dim() == 1 else y[:, i : i + batch]).expand(m, chunk.shape[0])
        losses = F.cross_entropy(logits.float().flatten(0, 1), target.reshape(-1), reduction="none")
        total[:, 0] += losses.view(m, -1).sum(dim=1)
        total[:, 1] += (logits.argmax(dim=2) == target).sum(dim=1)
    return total


def member_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member: (M, B, C) logits and (M, B) targets -> (M,)."""
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), target.reshape(m * b), reduction="none").view(m, b).mean(dim=1)


# --------------------------------------------------------------------------- per-layer statistics


class StackedProbe:
    """LayerProbe for a StackedModel: the same norms, per member, for the whole bundle at once.

    A logging step: `before_step` (weight snapshot, raw gradient norms when clipping follows),
    `optimizer.step()`, then `after_step()` gives a (3T, M) tensor of per-tensor L2 norms (gradient,
    weight, update; T = weight and bias tensors of weight_layers) that the loop stacks with the
    members' train losses for the bundle's one host sync. Each norm is taken over one slice of the flat
    (M, P) tensors, all members at once."""

    def __init__(self, model: StackedModel) -> None:
        self.names, slots, self._owner = model.layer_slots()
        self.params = model.params
        self._slots = slots
        self._ranges = [(slot.offset, slot.offset + slot.numel) for slot in slots]
        self._snapshot = torch.empty_like(self.params.data)
        self._grad_norms: torch.Tensor | None = None

    def before_step(self, grads_will_change: bool = True) -> None:
        """After backward, before clipping and the optimizer: snapshot W (and the raw gradient norms)."""
        self._grad_norms = self._segment_norms(self.params.grad) if grads_will_change else None
        self._snapshot.copy_(self.params.data)

    def after_step(self) -> torch.Tensor:
        """(3T, M) norms on the device: gradients, weights, this step's updates."""
        self._snapshot.sub_(self.params.data)  # W_before - W_after = -delta W
        grads = self._grad_norms if self._grad_norms is not None else self._segment_norms(self.params.grad)
        self._grad_norms = None
        return torch.cat([grads, self._segment_norms(self.params.data), self._segment_norms(self._snapshot)])

    def _segment_norms(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, P) -> (T, M): the L2 norm of each layer tensor of each member, one norm per slice (a segment
        sum by `index_add_` scatters element by element on a CPU: 13 ms against 1 ms for a 16-member
        160 x 6 bundle's (16, 165k) parameters)."""
        return torch.stack([torch.linalg.vector_norm(flat[:, a:b], dim=1) for a, b in self._ranges])

    def layer_stats(self, member: int, step: int, values: list[float]) -> list[LayerStats]:
        """Member `member`'s records from its column of `after_step()` (3T floats, host side)."""
        return layer_records(self.names, self._owner, step, values, lambda layer: self._nonfinite(member, layer))

    def _nonfinite(self, member: int, layer: int) -> int:
        """NaN/Inf gradient values of one member's layer (host sync: only when its norm is not finite)."""
        grad = self.params.grad[member]
        return sum(int((~torch.isfinite(grad[s.offset : s.offset + s.numel])).sum())
                   for s, owner in zip(self._slots, self._owner, strict=True) if owner == layer)
