"""Tiny real models trained into each pathology of the research notes, and the detector that must see it.

Every run trains with the real engine (scaletui.engine.loop.train_run) on MNIST-1D into an in-memory
sink; the series the detectors read is built from exactly the records a database would have stored.
The settings were chosen so the pathology shows with a wide margin on a CPU in about a second per run:

* note 003 - a learning rate tuned on a small net (Adam lr 0.1 is fine at width 16) blows up a wide
  one (width 512), and the sqrt-params rule's suggestion trains it cleanly;
* note 000 - dropout 0.5 held fixed while depth grows starves a depth-8 MLP: it flatlines and ends
  worse than depth 1 by far more than the seed spread;
* note 004 - label noise 0.4 on 500 examples is memorised: train accuracy 100%, test loss climbing;
* note 004 - a plain 24-layer MLP with Xavier init and SGD attenuates gradients towards the input;
  the same depth as a residual MLP with layer norm and He init does not;
* healthy runs raise nothing, alone or as a group.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from scaletui.analysis.diagnose import (  # noqa: E402
    RunSeries,
    Thresholds,
    diagnose_group,
    diagnose_run,
    series_from_records,
)
from scaletui.core.records import RunOutcome  # noqa: E402
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec  # noqa: E402
from scaletui.core.vocabulary import RunStatus  # noqa: E402
from scaletui.engine.loop import train_run  # noqa: E402
from scaletui.engine.sinks import MemorySink  # noqa: E402

pytestmark = pytest.mark.slow
TH = Thresholds()


@pytest.fixture(scope="module")
def data_dir(shared_data_dir: Path) -> Path:
    """MNIST-1D, generated once for the whole run by conftest's `shared_data_dir`."""
    return shared_data_dir


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models train fastest single-threaded; put the setting back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Trained:
    outcome: RunOutcome
    series: RunSeries


def train(data_dir: Path, tmp_path: Path, model: ModelSpec, *, seed: int = 0, data: DataSpec | None = None,
          **train_keys: object) -> Trained:
    """One real run into a MemorySink, returned as its outcome and the series the detectors read."""
    keys = {"batch_size": 64, "steps": 600, "eval_every": 100, "log_every": 10, "checkpoint_every": 10**6,
            "device": "cpu", **train_keys}
    spec = RunSpec("pathologies", data or DataSpec(), model, TrainSpec(**keys), seed)  # type: ignore[arg-type]
    sink = MemorySink()
    outcome = train_run(spec, sink, threading.Event(), data_dir=data_dir, checkpoint_dir=tmp_path / spec.key)
    assert sink.info is not None
    series = series_from_records(sink.metric_rows, sink.layer_rows, run_id=None, width=model.width,
                                 depth=model.depth, params=sink.info.params, lr=sink.info.lr, dropout=model.dropout)
    return Trained(outcome, series)


def kinds(alerts: list) -> set[str]:
    return {a.kind for a in alerts}


def prefix(s: RunSeries, step: float) -> RunSeries:
    """The run as it was stored up to `step`: what the runner's monitor had seen at that moment."""
    train, ev, ls = s.steps <= step, s.eval_steps <= step, s.layer_steps <= step
    return replace(s, steps=s.steps[train], train_loss=s.train_loss[train], eval_steps=s.eval_steps[ev],
                   test_loss=s.test_loss[ev], test_acc=s.test_acc[ev] if s.test_acc.size else s.test_acc,
                   train_acc=s.train_acc[ev] if s.train_acc.size else s.train_acc, layer_steps=s.layer_steps[ls],
                   grad_norm=s.grad_norm[ls], weight_norm=s.weight_norm[ls],
                   nonfinite=s.nonfinite[ls] if s.nonfinite.size else s.nonfinite)


def assert_fires_first_at(s: RunSeries, kind: str, step: int, **kw: object) -> None:
    """The right step: the alert is raised, naming the same step, as soon as the records up to that step
    are stored, and not one record earlier (the step just before it, on the alert's own time axis)."""
    axis = {"overfitting": s.eval_steps, "vanishing_gradients": s.layer_steps}.get(kind, s.steps)
    earlier = axis[axis < step]
    now = [a for a in diagnose_run(prefix(s, step), TH, **kw) if a.kind == kind]  # type: ignore[arg-type]
    assert [a.step for a in now] == [step]
    if earlier.size:
        assert kind not in kinds(diagnose_run(prefix(s, float(earlier[-1])), TH, **kw))  # type: ignore[arg-type]


