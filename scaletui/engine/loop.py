"""The training loop: one run of a sweep, from scratch or from its last checkpoint.

It reads like nanoGPT's train.py on purpose: one visible loop, helpers that are
pure or small. What it measures goes to a `Sink` and it watches a `StopSignal`;
it does not know whether a database, a test or a benchmark is listening.

Host syncs are the expensive thing on a GPU and not free on a CPU, so the step
itself never forces one. Train losses stay on the device as 0-d tensors until
a logging step (every `log_every` steps, and the last step), where they travel
to the host together with the per-layer norms in a single `.tolist()`.
Evaluations, checkpoints and stopping sync too, as they must.

Reproducibility: the model is initialised after `torch.manual_seed(spec.seed)`,
the batch order comes from a generator of its own seeded with `spec.seed`, and
a checkpoint holds both RNG states, the current epoch's permutation and the
position in it, so a resumed run retraces an uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scaletui.core.records import LayerStats, MetricRecord, RunOutcome, Sink, StopSignal
from scaletui.core.specs import EarlyStopping, RunSpec
from scaletui.core.vocabulary import (
    NOISE_G2_METRIC,
    NOISE_SCALE_METRIC,
    NOISE_TRACE_METRIC,
    TEST_ACC_METRIC,
    TEST_LOSS_METRIC,
    TRAIN_ACC_METRIC,
    TRAIN_LOSS_METRIC,
    DebiasedEma,
    EarlyStoppingMetric,
    RunStatus,
)
from scaletui.engine.checkpoints import load_latest_checkpoint, save_checkpoint
from scaletui.engine.data import Dataset, load_dataset, resolve_device
from scaletui.engine.models import (
    build_model,
    model_info,
    training_memory_bytes,
    weight_layers,
)
from scaletui.engine.noise_scale import (
    half_gradients,
    half_size,
    measurement_pieces,
    measures_noise,
    squared_norms,
    tensor_norms,
)
from scaletui.engine.optim import build_optimizer, lr_at
from scaletui.engine.probes import LayerProbe

EVAL_BATCH = 1024  # examples per forward pass when evaluating
TRAIN_ACC_EXAMPLES = 2000  # train_acc is measured on (up to) this many training examples
CHECKPOINT_KEYS = ("run_key", "step", "model", "optimizer", "torch_rng", "sampler", "progress")
_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class OutOfMemory(MemoryError):
    """The run does not fit: over the configured memory limit (checked before allocating) or the
    device ran out. Only this run fails; its message says how much it needed."""


# --------------------------------------------------------------------------- batches


class EpochSampler:
    """Indices of the next batch: a fresh permutation each epoch from the run's own generator.
    The last partial batch of an epoch is dropped, so every step sees `batch_size` examples."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._shuffle()

    def _shuffle(self) -> None:
        self.perm = torch.randperm(self.n, generator=self.generator)  # (N,) int64 on CPU
        self._perm_on_device = self.perm.to(self.device)  # one copy per epoch, not per step
        self.pos = 0

    def next(self) -> torch.Tensor:
        """(batch_size,) int64 indices on the device."""
        if self.pos + self.batch_size > self.n:
            self._shuffle()
            self.epoch += 1
        idx = self._perm_on_device[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        state = {"generator": self.generator.get_state(), "perm": self.perm.clone()}  # uint8 / int64 tensors
        return {**state, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self._perm_on_device = self.perm.to(self.device)
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])


# --------------------------------------------------------------------------- what a run remembers


