"""Batched training: same-shape runs of a sweep trained together as one stacked model.

A sweep trains every seed (and often every learning rate) of each size. Runs that differ only in
seed, learning rate or weight decay have the same shape, so a worker can train them as one stacked
model (stacked.py: batched matmuls over (M, ...) weights) and pay a small model's dispatch overhead
once instead of M times. Everywhere it shows, each member is still a run of its own:

- its own start: the parameters build_model gives its seed, its own batch order (its EpochSampler,
  seeded as in loop.py), its own dropout generator (started from the global state right after its
  model was built, exactly where the unbatched loop's dropout starts drawing);
- its own optimizer state, learning rate (schedule included) and weight decay (stacked_optim.py),
  and its own gradient clipping (its global norm);
- its own records through its own Sink, sent with loop.py's own helpers (`record_losses`,
  `record_eval`): the same metrics at the same steps, the same per-layer statistics with the same
  layer names and indices, the same outcome;
- its own ending: a member that diverges, stops early or is asked to stop leaves the bundle while
  the others go on; the stack is rebuilt without it, so its parameters stay as they were and it no
  longer costs anything;
- its own checkpoints, in its own folder, in the unbatched loop's format (`checkpoint_payload`:
  its model's state_dict keys, its torch optimizer's state_dict), so a member resumes batched or alone.

Host syncs: one per logging step for the whole bundle (every member's train losses and per-layer
norms in one `.tolist()`), one per evaluation, one per checkpoint step; none in a plain step.

Members at different steps (one was stopped on its own, say, and the bundle is resumed): the bundle
starts with the members at the lowest step and a member joins when the bundle reaches its step, so
the stack always holds members at one step (one schedule position, one logging cadence). Members of a
bundle usually stop together (Ctrl-C, a killed worker: all resume from the same checkpoint step), so
this costs nothing then; otherwise the members ahead wait, which is correct and simple.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from scaletui.core.datasets import DATASETS
from scaletui.core.records import ModelInfo, RunOutcome, Sink, StopSignal
from scaletui.core.specs import RunSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.engine.bundles import STACKABLE_ARCHS, check_bundle
from scaletui.engine.checkpoints import load_latest_checkpoint, save_checkpoint
from scaletui.engine.data import load_dataset, resolve_device
from scaletui.engine.loop import (
    _TORCH_OOM,
    CHECKPOINT_KEYS,
    EVAL_BATCH,
    TRAIN_ACC_EXAMPLES,
    EpochSampler,
    OutOfMemory,
    Progress,
    _first_line,
    check_memory,
    checkpoint_payload,
    record_eval,
    record_losses,
    record_noise,
    restore_run,
)
from scaletui.engine.models import build_model, forward_flops, model_info, weight_layers
from scaletui.engine.noise_scale import half_gradients, half_size, measures_noise, member_squared_norms
from scaletui.engine.optim import build_optimizer, lr_at
from scaletui.engine.stacked import StackedModel, StackedProbe, evaluate_members, member_losses
from scaletui.engine.stacked_optim import MemberOptState, StackedOptimizer, clip_members

#: On a CPU, batching pays while a step's matmuls are small enough for dispatch overhead to dominate.
#: Measured with benchmarks/bundle_gain.py (2 shared cores, one thread, the default sweep's resmlp with layer
#: norm, dropout and AdamW, batch 128; CPU time per member-step, the same runs alone vs one bundle of 16),
#: against the forward MFLOP per weight layer and step: 1.81x at 2.9 (width 160, depth 1), 1.47x at 2.8 (128 x
#: 3), 1.26x at 4.3 (160 x 3), 1.12x at 4.7 (160 x 4), 1.04x at 5.2 (160 x 6); bundles of 8: 1.24x at 5.3
#: (192 x 2), 1.07x at 9.2 (256 x 2). (Before bundles' Adam ran the fused kernel: 1.00x at 3.4, 0.88x at 9.2.)
#: Above the limit batched matmuls run no faster than separate ones and a bundle's larger working set
#: costs cache: the runner trains those runs alone.
CPU_MAX_LAYER_FLOPS = 6e6
#: On a GPU a small model leaves most of the device idle and every op is a kernel launch, so stacking
#: pays up to much larger models; this only keeps very large ones alone.
CUDA_MAX_LAYER_FLOPS = 1e10


def worth_batching(spec: RunSpec) -> bool:
    """Whether a bundle of runs like `spec` trains faster than the same runs alone, on the device the
    run resolves to: its forward FLOPs per weight layer and step against the measured limit above."""
    if spec.model.arch not in STACKABLE_ARCHS:
        return False
    info = DATASETS[spec.data.dataset]
    with torch.device("meta"):  # shapes only: no storage, no random draws
        model = build_model(spec.model, info.input_shape, info.num_classes, initialise=False)
        per_layer = spec.train.batch_size * forward_flops(model, info.input_shape) / len(weight_layers(model))
    limit = CUDA_MAX_LAYER_FLOPS if resolve_device(spec.train.device).type == "cuda" else CPU_MAX_LAYER_FLOPS
    return per_layer <= limit


@dataclass
class Member:
    """One run of a bundle, as the caller hands it over: what it is, where its records and
    checkpoints go, what stops it, and (like train_run's resume_at_most) how far its records reach."""

    spec: RunSpec
    sink: Sink
    stop: StopSignal
    checkpoint_dir: Path
    resume_at_most: int | None = None


@dataclass
class _Run:
    """A member while the bundle trains: what loop.py keeps for one run. Its weights and optimizer
    state live in the stack while it is active, here while it waits to join (and after it leaves)."""

    index: int
    member: Member
    info: ModelInfo
    groups: list[dict[str, Any]]  # its torch optimizer's param_groups: the format of its checkpoints
    sampler: EpochSampler
    progress: Progress
    rng: torch.Generator  # its dropout masks
    cpu_rng: torch.Tensor  # the torch_rng its checkpoints record when rng is a CUDA generator
    y_train: torch.Tensor  # (N,) its labels (label noise is chosen by its seed)
    model_state: dict[str, torch.Tensor] | None
    opt_state: MemberOptState | None
    outcome: RunOutcome | None = None

    @property
    def spec(self) -> RunSpec:
        return self.member.spec

    @property
    def sink(self) -> Sink:
        return self.member.sink

    def lr(self, step: int) -> float:
        return lr_at(step, self.spec.train, self.info.lr)


@dataclass
class _Stack:
    """The active members as one stacked model, with its optimizer and probe."""

    runs: list[_Run]
    model: StackedModel
    optimizer: StackedOptimizer
    probe: StackedProbe
    labels: torch.Tensor | None  # (M, N) when members' labels differ, else None (shared)
    pending: list[torch.Tensor] = field(default_factory=list)  # (M,) train losses not yet on the host


def train_bundle(
    members: Sequence[Member],
    *,
    data_dir: Path,
    device: torch.device | None = None,
    memory_limit_mb: float | None = None,
    on_finished: Callable[[int, RunOutcome], None] = lambda index, outcome: None,
) -> list[RunOutcome]:
    """Train `members` (runs with one `bundle_key`) as one stacked model; returns their outcomes in order.

    Each member ends as train_run would end it alone (DONE, EARLY_STOPPED, DIVERGED, or INTERRUPTED
    with a checkpoint); `on_finished(index, outcome)` is called as each one ends, its sink flushed.
    Exceptions propagate after every sink is flushed (members that already ended have been reported);
    running out of memory raises `OutOfMemory` as train_run does.
    """
    check_bundle([m.spec for m in members])
    device = device if device is not None else resolve_device(members[0].spec.train.device)
    try:
        return _Bundle(list(members), Path(data_dir), device, memory_limit_mb, on_finished).train()
    except OutOfMemory:
        raise
    except (_TORCH_OOM, MemoryError) as exc:
        raise OutOfMemory(f"{device} ran out of memory ({_first_line(exc)})") from exc
    finally:
        for member in members:
            member.sink.flush()


class _Bundle:
    """The batched loop; `train()` reads like loop._train, with a list of members where it has one run."""

    def __init__(self, members: list[Member], data_dir: Path, device: torch.device, memory_limit_mb: float | None,
                 on_finished: Callable[[int, RunOutcome], None]) -> None:
        self.members = members
        self.data_dir = data_dir
        self.device = device
        self.memory_limit_mb = memory_limit_mb
        self.on_finished = on_finished
        self.tc = members[0].spec.train  # what members share: steps, cadences, clipping, early stopping
        self.stack: _Stack | None = None

    # ----------------------------------------------------------------- setting up

    def train(self) -> list[RunOutcome]:
        spec = self.members[0].spec
        self.data = load_dataset(replace(spec.data, label_noise=0.0), self.data_dir, spec.seed, self.device)
        for member in self.members:
            check_memory(member.spec, self.data, self.memory_limit_mb)
        with torch.device("meta"):  # the structure every member shares; no storage, no random draws
            self.template = build_model(spec.model, self.data.input_shape, self.data.num_classes, initialise=False)
        runs = [self._prepare(i, member) for i, member in enumerate(self.members)]
        waiting = sorted(runs, key=lambda r: r.progress.step)
        while waiting:
            step = waiting[0].progress.step
            joining = [r for r in waiting if r.progress.step == step]
            waiting = [r for r in waiting if r.progress.step != step]
            self._train_from(step, joining, waiting[0].progress.step if waiting else None)
            waiting = sorted(waiting + self._release_stack(), key=lambda r: r.progress.step)
        return [r.outcome or r.progress.outcome(RunStatus.INTERRUPTED) for r in runs]

    def _prepare(self, index: int, member: Member) -> _Run:
        """Build the member as train_run builds a run alone, resume it from its checkpoint, tell its sink."""
        spec, tc = member.spec, member.spec.train
        torch.manual_seed(spec.seed)
        module = build_model(spec.model, self.data.input_shape, self.data.num_classes).to(self.device)
        cpu_rng = torch.get_rng_state()  # where the unbatched loop's dropout would start drawing
        info = model_info(module, self.data.input_shape, tc)
        optimizer = build_optimizer(list(module.parameters()), tc, info.lr)
        sampler = EpochSampler(len(self.data.y_train), tc.batch_size, spec.seed, self.device)
        progress = Progress(log_window=tc.log_every)
        saved = load_latest_checkpoint(member.checkpoint_dir, member.sink, CHECKPOINT_KEYS,
                                       max_step=member.resume_at_most)
        if saved is not None:
            progress = restore_run(saved, spec, module, optimizer, sampler)
            cpu_rng = saved["torch_rng"]
        member.sink.started(info, resumed_from=progress.step)
        return _Run(index, member, info, optimizer.state_dict()["param_groups"], sampler, progress,
                    self._generator(spec.seed, cpu_rng, saved), cpu_rng, self._labels(spec),
                    module.state_dict(), MemberOptState.from_torch(optimizer, tc.optimizer, progress.step))

    def _generator(self, seed: int, cpu_rng: torch.Tensor, saved: dict[str, Any] | None) -> torch.Generator:
        """A member's dropout generator: on a CPU the global generator's state (as alone); on CUDA a CUDA
        generator seeded as torch.manual_seed seeds the global one, or its checkpoint's state."""
        rng = torch.Generator(device=self.device)
        if self.device.type != "cuda":
            rng.set_state(cpu_rng)
        elif saved is not None and saved.get("cuda_rng") is not None:
            rng.set_state(saved["cuda_rng"])
        else:
            rng.manual_seed(seed)
        return rng

    def _labels(self, spec: RunSpec) -> torch.Tensor:
        """The member's training labels: the shared ones, or its own when label noise is chosen by its seed."""
        if spec.data.label_noise == 0:
            return self.data.y_train
        own = load_dataset(spec.data, self.data_dir, spec.seed, torch.device("cpu"))
        return own.y_train.to(self.device)

    # ----------------------------------------------------------------- the stack

    def _build_stack(self, runs: list[_Run]) -> _Stack:
        states = [r.model_state for r in runs]
        opt_states = [r.opt_state for r in runs]
        assert all(s is not None for s in states) and all(s is not None for s in opt_states)
        model = StackedModel(self.template, states, [r.rng for r in runs])  # type: ignore[arg-type]
        optimizer = StackedOptimizer(self.tc.optimizer, model.params, opt_states,  # type: ignore[arg-type]
                                     [r.spec.train.weight_decay for r in runs], runs[0].groups[0])
        for r in runs:  # now in the stack: free the member's own copies
            r.model_state, r.opt_state = None, None
        shared = runs[0].spec.data.label_noise == 0
        labels = None if shared else torch.stack([r.y_train for r in runs])
        return _Stack(runs, model, optimizer, StackedProbe(model), labels)

    def _release_stack(self) -> list[_Run]:
        """Take every member still active out of the stack (their state back into `_Run`); returns them."""
        stack, self.stack = self.stack, None
        if stack is None:
            return []
        return self._unstack(stack, [r for r in stack.runs if r.outcome is None])

    @staticmethod
    def _unstack(stack: _Stack, keep: list[_Run]) -> list[_Run]:
        for i, r in enumerate(stack.runs):
            if r in keep:
                r.model_state, r.opt_state = stack.model.member_state(i), stack.optimizer.member_state(i)
        return keep

    def _restack(self, joining: Sequence[_Run] = ()) -> None:
        """Rebuild the stack from the members still active (and `joining`): departed members cost nothing."""
        active = self._release_stack() + list(joining)
        self.stack = self._build_stack(active) if active else None

    # ----------------------------------------------------------------- the loop

    def _train_from(self, start: int, joining: list[_Run], until: int | None) -> None:
        """Train `joining` (all at step `start`) until they end, or until step `until`, where more join."""
        self._restack(joining)
        if start == 0:
            self._evaluate(0)
        for step in range(start + 1, self.tc.steps + 1):
            if self.stack is not None and step - 1 == until:
                self._send(step - 1)  # the window's losses, before the stack changes shape
                self._settle()
                return
            if self.stack is None:
                return
            self._stop_requested(step - 1)
            if self.stack is None:
                return
            self._one_step(step)
        for r in self.stack.runs if self.stack else []:
            self._leave(r, r.progress.outcome(RunStatus.DONE))
        self.stack = None

    def _one_step(self, step: int) -> None:
        """One optimizer update of every active member, then the host syncs this step calls for."""
        stack, tc = self.stack, self.tc
        assert stack is not None
        lrs = [r.lr(step) for r in stack.runs]
        idx = torch.stack([r.sampler.next() for r in stack.runs])  # (M, B)
        x = self.data.x_train[idx]  # (M, B, *input_shape)
        y = self.data.y_train[idx] if stack.labels is None else torch.gather(stack.labels, 1, idx)  # (M, B)
        logits = stack.model(x)  # (M, B, num_classes)
        losses = member_losses(logits, y)  # (M,)
        batch = stack.runs[0].sampler.batch_size
        half = None
        if measures_noise(step, tc.log_every, batch):  # every member's first-half gradient (loop.py's way)
            h = half_size(batch)
            half = half_gradients(member_losses(logits[:, :h], y[:, :h]).sum(), list(stack.model.params.views.values()))
        stack.model.backward(losses)
        noise = None if half is None else member_squared_norms(half, stack.model.params.grad, batch)  # (2, M)
        log_now = step % tc.log_every == 0 or step == tc.steps
        if log_now:
            stack.probe.before_step(grads_will_change=tc.grad_clip is not None)
        if tc.grad_clip is not None:
            clip_members(stack.model.params, tc.grad_clip)
        stack.optimizer.step(lrs)
        stack.pending.append(losses.detach())
        for r in stack.runs:
            r.progress.step = step

        eval_now = step % tc.eval_every == 0 or step == tc.steps
        checkpoint_now = step % tc.checkpoint_every == 0 and step < tc.steps
        if log_now:
            self._send(step, lrs, stack.probe.after_step(), noise)
        elif eval_now or checkpoint_now:
            self._send(step)
        stack.model.params.zero_grad()  # after logging: the rare NaN count reads the grads
        self._settle()
        if eval_now and self.stack is not None:
            self._evaluate(step)
        if checkpoint_now and self.stack is not None:
            for i, r in enumerate(self.stack.runs):
                self._checkpoint(self.stack, i, r)

    def _send(self, step: int, lrs: list[float] | None = None, norms: torch.Tensor | None = None,
              noise: torch.Tensor | None = None) -> None:
        """Every member's pending train losses (and layer norms, and the (2, M) squared norms of a noise
        measurement) to the host in ONE .tolist(), then to each member's sink; members whose losses
        diverged leave (at the next `_settle`)."""
        stack = self.stack
        if stack is None or not stack.pending:
            return
        window, n_norms = len(stack.pending), 0 if norms is None else len(norms)
        parts = stack.pending + ([] if norms is None else list(norms)) + ([] if noise is None else list(noise))
        columns = list(zip(*torch.stack(parts).tolist(), strict=True))  # (W [+ 3T] [+ 2], M) -> host: the sync
        stack.pending.clear()
        for i, r in enumerate(stack.runs):
            values = list(columns[i])
            stats = None if norms is None else stack.probe.layer_stats(i, step, values[window : window + n_norms])
            lr = None if lrs is None else lrs[i]
            error = record_losses(step, values[:window], r.progress, self.tc.divergence_factor, r.sink, lr, stats)
            if noise is not None:
                record_noise(step, values[-2], values[-1], r.sampler, r.progress, r.sink)
            if error is not None:
                r.outcome = r.progress.outcome(RunStatus.DIVERGED, error)

    def _evaluate(self, step: int) -> None:
        """Evaluate every active member (one host sync), record it, and let ended members leave."""
        stack = self.stack
        assert stack is not None
        stack.model.train(False)
        n_train = min(TRAIN_ACC_EXAMPLES, len(self.data.y_train))
        train_labels = self.data.y_train[:n_train] if stack.labels is None else stack.labels[:, :n_train]
        with torch.inference_mode():
            test = evaluate_members(stack.model, self.data.x_test, self.data.y_test, EVAL_BATCH)
            train = evaluate_members(stack.model, self.data.x_train[:n_train], train_labels, EVAL_BATCH)
            rows = torch.cat([test, train], dim=1).tolist()  # (M, 4) -> host
        stack.model.train(True)
        n_test = len(self.data.y_test)
        for r, (test_loss_sum, test_correct, _, train_correct) in zip(stack.runs, rows, strict=True):
            m = {"test_loss": test_loss_sum / n_test, "test_acc": test_correct / n_test,
                 "train_acc": train_correct / n_train}
            ended = record_eval(step, m, r.progress, self.tc.early_stopping, r.sink)
            if ended is not None:
                r.outcome = ended
        self._settle()

    def _stop_requested(self, step: int) -> None:
        """Members asked to stop before `step + 1` send their losses, checkpoint and leave as INTERRUPTED
        (or DIVERGED, if their last losses say so), as train_run's stop does; the others go on."""
        stack = self.stack
        assert stack is not None
        stopping = [r for r in stack.runs if r.member.stop.is_set()]
        if not stopping:
            return
        self._send(step)
        for i, r in enumerate(stack.runs):
            if r in stopping and r.outcome is None:
                self._checkpoint(stack, i, r)
                r.outcome = r.progress.outcome(RunStatus.INTERRUPTED)
        self._settle()

    def _settle(self) -> None:
        """Members that ended leave: report them, then rebuild the stack without them."""
        stack = self.stack
        if stack is None:
            return
        ended = [r for r in stack.runs if r.outcome is not None]
        if not ended:
            return
        for r in ended:
            self._leave(r, r.outcome)  # type: ignore[arg-type]
        self._restack()

    def _leave(self, r: _Run, outcome: RunOutcome) -> None:
        r.outcome = outcome
        r.sink.flush()
        self.on_finished(r.index, outcome)

    def _checkpoint(self, stack: _Stack, i: int, r: _Run) -> None:
        """Member i's checkpoint, in its own folder, in the unbatched format (its sink flushed first)."""
        r.sink.flush()
        step = r.progress.step
        optimizer_state = stack.optimizer.member_state_dict(i, stack.model.slots, r.groups, r.lr(step))
        own_rng = r.rng.get_state()
        torch_rng, cuda_rng = (r.cpu_rng, own_rng) if self.device.type == "cuda" else (own_rng, None)
        payload = checkpoint_payload(r.spec, r.progress, stack.model.member_state(i), optimizer_state,
                                     r.sampler, torch_rng, cuda_rng)
        save_checkpoint(r.member.checkpoint_dir, step, payload)
