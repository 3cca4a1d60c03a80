"""The gradient noise scale in the training loops: what is measured, when, that it changes nothing about
training, and that every member of a bundle records its own."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaletui.analysis.noise_scale import noise_pieces, running_b_simple
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import NOISE_G2_METRIC, NOISE_SCALE_METRIC, NOISE_TRACE_METRIC, RunStatus
from scaletui.engine import loop, noise_scale
from scaletui.engine.batched import Member, train_bundle
from scaletui.engine.loop import train_run
from scaletui.engine.noise_scale import (
    half_gradients,
    measurement_pieces,
    measures_noise,
    member_squared_norms,
    noise_every,
    squared_norms,
    tensor_norms,
)
from scaletui.engine.sinks import MemorySink
from tests.engine.conftest import StopAfter

NOISE_KEYS = (NOISE_G2_METRIC, NOISE_TRACE_METRIC, NOISE_SCALE_METRIC)


def spec_of(seed: int = 0, model: dict[str, Any] | None = None, **train: Any) -> RunSpec:
    t: dict[str, Any] = dict(optimizer="adam", lr=3e-3, batch_size=128, steps=150, eval_every=50, log_every=5,
                             checkpoint_every=1000, device="cpu")  # fmt: skip
    t.update(train)
    m: dict[str, Any] = dict(arch="mlp", width=16, depth=2, dropout=0.1, norm="batch")
    m.update(model or {})
    return RunSpec("test", DataSpec(train_size=256), ModelSpec(**m), TrainSpec(**t), seed=seed)


def alone(spec: RunSpec, data_dir: Path, ckpt: Path, stop: Any = None, sink: MemorySink | None = None) -> MemorySink:
    sink = sink if sink is not None else MemorySink()
    train_run(spec, sink, stop or threading.Event(), data_dir=data_dir, checkpoint_dir=ckpt)
    return sink


# --------------------------------------------------------------------------- cadence and formulas


@pytest.mark.parametrize(("log_every", "expected"), [(25, 100), (10, 100), (1, 100), (7, 105), (40, 120), (60, 120),
                                                      (100, 100), (150, 150)])
def test_measurements_fall_on_logging_steps_at_least_100_steps_apart(log_every: int, expected: int) -> None:
    assert noise_every(log_every) == expected
    assert expected % log_every == 0


def test_a_batch_of_one_has_no_half_to_measure() -> None:
    assert measures_noise(100, 5, 2) and not measures_noise(100, 5, 1) and not measures_noise(95, 5, 32)


@pytest.mark.parametrize("batch", [32, 33])
def test_the_engine_pieces_are_the_analysis_estimator(batch: int) -> None:
    g2, trace = measurement_pieces(1.7, 1.2, batch, 500)
    expected = noise_pieces([1.7], [1.2], batch // 2, batch, population=500)
    assert (g2, trace) == pytest.approx((float(expected.g2[0]), float(expected.trace[0])), rel=1e-12)


# --------------------------------------------------------------------------- the device-side measurement


def _grads_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _host_squares(half: list[torch.Tensor], full: list[torch.Tensor], batch: int) -> tuple[float, float]:
    """What the loop does: the per-tensor norms on the device, moved to the host, squared and summed there."""
    return squared_norms(torch.stack(tensor_norms(half, full, batch)).tolist(), batch)


def _sq(grads: list[torch.Tensor]) -> float:
    return sum(float(g.double().square().sum()) for g in grads)


@pytest.mark.parametrize("batch", [16, 15])
def test_squared_norms_are_those_of_the_halves_and_the_whole_batch(batch: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(batch, 6), torch.randint(0, 3, (batch,))
    h = batch // 2
    first, second, whole = _grads_of(model, x[:h], y[:h]), _grads_of(model, x[h:], y[h:]), _grads_of(model, x, y)

    model.zero_grad(set_to_none=True)
    logits = model(x)
    params = list(model.parameters())
    half = half_gradients(F.cross_entropy(logits[:h], y[:h]), params)
    F.cross_entropy(logits, y).backward()
    sq_small, sq_big = _host_squares(half, [p.grad for p in params], batch)  # type: ignore[misc]

    expected_small = (_sq(first) + _sq(second)) / 2 if batch % 2 == 0 else _sq(first)
    assert float(sq_small) == pytest.approx(expected_small, rel=1e-5)
    assert float(sq_big) == pytest.approx(_sq(whole), rel=1e-5)
    for p, g in zip(params, whole, strict=True):  # the step's own gradient is untouched by the measurement
        assert torch.allclose(p.grad, g, atol=1e-7)  # type: ignore[arg-type]


def test_member_squared_norms_match_each_members_own() -> None:
    torch.manual_seed(1)
    members, shapes, batch = 3, [(4, 5), (4,)], 10
    half = [torch.randn(members, *s) for s in shapes]
    full_parts = [torch.randn(members, *s) for s in shapes]
    full = torch.cat([g.reshape(members, -1) for g in full_parts], dim=1)  # the (M, P) flat gradient buffer
    got = member_squared_norms(half, full, batch)
    assert got.shape == (2, members)
    for m in range(members):
        sq_small, sq_big = _host_squares([g[m] for g in half], [g[m] for g in full_parts], batch)
        assert float(got[0, m]) == pytest.approx(float(sq_small), rel=1e-6)  # float32 norms
        assert float(got[1, m]) == pytest.approx(float(sq_big), rel=1e-6)


# --------------------------------------------------------------------------- the loops


@pytest.fixture
def measure_every_50(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measurements every 50 steps instead of NOISE_MIN_INTERVAL's 100: three in a 150-step run, so
    these tests of the loops' recording stay short (the cadence itself is tested above)."""
    monkeypatch.setattr(noise_scale, "NOISE_MIN_INTERVAL", 50)