@dataclass
class Progress:
    """Everything a run tracks besides model, optimizer and RNGs; all of it goes into checkpoints."""

    log_window: int
    step: int = 0
    first_loss: float | None = None  # train loss of step 1: the divergence reference
    recent: deque[float] = field(default_factory=deque)  # last `log_window` train losses
    last_test_loss: float | None = None
    last_test_acc: float | None = None
    best_test_loss: float | None = None
    best_step: int | None = None
    ema: float = 0.0  # EMA of test losses after step 0, not yet debiased
    ema_count: int = 0
    stop_best: float | None = None  # early stopping: best value of its metric so far
    stop_bad: int = 0  # early stopping: evaluations since it last improved
    noise_g2: float = 0.0  # gradient noise scale: EMA of the |G|^2 estimates, not yet debiased
    noise_trace: float = 0.0  # and of the tr(Sigma) estimates
    noise_count: int = 0

    def __post_init__(self) -> None:
        self.recent = deque(self.recent, maxlen=self.log_window)

    def record_train(self, first_step: int, losses: list[float]) -> None:
        if first_step == 1 and self.first_loss is None:
            self.first_loss = losses[0]
        self.recent.extend(losses)

    def record_eval(self, step: int, test_loss: float, test_acc: float) -> None:
        self.last_test_loss, self.last_test_acc = test_loss, test_acc
        if self.best_test_loss is None or test_loss < self.best_test_loss:
            self.best_test_loss, self.best_step = test_loss, step
        if step > 0:  # the untrained model's loss would bias a short sequence of evaluations
            ema = DebiasedEma(raw=self.ema, count=self.ema_count)
            ema.update(test_loss)
            self.ema, self.ema_count = ema.raw, ema.count

    def record_noise(self, g2: float, trace: float) -> float | None:
        """Add one measurement's unbiased |G|^2 and tr(Sigma); returns the running B_simple: the ratio of
        their debiased EMAs (None while the |G|^2 average is not positive)."""
        g2_ema = DebiasedEma(raw=self.noise_g2, count=self.noise_count)
        trace_ema = DebiasedEma(raw=self.noise_trace, count=self.noise_count)
        g2_ema.update(g2)
        trace_ema.update(trace)
        self.noise_g2, self.noise_trace, self.noise_count = g2_ema.raw, trace_ema.raw, g2_ema.count
        return trace_ema.value / g2_ema.value if g2_ema.value > 0 else None

    @property
    def smoothed_test_loss(self) -> float | None:
        """Debiased EMA (beta 0.9) over the evaluations after step 0."""
        if self.ema_count == 0:
            return None
        return DebiasedEma(raw=self.ema, count=self.ema_count).value

    def outcome(self, status: RunStatus, error: str | None = None) -> RunOutcome:
        return RunOutcome(
            status=status,
            step=self.step,
            error=error,
            final_train_loss=sum(self.recent) / len(self.recent) if self.recent else None,
            final_test_loss=self.last_test_loss,
            final_test_acc=self.last_test_acc,
            best_test_loss=self.best_test_loss,
            best_step=self.best_step,
            smoothed_test_loss=self.smoothed_test_loss,
        )

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "recent"}
        state["recent"] = list(self.recent)
        return state

    @staticmethod
    def from_state(state: dict[str, Any]) -> Progress:
        return Progress(**state)


def early_stop(progress: Progress, rule: EarlyStopping, test_loss: float, test_acc: float) -> bool:
    """Update the early-stopping state with one evaluation; True when patience has run out."""
    if rule.patience <= 0:
        return False
    if rule.metric not in EarlyStoppingMetric.choices():
        raise ValueError(f"unknown early_stopping.metric {rule.metric!r}; expected one of "
                         f"{', '.join(EarlyStoppingMetric.choices())}")
    lower_is_better = EarlyStoppingMetric(rule.metric).lower_is_better
    value = test_loss if lower_is_better else test_acc
    best = progress.stop_best
    improved = best is None or (value < best - rule.min_delta if lower_is_better else value > best + rule.min_delta)
    if improved:
        progress.stop_best, progress.stop_bad = value, 0
        return False
    progress.stop_bad += 1
    return progress.stop_bad >= rule.patience


def divergence(first_step: int, losses: list[float], first_loss: float | None, factor: float) -> str | None:
    """Why these train losses (of steps first_step, first_step+1, ...) mean divergence, or None."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return f"train loss is {loss} at step {first_step + i}"
        if first_loss is not None and loss > factor * first_loss:
            return f"train loss {loss:.4g} > {factor:g} x first loss {first_loss:.4g} at step {first_step + i}"
    return None


# --------------------------------------------------------------------------- evaluation


def evaluate(model: nn.Module, data: Dataset) -> dict[str, float]:
    """test_loss and test_acc on the whole test split, train_acc on up to 2000 training examples.
    One host sync."""
    was_training = model.training
    model.eval()
    n_train = min(TRAIN_ACC_EXAMPLES, len(data.y_train))
    with torch.inference_mode():
        test = _loss_and_correct(model, data.x_test, data.y_test)  # (2,) on device
        train = _loss_and_correct(model, data.x_train[:n_train], data.y_train[:n_train])
        test_loss_sum, test_correct, _, train_correct = torch.cat([test, train]).tolist()  # host sync
    model.train(was_training)
    n_test = len(data.y_test)
    return {
        "test_loss": test_loss_sum / n_test,
        "test_acc": test_correct / n_test,
        "train_acc": train_correct / n_train,
    }


def _loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(summed cross-entropy, number correct) over x in batches, as a float64 (2,) tensor on the device."""
    total = torch.zeros(2, dtype=torch.float64, device=x.device)
    for i in range(0, len(y), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])  # (b, num_classes)
        target = y[i : i + EVAL_BATCH]
        total[0] += F.cross_entropy(logits.float(), target, reduction="sum")
        total[1] += (logits.argmax(dim=1) == target).sum()
    return total


