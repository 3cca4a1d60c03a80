"""`scaletui suggest --batch`: the critical batch size per size from the stored gradient noise scale.

The database is written through Store and StoreSink as a sweep's workers write it. Each run's noise-scale
measurements (the |G|^2 and tr(Sigma) estimates the loops record) are noisy draws around a known truth:
B_simple is 40 in the first half of training and `LATE[width]` in the second, so a suggestion read from
the end of training must find LATE, not the average of both halves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaletui.core.records import MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import NOISE_G2_METRIC, NOISE_SCALE_METRIC, NOISE_TRACE_METRIC, RunStatus
from scaletui.services.suggest import SuggestError, batch_suggestions
from scaletui.store.writer import Store, StoreSink
from tests.conftest import run_cli

LATE = {32: 100.0, 64: 400.0}  # B_simple at the end of training, per width
MEASUREMENTS = 60  # per run, every 10 steps


def noisy_pieces(rng: np.random.Generator, b_simple: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n measurements whose means are |G|^2 = 1 and tr(Sigma) = b_simple (single ones scatter widely)."""
    return 1.0 + 0.5 * rng.standard_normal(n), b_simple * (1.0 + 0.2 * rng.standard_normal(n))


def store_runs(db: Path, experiment: str = "noise") -> None:
    """Two seeds of two widths with measurements; one diverged run (wild values) and one run measured
    before the noise scale existed (no measurements)."""
    specs = [RunSpec(experiment, DataSpec(train_size=512), ModelSpec(width=w, depth=2),
                     TrainSpec(batch_size=64, steps=10 * MEASUREMENTS), seed)
             for w in LATE for seed in (0, 1)]
    specs += [RunSpec(experiment, DataSpec(train_size=512), ModelSpec(width=w, depth=2),
                      TrainSpec(batch_size=64, steps=600, lr=lr), 0) for w, lr in ((32, 0.5), (64, 0.2))]
    with Store(db) as store:
        exp = store.upsert_experiment(experiment, None, None, "final")
        for i, (run_id, spec) in enumerate(store.register_runs(exp, specs, fresh=False)):
            diverged, unmeasured = spec.train.lr == 0.5, spec.train.lr == 0.2
            with StoreSink(db, run_id) as sink:
                sink.started(ModelInfo(1000 * spec.model.width, 2000, ("0", "1", "2"), spec.train.lr), resumed_from=0)
                if not unmeasured:
                    sink.metrics(measurement_rows(np.random.default_rng(i), spec.model.width, diverged))
            status = RunStatus.DIVERGED if diverged else RunStatus.DONE
            store.finish_run(run_id, RunOutcome(status, step=spec.train.steps, final_test_loss=1.0))


def measurement_rows(rng: np.random.Generator, width: int, diverged: bool) -> list[MetricRecord]:
    half = MEASUREMENTS // 2
    early_g2, early_trace = noisy_pieces(rng, 40.0, half)
    late_g2, late_trace = noisy_pieces(rng, 1e6 if diverged else LATE[width], half)
    rows = []
    g2s, traces = np.concatenate([early_g2, late_g2]), np.concatenate([early_trace, late_trace])
    for i, (g2, trace) in enumerate(zip(g2s, traces, strict=True)):
        step = 10 * (i + 1)
        rows += [MetricRecord(step, NOISE_G2_METRIC, float(g2)), MetricRecord(step, NOISE_TRACE_METRIC, float(trace)),
                 MetricRecord(step, NOISE_SCALE_METRIC, float(trace / g2))]
    return rows


@pytest.fixture
def noise_db(tmp_path: Path) -> Path:
    db = tmp_path / "runs.db"
    store_runs(db)
    return db


def test_each_size_gets_the_critical_batch_of_the_end_of_training(noise_db: Path) -> None:
    result = batch_suggestions(noise_db, None)
    assert result.experiment == "noise"
    assert [(s.arch, s.width, s.depth) for s in result.sizes] == [("mlp", 32, 2), ("mlp", 64, 2)]
    for size in result.sizes:
        truth = LATE[size.width]
        assert size.crit.b_crit == pytest.approx(truth, rel=0.15)  # the first half's 40 would pull it far down
        assert size.crit.low is not None and size.crit.high is not None
        assert size.crit.low < truth < size.crit.high
        assert (size.runs, size.crit.measurements, size.crit.tail) == (2, 2 * MEASUREMENTS, MEASUREMENTS)
        assert size.batch_sizes == (64,)
        assert size.suggested == 2 ** round(math.log2(size.crit.b_crit or 1))
    assert result.runs_without == 1  # the unmeasured run; the diverged one is left out altogether


def test_unknown_experiment_is_an_error_and_no_database_is_nothing_to_suggest(noise_db: Path, tmp_path: Path) -> None:
    with pytest.raises(SuggestError, match="no experiment named 'nope'"):
        batch_suggestions(noise_db, "nope")
    assert batch_suggestions(tmp_path / "missing.db", None).sizes == ()


def test_cli_prints_every_size_with_its_evidence(noise_db: Path) -> None:
    out = run_cli("suggest", "--batch", "--db", str(noise_db))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "experiment:   'noise'" in lines[0]
    assert "B_simple" in out.stdout and "1 run(s) without measurements left out" in out.stdout
    [w64] = [line for line in lines if "mlp w64 d2" in line]
    fields = w64.split()
    assert fields[3:5] == ["2", "64"]  # runs, batch size
    assert float(fields[5]) == pytest.approx(400, rel=0.15)
    assert f"{MEASUREMENTS}/{2 * MEASUREMENTS}" in w64 and fields[-1] == "512"


def test_cli_json_is_one_object_with_the_numbers(noise_db: Path) -> None:
    out = run_cli("suggest", "--batch", "--json", "--db", str(noise_db))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["experiment"] == "noise" and doc["runs_without"] == 1 and doc["tail_fraction"] == 0.5
    by_width = {s["width"]: s for s in doc["sizes"]}
    assert by_width[32]["b_crit"] == pytest.approx(100, rel=0.15)
    assert by_width[32]["measurements"] == 2 * MEASUREMENTS and by_width[32]["runs"] == 2
    assert by_width[32]["low"] < 100 < by_width[32]["high"] and len(by_width[32]["spread"]) == 2
    assert by_width[64]["suggested_batch_size"] == 512 and by_width[64]["batch_sizes"] == [64]


def test_cli_without_measurements_says_so(tmp_path: Path) -> None:
    out = run_cli("suggest", "--batch", "--db", str(tmp_path / "none.db"))
    assert out.returncode == 0, out.stderr
    assert "no gradient noise scale measured" in out.stdout


@pytest.mark.parametrize("extra", [["--width", "64", "--depth", "2"], ["--backtest"], ["--append", "x.toml"]])
def test_cli_batch_with_options_of_the_lr_proposal_is_one_line_exit_2(noise_db: Path, extra: list[str]) -> None:
    out = run_cli("suggest", "--batch", *extra, "--db", str(noise_db))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--batch" in out.stderr


def test_cli_unknown_experiment_is_one_line_exit_2(noise_db: Path) -> None:
    out = run_cli("suggest", "--batch", "--experiment", "nope", "--db", str(noise_db))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "nope" in out.stderr
