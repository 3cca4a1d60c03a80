"""Per-layer gradient, weight and update norms, cheap enough to take every few steps.

Measured on these machines: one fused `torch._foreach_norm` over all gradients
and weights with a single host transfer costs ~3% of a step if done every step,
a tenth of that every 10 steps; `norm(inf)`, `var_mean` and `isfinite().all()`
cost 20-50x an L2 norm on CPU. So a logging step here is: L2 norms only,
fused over all tensors, returned as 0-d device tensors that the loop stacks
with its train losses into ONE tensor and moves to the host with ONE
`.tolist()`; the per-layer combination then happens on the host.
Counting NaN/Inf gradient values is the rare path, only for layers whose
gradient norm came back non-finite.

Usage, on a logging step:
    loss.backward()
    probe.before_step(grads_will_change=clipping)  # weight snapshot (+ raw grad norms if clipping)
    optimizer.step()
    norms = probe.after_step()  # 3T 0-d tensors on the device
    values = torch.stack(losses + norms).tolist()  # the one host sync
    records = probe.layer_stats(step, values[len(losses):])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from scaletui.core.records import LayerStats


class LayerProbe:
    """Measures the layers of `weight_layers(model)`; each layer owns its weight and bias."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        if not layers:
            raise ValueError("a LayerProbe needs at least one layer")
        self.names = [name for name, _ in layers]
        self.params: list[torch.Tensor] = []
        self._owner: list[int] = []  # tensor index -> layer index
        for i, (_, module) in enumerate(layers):
            # getattr: a layer of a researcher's own model may have no bias attribute at all (nn.Embedding)
            for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(p, torch.Tensor):
                    self.params.append(p)
                    self._owner.append(i)
        # Detached views share storage with the parameters, so they follow every in-place update;
        # made once here instead of on every logging step.
        self._weights = [p.detach() for p in self.params]
        self._snapshot = [torch.empty_like(p) for p in self.params]  # preallocated W before the step
        self._zero = torch.zeros((), device=self.params[0].device, dtype=self.params[0].dtype)
        self._grad_norms: tuple[torch.Tensor, ...] | None = None  # raw norms, when clipping follows
        self._armed = False  # before_step() was called and after_step() not yet

    @property
    def num_layers(self) -> int:
        return len(self.names)

    @property
    def num_values(self) -> int:
        """Length of `after_step()`'s list: grad, weight and update norm of every tensor."""
        return 3 * len(self.params)

    def before_step(self, grads_will_change: bool = True) -> None:
        """Call after backward, before clipping and optimizer.step(): snapshot the weights.

        The optimizers of this project leave `.grad` as it is (tests check this), so without clipping
        the gradient norms are taken in after_step's single fused call; clipping rescales the
        gradients in place, so then their raw norms are taken here."""
        self._grad_norms = torch._foreach_norm(self._grads()) if grads_will_change else None
        torch._foreach_copy_(self._snapshot, self._weights)
        self._armed = True

    def after_step(self) -> list[torch.Tensor]:
        """Call after optimizer.step(). Returns 3T 0-d tensors on the device: per-tensor L2 norms of
        the gradients, the weights and this step's update, to be stacked with the loop's other scalars
        into one host transfer and then turned into records by `layer_stats`."""
        if not self._armed:
            raise RuntimeError("LayerProbe.after_step() without before_step()")
        self._armed = False
        torch._foreach_sub_(self._snapshot, self._weights)  # snapshot := W_before - W_after = -delta W
        if self._grad_norms is None:
            return list(torch._foreach_norm(self._grads() + self._weights + self._snapshot))  # one fused call
        grad_norms, self._grad_norms = self._grad_norms, None
        return [*grad_norms, *torch._foreach_norm(self._weights + self._snapshot)]

    def _grads(self) -> list[torch.Tensor]:
        return [self._zero if p.grad is None else p.grad for p in self.params]

    def layer_stats(self, step: int, values: list[float]) -> list[LayerStats]:
        """Turn the host copy of `after_step()` into one record per layer (see `layer_records`)."""
        return layer_records(self.names, self._owner, step, values, self.nonfinite_count)

    def nonfinite_count(self, layer: int) -> int:
        """NaN/Inf gradient values in one layer (host sync: only for layers whose norm was non-finite)."""
        count = 0
        for p, owner in zip(self.params, self._owner, strict=True):
            if owner == layer and p.grad is not None:
                count += int((~torch.isfinite(p.grad)).sum())
        return count


def layer_records(names: list[str], owner: list[int], step: int, values: list[float],
                  nonfinite_count: Callable[[int], int]) -> list[LayerStats]:
    """One record per layer from the host copy of the per-tensor norms: `values` holds the gradient,
    weight and update norm of every tensor (3T values, in that order), `owner[i]` is the layer of
    tensor i, and `nonfinite_count(layer)` counts NaN/Inf gradient values (called only for layers
    whose gradient norm is not finite). Shared by LayerProbe and the stacked probe of batched runs.

    Tensors are combined per layer here, on the host, as sqrt(sum of squares): a few dozen float
    operations are cheaper than the device ops (each ~5-10 us to dispatch on a CPU) that would do it
    before the transfer."""
    t = len(owner)
    sums = [[0.0, 0.0, 0.0] for _ in names]  # per layer: grad, weight, update sum of squares
    for i, layer in enumerate(owner):
        acc = sums[layer]
        g, w, u = values[i], values[t + i], values[2 * t + i]
        acc[0] += g * g  # `*`, not `**`: a huge float overflows to inf instead of raising
        acc[1] += w * w
        acc[2] += u * u
    stats = []
    for layer, (g2, w2, u2) in enumerate(sums):
        grad, weight, update = math.sqrt(g2), math.sqrt(w2), math.sqrt(u2)
        nonfinite = 0 if math.isfinite(grad) else nonfinite_count(layer)
        stats.append(LayerStats(step, layer, names[layer], grad, weight, _ratio(update, weight), nonfinite))
    return stats


def _ratio(update: float, weight: float) -> float:
    """||delta W|| / ||W||, with 0/0 = 0 (a frozen zero layer) and x/0 = inf."""
    if weight == 0.0:
        return 0.0 if update == 0.0 else math.inf
    return update / weight