# --------------------------------------------------------------------------- the loop


def train_run(
    spec: RunSpec,
    sink: Sink,
    stop: StopSignal,
    *,
    data_dir: Path,
    checkpoint_dir: Path,
    device: torch.device | None = None,
    memory_limit_mb: float | None = None,
    resume_at_most: int | None = None,
) -> RunOutcome:
    """Train `spec` to its end, an early stop, a divergence or `stop`; resume from `checkpoint_dir` if possible.

    `resume_at_most` is the last step whose records the sink's owner already holds (None: no
    limit): a checkpoint past it is not resumed from, since the records between would be missing.
    Returns DONE, EARLY_STOPPED, DIVERGED (error says why and when) or INTERRUPTED (a checkpoint
    was written). Exceptions propagate, after the sink is flushed; running out of memory (the
    estimate over `memory_limit_mb`, or the device's own OOM) raises `OutOfMemory`.
    """
    device = device if device is not None else resolve_device(spec.train.device)
    try:
        return _train(spec, sink, stop, Path(data_dir), Path(checkpoint_dir), device, memory_limit_mb, resume_at_most)
    except OutOfMemory:
        raise
    except (_TORCH_OOM, MemoryError) as exc:
        raise OutOfMemory(f"{device} ran out of memory ({_first_line(exc)})") from exc
    finally:
        sink.flush()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_memory(spec: RunSpec, data: Dataset, limit_mb: float | None) -> None:
    """Refuse, before allocating anything, a run whose estimated training memory exceeds `limit_mb`."""
    if limit_mb is None:
        return
    need = training_memory_bytes(spec.model, data.input_shape, data.num_classes, spec.train.optimizer,
                                 spec.train.batch_size) / 2**20
    if need > limit_mb:
        raise OutOfMemory(f"needs ~{need:,.1f} MiB (weights, gradients, {spec.train.optimizer} state and "
                          f"one batch of activations), over experiment.memory_limit_mb = {limit_mb:g}")


