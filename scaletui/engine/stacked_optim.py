"""optim.py's optimizers over a StackedModel's flat (M, P) parameters, each member with its own state.

Every optimizer of the sweep file is elementwise (sgd, momentum, adam, adamw), so one update over
the (M, P) tensor is M independent updates, and a member's learning rate and weight decay can be its
own: they enter as (M, 1) columns (or as plain numbers when every member has the same, the common
case of a bundle of seeds). The arithmetic is PyTorch's own (torch.optim.Adam/AdamW/SGD with the
defaults optim.py uses), written with in-place ops and preallocated buffers so a step allocates
nothing (a fresh (M, P) temporary per step measured 10x slower than the in-place op on these CPUs).
When every member of an Adam or AdamW bundle has the same learning rate, weight decay and step count
(a bundle of seeds), the update is PyTorch's fused kernel over the whole (M, P) tensor, the kernel
the unbatched loop's torch optimizer runs (optim.py builds it fused): one pass over the parameters
and their state instead of eight.
The raw gradient is never modified by the optimizer (weight decay goes through a scratch buffer):
the per-layer probe may read it after the step, as it does in the unbatched loop.

Clipping is per member too: each member's gradient is scaled by max_norm / (its global norm + 1e-6),
clamped at 1, as `torch.nn.utils.clip_grad_norm_` does for one model.

A member's state crosses into and out of the stack in PyTorch's own format (`from_torch`,
`member_state_dict`), so its checkpoints load into the unbatched loop's torch optimizer and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scaletui.core.vocabulary import Optimizer
from scaletui.engine.optim import fused_adam_works
from scaletui.engine.stacked import FlatParams, Slot

#: State tensors PyTorch keeps per parameter, in its own key order.
STATE_KEYS: dict[str, tuple[str, ...]] = {
    Optimizer.SGD.value: (),
    Optimizer.MOMENTUM.value: ("momentum_buffer",),
    Optimizer.ADAM.value: ("exp_avg", "exp_avg_sq"),
    Optimizer.ADAMW.value: ("exp_avg", "exp_avg_sq"),
}


@dataclass
class MemberOptState:
    """One member's optimizer state outside the stack: updates taken so far, and each state tensor
    flattened to (P,) in the member's parameter order."""

    step: int
    buffers: dict[str, torch.Tensor]

    @staticmethod
    def from_torch(optimizer: torch.optim.Optimizer, kind: str, step: int) -> MemberOptState:
        """Read a member's torch optimizer (fresh, or loaded from a checkpoint) into flat buffers.
        `step` is the member's training step: the number of updates its state stands for."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        buffers = {}
        for key in STATE_KEYS[kind]:
            parts = [_state_tensor(optimizer, p, key) for p in params]
            buffers[key] = torch.cat([part.reshape(-1) for part in parts])
        return MemberOptState(step, buffers)


def _state_tensor(optimizer: torch.optim.Optimizer, param: torch.Tensor, key: str) -> torch.Tensor:
    state = optimizer.state.get(param, {})
    value = state.get(key)
    return torch.zeros_like(param) if value is None else value.detach().to(param.device)


class StackedOptimizer:
    """Adam, AdamW, SGD or SGD with momentum over `params`, one state row per member.

    `hyper` is a member's torch param group (betas, eps, momentum; every member's are the same); each
    member brings its weight decay and its state, and each step its learning rate."""

    def __init__(self, kind: str, params: FlatParams, states: Sequence[MemberOptState],
                 weight_decays: Sequence[float], hyper: dict[str, Any]) -> None:
        if kind not in STATE_KEYS:
            raise ValueError(f"unknown optimizer {kind!r}; expected one of {', '.join(STATE_KEYS)}")
        _check_plain(hyper)
        self.kind = kind
        self.params = params
        self.steps = [s.step for s in states]
        self.buffers = {key: torch.stack([s.buffers[key] for s in states]).contiguous() for key in STATE_KEYS[kind]}
        self.weight_decays = [float(wd) for wd in weight_decays]  # host copies: no sync per step
        self.weight_decay = _per_member(self.weight_decays, params.data)
        self.betas = tuple(hyper.get("betas", (0.9, 0.999)))
        self.eps = float(hyper.get("eps", 1e-8))
        self.momentum = float(hyper.get("momentum", 0.0))
        self._scratch = torch.empty_like(params.data)  # the decayed gradient, or an update
        adam = kind in (Optimizer.ADAM, Optimizer.ADAMW)
        self._denom = torch.empty_like(params.data) if adam else None
        self._fused = adam and fused_adam_works(kind == Optimizer.ADAMW, params.data.device, params.data.dtype)
        # the fused kernel's step count: a float32 tensor on the device, as torch's optimizers keep it
        self._fused_step = torch.zeros((), dtype=torch.float32, device=params.data.device)

    def step(self, lrs: Sequence[float]) -> None:
        """One update of every member, member i at learning rate lrs[i]."""
        self.steps = [s + 1 for s in self.steps]
        with torch.no_grad():
            if self.kind in (Optimizer.ADAM, Optimizer.ADAMW):
                self._adam(list(lrs))
            else:
                self._sgd(list(lrs))

    def _decayed_grad(self) -> torch.Tensor:
        """grad + weight_decay * param (L2, as torch's Adam and SGD), in the scratch buffer."""
        grad, data, wd = self.params.grad, self.params.data, self.weight_decay
        if isinstance(wd, float):
            return grad if wd == 0 else torch.add(grad, data, alpha=wd, out=self._scratch)
        return torch.addcmul(grad, data, wd, out=self._scratch)

    def _adam(self, lrs: list[float]) -> None:
        if self._fused and _same(lrs) and _same(self.weight_decays) and _same(self.steps):
            self._fused_adam(lrs[0], self.weight_decays[0], self.steps[0])
            return
        beta1, beta2 = self.betas
        data, denom = self.params.data, self._denom
        exp_avg, exp_avg_sq = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        assert denom is not None
        if self.kind == Optimizer.ADAMW:  # decoupled: param *= 1 - lr * weight_decay
            decay = _per_member([1 - lr * wd for lr, wd in zip(lrs, self.weight_decays, strict=True)], data)
            if not (isinstance(decay, float) and decay == 1.0):
                data.mul_(decay)
            grad = self.params.grad
        else:
            grad = self._decayed_grad()
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = _per_member([lr / (1 - beta1**s) for lr, s in zip(lrs, self.steps, strict=True)], data)
        bias2_sqrt = _per_member([(1 - beta2**s) ** 0.5 for s in self.steps], data)
        torch.sqrt(exp_avg_sq, out=denom)
        denom.div_(bias2_sqrt).add_(self.eps)
        if isinstance(step_size, float):
            data.addcdiv_(exp_avg, denom, value=-step_size)
        else:
            torch.div(exp_avg, denom, out=self._scratch)
            data.sub_(self._scratch.mul_(step_size))

    def _fused_adam(self, lr: float, weight_decay: float, step: int) -> None:
        """Every member at once through PyTorch's fused Adam/AdamW kernel (elementwise, so one call over
        the (M, P) tensor is M independent updates). Like torch's optimizers it reads the gradient and
        leaves it as it is."""
        kernel = torch._fused_adamw_ if self.kind == Optimizer.ADAMW else torch._fused_adam_
        self._fused_step.fill_(step)
        beta1, beta2 = self.betas
        kernel([self.params.data], [self.params.grad], [self.buffers["exp_avg"]], [self.buffers["exp_avg_sq"]], [],
               [self._fused_step], lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=self.eps,
               amsgrad=False, maximize=False)

    def _sgd(self, lrs: list[float]) -> None:
        data = self.params.data
        direction = self._decayed_grad()
        if self.kind == Optimizer.MOMENTUM:
            buf = self.buffers["momentum_buffer"]
            buf.mul_(self.momentum).add_(direction)  # a zero buffer makes the first step buf = grad, as torch's
            direction = buf
        lr = _per_member(lrs, data)
        if isinstance(lr, float):
            data.add_(direction, alpha=-lr)
        else:
            data.sub_(torch.mul(direction, lr, out=self._scratch))

    # ----------------------------------------------------------------- members in and out

    def member_state(self, m: int) -> MemberOptState:
        return MemberOptState(self.steps[m], {key: value[m].clone() for key, value in self.buffers.items()})

    def member_state_dict(self, m: int, slots: list[Slot], groups: list[dict[str, Any]], lr: float) -> dict[str, Any]:
        """Member m's state as `torch.optim.Optimizer.state_dict()` would give it alone: `groups` are its
        own torch optimizer's param_groups (a template), `lr` the rate of its latest step."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        adam = self.kind in (Optimizer.ADAM, Optimizer.ADAMW)
        if self.steps[m] > 0 and STATE_KEYS[self.kind]:
            for i, slot in enumerate(slots):
                entry = {"step": torch.tensor(float(self.steps[m]))} if adam else {}  # torch's float32 step count
                for key, value in self.buffers.items():
                    entry[key] = value[m, slot.offset : slot.offset + slot.numel].reshape(slot.shape).clone()
                state[i] = entry
        return {"state": state, "param_groups": [{**group, "lr": lr} for group in groups]}


def clip_members(params: FlatParams, max_norm: float) -> None:
    """Scale each member's gradient so its global L2 norm is at most max_norm (clip_grad_norm_ per member)."""
    with torch.no_grad():
        norms = torch.linalg.vector_norm(params.grad, dim=1)  # (M,)
        coef = (max_norm / (norms + 1e-6)).clamp_(max=1.0)
        params.grad.mul_(coef.unsqueeze(1))


def _check_plain(hyper: dict[str, Any]) -> None:
    """The stacked arithmetic is the plain variant of each optimizer, which is what optim.py builds."""
    unsupported = [k for k in ("amsgrad", "maximize", "nesterov") if hyper.get(k)]
    if unsupported or hyper.get("dampening", 0):
        raise ValueError(f"the stacked optimizer does not implement {', '.join(unsupported) or 'dampening'}")


def _same(values: Sequence[float]) -> bool:
    return all(v == values[0] for v in values)


def _per_member(values: list[float], like: torch.Tensor) -> float | torch.Tensor:
    """A number when every member has the same value, else an (M, 1) column on `like`'s device (copied
    from pinned memory without waiting: a plain copy to a GPU would wait for every queued step)."""
    if _same(values):
        return float(values[0])
    column = torch.tensor(values, dtype=like.dtype).unsqueeze(1)
    if like.is_cuda:
        return column.pin_memory().to(like.device, non_blocking=True)
    return column