@pytest.mark.usefixtures("measure_every_50")
def test_a_run_records_the_noise_scale_at_its_cadence(mnist1d_dir: Path, tmp_path: Path) -> None:
    sink = alone(spec_of(), mnist1d_dir, tmp_path)
    for key in NOISE_KEYS:
        assert [s for s, _ in sink.series(key)] == [50, 100, 150], key
    g2 = [v for _, v in sink.series(NOISE_G2_METRIC)]
    trace = [v for _, v in sink.series(NOISE_TRACE_METRIC)]
    b_simple = [v for _, v in sink.series(NOISE_SCALE_METRIC)]
    assert all(math.isfinite(v) and v > 0 for v in b_simple)
    # The recorded running value is the analysis module's running estimate of the recorded pieces.
    expected = running_b_simple(noise_pieces_of(g2, trace))
    assert b_simple == pytest.approx(list(expected), rel=1e-9)


def noise_pieces_of(g2: list[float], trace: list[float]) -> Any:
    from scaletui.analysis.noise_scale import NoisePieces

    return NoisePieces(np.asarray(g2), np.asarray(trace))


def test_measuring_changes_nothing_about_training(mnist1d_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_of(steps=110)  # dropout and batch norm: no extra random draws, no extra running statistics
    measured = alone(spec, mnist1d_dir, tmp_path / "a")
    monkeypatch.setattr(loop, "measures_noise", lambda step, log_every, batch: False)
    plain = alone(spec, mnist1d_dir, tmp_path / "b")
    assert not plain.series(NOISE_SCALE_METRIC) and measured.series(NOISE_SCALE_METRIC)
    others = [(r.step, r.key, r.value) for r in measured.metric_rows if r.key not in NOISE_KEYS]
    assert others == [(r.step, r.key, r.value) for r in plain.metric_rows]  # bit for bit
    assert [(r.step, r.layer, r.grad_norm, r.weight_norm, r.update_ratio) for r in measured.layer_rows] == \
        [(r.step, r.layer, r.grad_norm, r.weight_norm, r.update_ratio) for r in plain.layer_rows]


@pytest.mark.usefixtures("measure_every_50")
def test_a_resumed_run_continues_the_running_estimate(mnist1d_dir: Path, tmp_path: Path) -> None:
    spec = spec_of(steps=200)
    reference = alone(spec, mnist1d_dir, tmp_path / "ref")
    first = alone(spec, mnist1d_dir, tmp_path / "ckpt", stop=StopAfter(120))
    second = alone(spec, mnist1d_dir, tmp_path / "ckpt")
    assert second.resumed_from == [120]
    resumed = first.series(NOISE_SCALE_METRIC) + second.series(NOISE_SCALE_METRIC)
    assert [s for s, _ in resumed] == [50, 100, 150, 200]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in reference.series(NOISE_SCALE_METRIC)], rel=1e-6)