def _train(
    spec: RunSpec, sink: Sink, stop: StopSignal, data_dir: Path, ckpt_dir: Path, device: torch.device,
    memory_limit_mb: float | None = None, resume_at_most: int | None = None,
) -> RunOutcome:
    tc = spec.train
    data = load_dataset(spec.data, data_dir, spec.seed, device)
    check_memory(spec, data, memory_limit_mb)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes).to(device)
    info = model_info(model, data.input_shape, tc)
    params = list(model.parameters())
    optimizer = build_optimizer(params, tc, info.lr)
    probe = LayerProbe(weight_layers(model))
    sampler = EpochSampler(len(data.y_train), tc.batch_size, spec.seed, device)
    progress = Progress(log_window=tc.log_every)

    saved = load_latest_checkpoint(ckpt_dir, sink, CHECKPOINT_KEYS, max_step=resume_at_most)
    if saved is not None:
        progress = _restore(saved, spec, model, optimizer, sampler, device)
    sink.started(info, resumed_from=progress.step)

    if progress.step == 0:
        ended = _eval_step(0, model, data, progress, tc.early_stopping, sink)
        if ended is not None:
            return ended

    pending: list[torch.Tensor] = []  # 0-d train losses on the device, not yet sent to the host
    lr: float | None = None
    for step in range(progress.step + 1, tc.steps + 1):
        if stop.is_set():
            error = _send_losses(step - 1, pending, progress, tc.divergence_factor, sink)
            if error is not None:
                return progress.outcome(RunStatus.DIVERGED, error)
            _checkpoint(ckpt_dir, spec, model, optimizer, sampler, progress, device, sink)
            return progress.outcome(RunStatus.INTERRUPTED)

        # ---- one optimizer update; nothing here waits for the device
        step_lr = lr_at(step, tc, info.lr)
        if step_lr != lr:
            lr = step_lr
            for group in optimizer.param_groups:
                group["lr"] = lr
        idx = sampler.next()  # (B,)
        logits = model(data.x_train[idx])  # (B, *input_shape) -> (B, num_classes)
        loss = F.cross_entropy(logits, data.y_train[idx])
        log_now = step % tc.log_every == 0 or step == tc.steps
        half = None
        # A measuring step is always a logging step: asked only then (this loop's steps are ~1 ms at width 64)
        if log_now and measures_noise(step, tc.log_every, sampler.batch_size):
            h = half_size(sampler.batch_size)  # the first half's gradient, through this step's graph
            half = half_gradients(F.cross_entropy(logits[:h], data.y_train[idx[:h]]), params)
        loss.backward()
        noise = None if half is None else tensor_norms(half, _grads(params), sampler.batch_size)
        if log_now:
            probe.before_step(grads_will_change=tc.grad_clip is not None)  # weight snapshot
        if tc.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, tc.grad_clip, foreach=True)
        optimizer.step()
        pending.append(loss.detach())
        progress.step = step

        # ---- logging, evaluation, checkpoint: the host syncs
        eval_now = step % tc.eval_every == 0 or step == tc.steps
        checkpoint_now = step % tc.checkpoint_every == 0 and step < tc.steps
        error = None
        if log_now:
            norms = probe.after_step()  # 3T 0-d tensors on the device
            error = _send_losses(step, pending, progress, tc.divergence_factor, sink, lr, probe, norms,
                                 noise, sampler)
        elif eval_now or checkpoint_now:
            error = _send_losses(step, pending, progress, tc.divergence_factor, sink)
        optimizer.zero_grad(set_to_none=True)  # after logging: the rare NaN count reads the grads
        if error is not None:
            return progress.outcome(RunStatus.DIVERGED, error)
        if eval_now:
            ended = _eval_step(step, model, data, progress, tc.early_stopping, sink)
            if ended is not None:
                return ended
        if checkpoint_now:
            _checkpoint(ckpt_dir, spec, model, optimizer, sampler, progress, device, sink)

    return progress.outcome(RunStatus.DONE)


def _send_losses(
    step: int,
    pending: list[torch.Tensor],
    progress: Progress,
    factor: float,
    sink: Sink,
    lr: float | None = None,
    probe: LayerProbe | None = None,
    norms: list[torch.Tensor] | None = None,
    noise: list[torch.Tensor] | None = None,
    sampler: EpochSampler | None = None,
) -> str | None:
    """Move the window's train losses (and the probe's norms and the noise measurement's per-tensor norms
    of one of `sampler`'s batches, if given) to the host in ONE .tolist(), send them to the sink, clear
    the window. Returns why the run diverged, or None."""
    if not pending:
        return None
    norms = norms or []
    values = torch.stack(pending + norms + (noise or [])).tolist()  # (W + 3T [+ 2T or 3T],) -> host: the sync
    window = len(pending)
    pending.clear()
    stats = probe.layer_stats(step, values[window : window + len(norms)]) if probe is not None and norms else None
    error = record_losses(step, values[:window], progress, factor, sink, lr, stats)
    if noise is not None and sampler is not None:
        sq_small, sq_big = squared_norms(values[len(values) - len(noise) :], sampler.batch_size)
        record_noise(step, sq_small, sq_big, sampler, progress, sink)
    return error