def test_lr_tuned_on_a_small_net_diverges_a_wide_one(data_dir: Path, tmp_path: Path) -> None:
    small = train(data_dir, tmp_path, ModelSpec(width=16, depth=2), optimizer="adam", lr=0.1)
    assert small.outcome.status is RunStatus.DONE
    assert diagnose_run(small.series, TH) == []

    wide = train(data_dir, tmp_path, ModelSpec(width=512, depth=2), optimizer="adam", lr=0.1)
    assert wide.outcome.status is RunStatus.DIVERGED
    alerts = diagnose_run(wide.series, TH, ref_params=small.series.params)
    assert [a.kind for a in alerts] == ["divergence"]
    [alert] = alerts
    assert alert.severity == "critical" and alert.step is not None and alert.step <= wide.outcome.step
    assert "sqrt-params" in alert.suggestion
    assert_fires_first_at(wide.series, "divergence", alert.step, ref_params=small.series.params)
    suggested = alert.evidence["suggested_lr"]
    assert suggested == pytest.approx(0.1 * (small.series.params / wide.series.params) ** 0.5)

    fixed = train(data_dir, tmp_path, ModelSpec(width=512, depth=2), optimizer="adam", lr=suggested)
    assert fixed.outcome.status is RunStatus.DONE
    assert diagnose_run(fixed.series, TH, ref_params=small.series.params) == []


def test_dropout_starves_a_deep_mlp(data_dir: Path, tmp_path: Path) -> None:
    rows, deep_alerts = [], []
    for seed in (0, 1):
        for depth in (1, 8):
            run = train(data_dir, tmp_path, ModelSpec(width=32, depth=depth, dropout=0.5), seed=seed,
                        optimizer="adam", lr=1e-3, steps=1500)
            assert run.outcome.final_test_loss is not None
            rows.append((32, depth, seed, run.outcome.final_test_loss))
            if depth == 8:
                run_alerts = diagnose_run(run.series, TH)
                deep_alerts += run_alerts
                for plateau in (a for a in run_alerts if a.kind == "plateau"):
                    assert plateau.step >= TH.plateau_min_steps
                    assert_fires_first_at(run.series, "plateau", plateau.step)
            else:
                assert "plateau" not in kinds(diagnose_run(run.series, TH))
    assert "plateau" in kinds(deep_alerts)
    group = diagnose_group(rows, TH)
    assert [a.kind for a in group] == ["non_monotonic"]
    assert group[0].evidence["depth_large"] == 8 and group[0].evidence["depth_small"] == 1


def test_label_noise_is_memorised(data_dir: Path, tmp_path: Path) -> None:
    run = train(data_dir, tmp_path, ModelSpec(width=128, depth=2), data=DataSpec(train_size=500, label_noise=0.4),
                optimizer="adam", lr=3e-3, steps=1500)
    assert run.outcome.status is RunStatus.DONE
    alerts = diagnose_run(run.series, TH)
    assert "overfitting" in kinds(alerts)
    assert "divergence" not in kinds(alerts)  # memorisation is stable training, not instability
    [over] = [a for a in alerts if a.kind == "overfitting"]
    assert over.evidence["acc_gap"] > 0.5
    assert over.step > over.evidence["best_step"]  # after the test loss was at its best
    assert_fires_first_at(run.series, "overfitting", over.step)


def test_plain_deep_mlp_with_xavier_and_sgd_vanishes_residual_one_does_not(data_dir: Path, tmp_path: Path) -> None:
    plain = train(data_dir, tmp_path, ModelSpec(width=32, depth=24, init="xavier"), optimizer="sgd", lr=0.05)
    alerts = diagnose_run(plain.series, TH)
    assert "vanishing_gradients" in kinds(alerts)
    [vanish] = [a for a in alerts if a.kind == "vanishing_gradients"]
    assert vanish.evidence["ratio"] < TH.grad_ratio_vanishing and vanish.evidence["layers"] == 25
    assert_fires_first_at(plain.series, "vanishing_gradients", vanish.step)

    residual = train(data_dir, tmp_path, ModelSpec(arch="resmlp", width=32, depth=24, init="he", norm="layer"),
                     optimizer="sgd", lr=0.05)
    assert residual.outcome.status is RunStatus.DONE
    assert diagnose_run(residual.series, TH) == []


def test_healthy_runs_raise_nothing(data_dir: Path, tmp_path: Path) -> None:
    rows, best = [], []
    runs = []
    for seed in (0, 1):
        for width in (16, 64):
            run = train(data_dir, tmp_path, ModelSpec(arch="resmlp", width=width, depth=2, init="he", norm="layer"),
                        seed=seed, optimizer="adamw", lr=2e-3, weight_decay=0.01, steps=1000)
            assert run.outcome.status is RunStatus.DONE and run.outcome.final_test_loss is not None
            runs.append(run)
            rows.append((width, 2, seed, run.outcome.final_test_loss))
            best.append(run.outcome.final_test_loss)
    for run in runs:
        same_width = min(r[3] for r in rows if r[0] == run.series.width)
        assert diagnose_run(run.series, TH, group_best=same_width) == []
    assert diagnose_group(rows, TH) == []
