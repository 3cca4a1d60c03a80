"""`train.stop_when_hopeless`: the rule on synthetic numbers (analysis.hopeless), the key in experiments.toml,
a stop request that carries a reason (services.stop_requests) and what a worker makes of it (services.runner),
and the monitor judging a running run on a real database and asking a real process to stop it.

The whole path through real training (`scaletui run --headless`) is in tests/test_hopeless_e2e.py."""

from __future__ import annotations

import ast
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scaletui.analysis.hopeless import (
    STOP_AFTER,
    Baseline,
    FinishedSize,
    HopelessStreak,
    best_smaller,
    is_hopeless,
    stop_reason,
)
from scaletui.core.config import ConfigError, Sweep, build_sweep
from scaletui.core.records import MetricRecord, ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import RunStatus
from scaletui.services.monitor import SweepMonitor
from scaletui.services.runner import Task, _with_stop_reason, _WorkerStop
from scaletui.services.stop_requests import (
    clear_stop_requests,
    request_run_stop,
    requests_folder,
    take_stop_requests,
    take_stop_requests_with_reasons,
)
from scaletui.store.writer import Store, StoreSink
from tests.conftest import REPO, run_cli, tiny_sweep, write_toml

# --------------------------------------------------------------------------- the rule (pure)

SMALL = [FinishedSize(200, 1.90, "4x1"), FinishedSize(200, 1.70, "4x1"),  # mean 1.80
         FinishedSize(400, 1.60, "8x1"), FinishedSize(400, 2.20, "8x1"),  # one lucky seed, mean 1.90
         FinishedSize(900, 1.20, "16x1")]  # not smaller than the run judged below


def test_the_baseline_is_the_best_seed_mean_among_smaller_sizes_not_the_luckiest_seed() -> None:
    baseline = best_smaller(SMALL, params=800)
    assert baseline == Baseline("4x1", 200, pytest.approx(1.80), 2)
    assert best_smaller(SMALL, params=200) is None, "a size is not smaller than itself"
    assert best_smaller(SMALL, params=1000) == Baseline("16x1", 900, 1.20, 1)
    assert best_smaller([FinishedSize(100, math.nan, "2x1")], params=800) is None


def test_hopeless_means_the_bands_lower_end_above_the_smaller_sizes_loss() -> None:
    base = Baseline("4x1", 200, 1.80, 2)
    assert is_hopeless(1.81, 2.50, base)
    assert not is_hopeless(1.80, 2.50, base), "equal is not worse"
    assert not is_hopeless(1.50, 1.79, base) and not is_hopeless(1.70, 2.50, base), "the band must clear it"
    assert not is_hopeless(2.0, 2.5, None), "nothing smaller has finished"


@pytest.mark.parametrize("lo, hi", [(None, None), (2.0, None), (2.0, 2.0), (2.5, 2.0), (2.0, math.inf),
                                    (math.nan, 3.0)])
def test_a_forecast_without_a_band_never_says_hopeless(lo: float | None, hi: float | None) -> None:
    assert not is_hopeless(lo, hi, Baseline("4x1", 200, 1.0, 2))


def test_a_run_stops_only_after_two_hopeless_evaluations_in_a_row() -> None:
    assert STOP_AFTER == 2
    streak = HopelessStreak()
    verdicts = [(10, True), (20, False), (30, True), (40, True)]  # one noisy evaluation at 10 resets at 20
    assert [streak.observe(step, hopeless) for step, hopeless in verdicts] == [False, False, False, True]
    assert streak.steps == [30, 40]


def test_the_reason_says_the_bound_and_what_it_lost_to_in_its_first_60_characters() -> None:
    reason = stop_reason(3.358, 13.68, 0.9, Baseline("4x1", 214, 1.8066, 2), [10, 20])
    assert reason[:60] == "hopeless: pred. final test loss >= 3.358 (90%), 4x1 got 1.80"
    assert reason.endswith("(mean of 2 seeds); hopeless at steps 10, 20, band at step 20 [3.358, 13.68]")
    assert "\n" not in reason


# --------------------------------------------------------------------------- the key


def sweep_doc(tmp_path: Path, **train: Any) -> dict[str, Any]:
    return tiny_sweep(tmp_path, tmp_path / "data", train=train)