def _grads(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters' gradients after backward (zeros for a parameter the loss did not reach)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in params]


def record_noise(step: int, sq_small: float, sq_big: float, sampler: EpochSampler, progress: Progress,
                 sink: Sink) -> None:
    """Record one noise-scale measurement (host values of engine/noise_scale.py's squared norms of one
    of `sampler`'s batches): its unbiased |G|^2 and tr(Sigma), and the running B_simple. A non-finite
    measurement (a diverging run) is left out, so it cannot poison the running average. Shared with
    the batched loop."""
    g2, trace = measurement_pieces(sq_small, sq_big, sampler.batch_size, sampler.n)
    if not (math.isfinite(g2) and math.isfinite(trace)):
        return
    rows = [MetricRecord(step, NOISE_G2_METRIC, g2), MetricRecord(step, NOISE_TRACE_METRIC, trace)]
    b_simple = progress.record_noise(g2, trace)
    if b_simple is not None:
        rows.append(MetricRecord(step, NOISE_SCALE_METRIC, b_simple))
    sink.metrics(rows)


def record_losses(
    step: int,
    losses: list[float],
    progress: Progress,
    factor: float,
    sink: Sink,
    lr: float | None = None,
    stats: list[LayerStats] | None = None,
) -> str | None:
    """Send one window of train losses (host values of the steps up to `step`), the lr and the layer
    statistics to the sink and to `progress`. Returns why the run diverged, or None. The batched loop
    (batched.py) records each member's column of its one host transfer through this too."""
    first = step - len(losses) + 1
    rows = [MetricRecord(first + i, TRAIN_LOSS_METRIC, v) for i, v in enumerate(losses)]
    if lr is not None:
        rows.append(MetricRecord(step, "lr", lr))
    sink.metrics(rows)
    if stats:
        sink.layer_stats(stats)
    progress.record_train(first, losses)
    return divergence(first, losses, progress.first_loss, factor)


def _eval_step(
    step: int, model: nn.Module, data: Dataset, progress: Progress, rule: EarlyStopping, sink: Sink
) -> RunOutcome | None:
    """Evaluate, record, and say whether the run ends here (DIVERGED or EARLY_STOPPED)."""
    return record_eval(step, evaluate(model, data), progress, rule, sink)


def record_eval(
    step: int, m: dict[str, float], progress: Progress, rule: EarlyStopping, sink: Sink
) -> RunOutcome | None:
    """Record one evaluation (`evaluate`'s keys) and say whether the run ends here."""
    sink.metrics([MetricRecord(step, key, m[key]) for key in (TEST_LOSS_METRIC, TEST_ACC_METRIC, TRAIN_ACC_METRIC)])
    progress.record_eval(step, m["test_loss"], m["test_acc"])
    if not math.isfinite(m["test_loss"]):
        return progress.outcome(RunStatus.DIVERGED, f"test loss is {m['test_loss']} at step {step}")
    if early_stop(progress, rule, m["test_loss"], m["test_acc"]):
        return progress.outcome(RunStatus.EARLY_STOPPED)
    return None


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(
    folder: Path,
    spec: RunSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: EpochSampler,
    progress: Progress,
    device: torch.device,
    sink: Sink,
) -> None:
    """Flush the sink first (a checkpoint never refers to records that could still be lost), then save."""
    sink.flush()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    payload = checkpoint_payload(spec, progress, model.state_dict(), optimizer.state_dict(), sampler,
                                 torch.get_rng_state(), cuda_rng)
    save_checkpoint(folder, progress.step, payload)


def checkpoint_payload(
    spec: RunSpec,
    progress: Progress,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
    sampler: EpochSampler,
    torch_rng: torch.Tensor,
    cuda_rng: torch.Tensor | None,
) -> dict[str, Any]:
    """What a checkpoint holds (CHECKPOINT_KEYS, plus the CUDA generator): one format for a run trained
    alone and for a member of a batched bundle, so either can resume the other's checkpoints."""
    return {
        "run_key": spec.key,
        "step": progress.step,
        "model": model_state,
        "optimizer": optimizer_state,
        "torch_rng": torch_rng,  # uint8 tensor
        "cuda_rng": cuda_rng,
        "sampler": sampler.state_dict(),
        "progress": progress.state_dict(),
    }


def _restore(
    saved: dict[str, Any],
    spec: RunSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: EpochSampler,
    device: torch.device,
) -> Progress:
    progress = restore_run(saved, spec, model, optimizer, sampler)
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return progress


def restore_run(
    saved: dict[str, Any], spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer, sampler: EpochSampler
) -> Progress:
    """Load a checkpoint into a run's model, optimizer and sampler (not the random generators, which the
    caller owns: the global ones here, a member's own in batched.py); returns its progress."""
    if saved["run_key"] != spec.key:
        # Someone pointed two runs at one folder; starting over would prune the other run's checkpoints.
        raise ValueError(f"checkpoint belongs to run {saved['run_key']}, not {spec.key}")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    sampler.load_state_dict(saved["sampler"])
    return Progress.from_state(saved["progress"])