@pytest.mark.usefixtures("measure_every_50")
def test_every_member_of_a_bundle_records_its_own_noise_scale(mnist1d_dir: Path, tmp_path: Path) -> None:
    # 100 steps at moderate rates: long enough for two measurements, short enough that float reduction
    # order (batched matmuls) has not yet grown into a different trajectory (it does by step 150 at 1e-2).
    specs = [spec_of(seed=s, model={"dropout": 0.0, "norm": "layer"}, lr=lr, steps=100)
             for s, lr in ((0, 3e-3), (1, 2e-3))]
    sinks = [MemorySink() for _ in specs]
    members = [Member(spec, sink, threading.Event(), tmp_path / "b" / spec.key)
               for spec, sink in zip(specs, sinks, strict=True)]
    outcomes = train_bundle(members, data_dir=mnist1d_dir)
    assert all(o.status is RunStatus.DONE for o in outcomes)
    for spec, sink in zip(specs, sinks, strict=True):
        own = alone(spec, mnist1d_dir, tmp_path / "alone" / spec.key)
        for key in NOISE_KEYS:
            got, want = sink.series(key), own.series(key)
            assert [s for s, _ in got] == [s for s, _ in want] == [50, 100], key
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-3), key
    values = [[v for _, v in sink.series(NOISE_SCALE_METRIC)] for sink in sinks]
    assert values[0] != pytest.approx(values[1], rel=1e-3)  # each member's own, not a shared number


def test_the_measurement_recovers_the_exact_gradient_and_trace_of_a_real_model() -> None:
    """Against exact per-example gradients (torch.func) of a small MLP on a fixed 256-example training set:
    batches drawn as the loop draws them (slices of permutations) and measured as the loop measures them
    give |G|^2 and tr(Sigma) of that training set, within 4 standard errors of the mean of the pieces."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    n, batch = 256, 32
    x, y = torch.randn(n, 8), torch.randint(0, 4, (n,))
    y[: n // 2] = (x[: n // 2, 0] > 0).long()  # some signal, so |G| is not lost in the noise
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    params = list(model.parameters())
    names = [name for name, _ in model.named_parameters()]

    def one_loss(p: tuple[torch.Tensor, ...], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, dict(zip(names, p, strict=True)), (xi[None],)), yi[None])

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))(tuple(p.detach() for p in params), x, y)
    flat = torch.cat([g.reshape(n, -1) for g in per_example], dim=1).double()
    mean = flat.mean(dim=0)
    true_g2, true_trace = float(mean @ mean), float(((flat - mean) ** 2).sum(dim=1).sum() / (n - 1))

    g2s, traces = [], []
    for _ in range(1500):
        idx = torch.randperm(n)[:batch]
        model.zero_grad(set_to_none=True)
        logits = model(x[idx])
        half = half_gradients(F.cross_entropy(logits[: batch // 2], y[idx[: batch // 2]]), params)
        F.cross_entropy(logits, y[idx]).backward()
        sq_small, sq_big = _host_squares(half, [p.grad for p in params], batch)  # type: ignore[misc]
        g2, trace = measurement_pieces(float(sq_small), float(sq_big), batch, n)
        g2s.append(g2)
        traces.append(trace)
    for got, truth in ((np.array(g2s), true_g2), (np.array(traces), true_trace)):
        stderr = got.std(ddof=1) / math.sqrt(len(got))
        assert abs(got.mean() - truth) < 4 * stderr, (got.mean(), truth, stderr)
        assert stderr < 0.1 * truth  # the check has teeth: a 10% bias would fail it