def test_the_key_is_off_by_default_and_leaves_every_runs_key_alone(tmp_path: Path) -> None:
    off = build_sweep(sweep_doc(tmp_path), tmp_path / "experiments.toml", check_data=False)
    on = build_sweep(sweep_doc(tmp_path, stop_when_hopeless=True), tmp_path / "experiments.toml", check_data=False)
    assert (off.stop_when_hopeless, on.stop_when_hopeless) == (False, True)
    assert [r.key for r in on.runs] == [r.key for r in off.runs], "a policy of the sweep, not of a run's training"
    assert "train.stop_when_hopeless" not in on.axes


@pytest.mark.parametrize("value, problem", [
    ("yes", "must be true or false, got 'yes'"),
    (1, "must be true or false, got 1"),
    ([True, False], "cannot be a sweep axis (give one value)"),
])
def test_a_bad_value_is_one_line_naming_file_and_key(tmp_path: Path, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sweep(sweep_doc(tmp_path, stop_when_hopeless=value), tmp_path / "experiments.toml", check_data=False)
    message = str(caught.value)
    assert message.startswith(f"experiments.toml: train.stop_when_hopeless: {problem}") and "\n" not in message


def test_it_is_refused_with_a_ray_executor_and_through_the_cli_exit_2(tmp_path: Path) -> None:
    doc = sweep_doc(tmp_path, stop_when_hopeless=True)
    doc["experiment"]["executor"] = "ray"
    out = run_cli("run", "--dry-run", str(write_toml(tmp_path / "experiments.toml", doc)))
    assert out.returncode == 2
    assert out.stderr.strip() == ('error: experiments.toml: train.stop_when_hopeless: works with local workers '
                                  'only, not with executor = "ray"')


# --------------------------------------------------------------------------- the request and the worker


@pytest.fixture
def own_folder() -> Iterator[Path]:
    """This process's request folder, emptied before and after (dotted names too: a test leaves one, and
    later tests in this process, which share its pid's folder, must not find it)."""
    clear_stop_requests(os.getpid())
    yield requests_folder(os.getpid())
    clear_stop_requests(os.getpid())


def signal_ignored() -> None:
    """SIGUSR1 to this test process is the request's side effect; the worker's handler is not installed here."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def test_a_request_carries_its_reason_and_a_bare_one_still_means_interrupt(own_folder: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    signal_ignored()
    try:
        request_run_stop(os.getpid(), 7, "hopeless: pred. final test loss >= 3.4\n(90%)")
        request_run_stop(os.getpid(), 8)
        (own_folder / ".9.123.456").write_text("half-writ")  # a reasoned request still being written
        assert take_stop_requests_with_reasons(os.getpid()) == {7: "hopeless: pred. final test loss >= 3.4 (90%)",
                                                                8: None}
        assert [p.name for p in own_folder.iterdir()] == [".9.123.456"], "read requests go; one in flight stays"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def spec_of(seed: int) -> RunSpec:
    return RunSpec("t", DataSpec(), ModelSpec(width=8), TrainSpec(), seed)


class _Flag:
    value = 0


def test_a_worker_keeps_the_reason_of_the_member_it_stops_and_the_others_go_on(own_folder: Path) -> None:
    stop = _WorkerStop(_Flag(), os.getppid())
    stop.new_task(Task(1, spec_of(0), ((2, spec_of(1)), (3, spec_of(2)))))
    own_folder.mkdir(parents=True, exist_ok=True)
    (own_folder / "2").write_text("hopeless: because")
    (own_folder / "3").touch()
    stop.stop_current_run(signal.SIGUSR1, None)
    assert [stop.member(run_id).is_set() for run_id in (1, 2, 3)] == [False, True, True]
    assert (stop.reason(1), stop.reason(2), stop.reason(3)) == (None, "hopeless: because", None)

    interrupted = RunOutcome(RunStatus.INTERRUPTED, step=41, final_test_loss=2.66)
    early = _with_stop_reason(interrupted, stop, 2)
    assert early == replace(interrupted, status=RunStatus.EARLY_STOPPED, error="hopeless: because")
    assert _with_stop_reason(interrupted, stop, 3) == interrupted, "a plain request still interrupts"
    done = RunOutcome(RunStatus.DONE, step=60)
    assert _with_stop_reason(done, stop, 2) == done, "a run that ended on its own first keeps its status"
    stop.new_task(Task(4, spec_of(0)))
    assert stop.reason(2) is None, "reasons belong to one task"


# --------------------------------------------------------------------------- the monitor, on a real database

STEPS, EVERY = 60, 20
WIDTHS = {8: 418, 16: 826, 64: 3274}  # mlp on MNIST-1D, depth 1: parameters per width


def curve(step: int, final: float, scale: float = 1.0) -> float:
    """A test loss falling to `final` at STEPS (what a finished run of the sweep looks like)."""
    return final * (1 + 0.4 * scale * (1 - step / STEPS))


def write_run(db: Path, run_id: int, params: int, losses: dict[int, float]) -> None:
    with StoreSink(db, run_id) as sink:
        sink.started(ModelInfo(params, 2 * params, ("0", "1"), 3e-2), resumed_from=0)
        for step, loss in losses.items():
            sink.metrics([MetricRecord(step, "train_loss", loss), MetricRecord(step, "test_loss", loss)])


@pytest.fixture
def worker() -> Iterator[subprocess.Popen[str]]:
    """A process that stands in for the hopeless run's worker: it waits for SIGUSR1, then prints the
    requests it was left (as a worker reads them) and exits."""
    code = ("import os, signal, sys\n"
            "from scaletui.services.stop_requests import take_stop_requests_with_reasons\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
            "print('ready', flush=True)\n"
            "signal.sigwait([signal.SIGUSR1])\n"
            "print(repr(take_stop_requests_with_reasons(os.getpid())), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)
    take_stop_requests(proc.pid)


def monitored(tmp_path: Path, on: bool, big_losses: dict[int, float], pid: int) -> tuple[Sweep, int]:
    """Widths 8 and 16 (two seeds each) finished, width 64 running in process `pid` with `big_losses`; one
    monitor pass. Returns the sweep and the running run's id."""
    doc = tiny_sweep(tmp_path, tmp_path / "data", model={"width": list(WIDTHS), "depth": 1},
                     train={"steps": STEPS, "eval_every": EVERY, "seeds": [0, 1], "stop_when_hopeless": on})
    sweep = build_sweep(doc, tmp_path / "experiments.toml", check_data=False)
    with Store(sweep.db) as store:
        exp = store.upsert_experiment(sweep.name, None, None, sweep.loss_rule)
        ids = {(s.model.width, s.seed): run_id for run_id, s in store.register_runs(exp, sweep.runs, fresh=False)}
        for (width, seed), run_id in ids.items():
            if width == 64:
                continue
            store.mark_running(run_id, os.getpid(), socket.gethostname())
            final = {8: 1.80, 16: 1.85}[width] + 0.02 * seed
            write_run(sweep.db, run_id, WIDTHS[width], {s: curve(s, final, 1 + 0.1 * seed) for s in (0, 20, 40, 60)})
            store.finish_run(run_id, RunOutcome(RunStatus.DONE, STEPS, final_test_loss=final))
        big = ids[(64, 0)]
        store.mark_running(big, pid, socket.gethostname())
        write_run(sweep.db, big, WIDTHS[64], big_losses)
    monitor = SweepMonitor(sweep, exp, [big])
    try:
        monitor.run_pass()
    finally:
        monitor.close()
    return sweep, big


def test_the_monitor_asks_the_worker_to_stop_a_run_hopeless_at_two_evaluations(
        tmp_path: Path, worker: subprocess.Popen[str]) -> None:
    _, big = monitored(tmp_path, True, {0: 2.3, 20: 3.0, 40: 3.1}, worker.pid)
    stdout, _ = worker.communicate(timeout=30)
    [(run_id, reason)] = ast.literal_eval(stdout).items()
    assert run_id == big
    assert reason.startswith("hopeless: pred. final test loss >= ")
    assert "8x1 got 1.81 (mean of 2 seeds); hopeless at steps 20, 40" in reason


@pytest.mark.parametrize("on, big_losses", [
    (False, {0: 2.3, 20: 3.0, 40: 3.1}),  # the key off: never judged
    (True, {0: 2.3, 20: 3.0, 40: 1.6}),  # hopeless at 20 only: one evaluation never stops a run
    (True, {0: 2.3, 20: 3.0}),  # one evaluation so far
])
def test_the_monitor_leaves_a_run_alone_unless_the_rule_says_stop(
        tmp_path: Path, worker: subprocess.Popen[str], on: bool, big_losses: dict[int, float]) -> None:
    monitored(tmp_path, on, big_losses, worker.pid)
    os.kill(worker.pid, signal.SIGUSR1)  # what the worker finds when it looks: no request was left
    stdout, _ = worker.communicate(timeout=30)
    assert ast.literal_eval(stdout) == {}
