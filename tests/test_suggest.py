"""`scaletui suggest`: the configurator fed from a real database of finished learning-rate sweeps.

The sweeps are written through Store and StoreSink exactly as the runner and a worker write them. Their
losses follow a known landscape: each size has a best rate lr*(N) = 0.5 * N^-0.6 and the loss grows with
the squared log-distance from it, plus seed noise; rates on a coarse grid (x2 apart) that never hits
lr* exactly; rates far above lr* diverge. The fourth size's own stored sweep is the ground truth the
prediction from the other three must match within a factor of 2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tomllib

from scaletui.analysis.configurator import RULES, LrTrial, best_lr_per_size, mlp_params
from scaletui.cli.suggest import RULE_CHOICES
from scaletui.core.config import load_sweep
from scaletui.core.records import ModelInfo, RunOutcome
from scaletui.core.specs import DataSpec, ModelSpec, RunSpec, TrainSpec
from scaletui.core.vocabulary import PredictionSource, PredictionStatus, RunStatus
from scaletui.services.predictions import best_plan_runs, score_predictions
from scaletui.services.suggest import SuggestError, backtests, suggest_for, suggestion
from scaletui.store import Reader
from scaletui.store.writer import Store, StoreSink
from tests.conftest import REPO, run_cli, write_toml

GRID = [1e-4 * 2**i for i in range(9)]  # 1e-4 ... 0.0256
DEPTH = 2
SWEPT_WIDTHS = (16, 32, 64)
HELD_OUT_WIDTH = 128


def params_of(width: int, depth: int = DEPTH) -> int:
    return mlp_params(40, width, depth, 10)  # MNIST-1D: 40 inputs, 10 classes


def true_best_lr(params: int) -> float:
    return 0.5 * params**-0.6


def loss_at(params: int, lr: float, seed: int) -> float:
    """A bowl in log lr around the size's best rate; bigger models reach a lower floor."""
    rng = np.random.default_rng(hash((params, round(lr, 9), seed)) % 2**32)
    distance = math.log(lr / true_best_lr(params))
    return 2.0 * params**-0.1 + 0.05 * distance**2 + 0.003 * rng.standard_normal()


def store_sweep(db: Path, experiment: str, widths: tuple[int, ...], lrs: list[float], seeds: tuple[int, ...] = (0, 1)
                ) -> None:
    """Finished runs of every (width, lr, seed), as the runner and its workers would have stored them."""
    specs = [RunSpec(experiment, DataSpec(train_size=512), ModelSpec(width=w, depth=DEPTH),
                     TrainSpec(lr=lr, steps=200, batch_size=32), seed) for w in widths for lr in lrs for seed in seeds]
    with Store(db) as store:
        exp = store.upsert_experiment(experiment, None, '[experiment]\nname = "x"\ndata_dir = "runs/data"\n', "final")
        for run_id, spec in store.register_runs(exp, specs, fresh=False):
            params = params_of(spec.model.width)
            with StoreSink(db, run_id) as sink:
                sink.started(ModelInfo(params, 2 * params, ("0", "1", "2"), spec.train.lr), resumed_from=0)
            diverged = spec.train.lr > 8 * true_best_lr(params)
            loss = math.nan if diverged else loss_at(params, spec.train.lr, spec.seed)
            status = RunStatus.DIVERGED if diverged else RunStatus.DONE
            store.finish_run(run_id, RunOutcome(status, step=200, final_test_loss=loss))


@pytest.fixture
def swept_db(tmp_path: Path) -> Path:
    db = tmp_path / "runs.db"
    store_sweep(db, "lr-sweep", SWEPT_WIDTHS, GRID)
    store_sweep(db, "held-out", (HELD_OUT_WIDTH,), GRID)
    return db


def measured_best_lr(width: int) -> float:
    """The best rate the held-out size's own sweep found (same refinement as the configurator's)."""
    trials = [LrTrial(width, DEPTH, params_of(width), lr, seed, loss_at(params_of(width), lr, seed))
              for lr in GRID for seed in (0, 1) if lr <= 8 * true_best_lr(params_of(width))]
    [best] = best_lr_per_size(trials)
    return best.lr


def test_three_swept_sizes_predict_the_fourths_best_lr_within_a_factor_of_2(swept_db: Path) -> None:
    proposal = suggest_for(swept_db, "lr-sweep", HELD_OUT_WIDTH, DEPTH)
    assert proposal.rule == "power_law"
    assert [b.width for b in proposal.best_lrs] == list(SWEPT_WIDTHS)
    assert proposal.target_params == params_of(HELD_OUT_WIDTH)
    measured = measured_best_lr(HELD_OUT_WIDTH)
    assert 0.5 < proposal.lr / measured < 2.0, (proposal.lr, measured)
    assert proposal.confidence in ("high", "medium")


def test_the_held_out_sweep_in_the_database_agrees_with_its_ground_truth(swept_db: Path) -> None:
    """The check above compares with what the stored fourth sweep says, not only with the formula."""
    own = suggest_for(swept_db, "held-out", HELD_OUT_WIDTH, DEPTH)
    assert own.rule == "sqrt_params" and len(own.best_lrs) == 1  # one swept size: no fit
    assert own.best_lrs[0].lr == pytest.approx(measured_best_lr(HELD_OUT_WIDTH))


def test_sizes_that_did_not_sweep_lr_are_left_out_of_the_fit(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store_sweep(db, "lr-sweep", SWEPT_WIDTHS, GRID)
    store_sweep(db, "lr-sweep", (256,), [GRID[-1] / 64])  # one rate only: says nothing about the best rate
    proposal = suggest_for(db, "lr-sweep", HELD_OUT_WIDTH, DEPTH)
    assert [b.width for b in proposal.best_lrs] == list(SWEPT_WIDTHS)


def test_too_few_swept_sizes_fall_back_to_the_sqrt_params_rule(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store_sweep(db, "small", (16, 32), GRID)
    proposal = suggest_for(db, "small", HELD_OUT_WIDTH, DEPTH)
    assert proposal.rule == "sqrt_params" and "only 2 sizes of this experiment tried" in proposal.note
    anchor = proposal.best_lrs[-1]  # the swept size nearest the target
    assert proposal.lr == pytest.approx(anchor.lr * math.sqrt(anchor.params / params_of(HELD_OUT_WIDTH)))


def test_no_database_falls_back_to_the_width_rule_with_low_confidence(tmp_path: Path) -> None:
    proposal = suggest_for(tmp_path / "missing.db", None, 256, 3)
    assert (proposal.rule, proposal.confidence) == ("width", "low")
    assert proposal.lr == pytest.approx(1e-3 * 64 / 256)
    assert "no finished runs" in proposal.note
    assert not (tmp_path / "missing.db").exists()  # a read never creates the file


def test_unknown_experiment_and_bad_sizes_are_errors(swept_db: Path) -> None:
    with pytest.raises(SuggestError, match="no experiment named 'nope'"):
        suggest_for(swept_db, "nope", 64, 2)
    with pytest.raises(SuggestError, match="must be positive"):
        suggest_for(swept_db, "lr-sweep", 0, 2)


def test_default_experiment_is_the_latest_with_finished_runs(swept_db: Path) -> None:
    s = suggestion(swept_db, None, HELD_OUT_WIDTH, DEPTH)
    assert s.experiment == "held-out"
    assert s.dirs == {"data_dir": "runs/data"}  # carried over from the stored sweep file


def test_rule_choices_match_the_configurator() -> None:
    assert RULE_CHOICES == RULES


# --------------------------------------------------------------------------- the command


def test_cli_prints_method_confidence_lr_and_a_fragment_that_parses(swept_db: Path) -> None:
    out = run_cli("suggest", "--width", str(HELD_OUT_WIDTH), "--depth", str(DEPTH), "--db", str(swept_db),
                  "--experiment", "lr-sweep")
    assert out.returncode == 0, out.stderr
    assert "method:       power_law" in out.stdout
    assert "confidence:   " in out.stdout and "predicted lr: " in out.stdout
    fragment = tomllib.loads(out.stdout[out.stdout.index("# scaletui configurator"):])
    assert fragment["model"] == {"arch": "mlp", "width": HELD_OUT_WIDTH, "depth": DEPTH}
    proposal = suggest_for(swept_db, "lr-sweep", HELD_OUT_WIDTH, DEPTH)
    assert fragment["train"] == {"lr": float(f"{proposal.lr:.3g}"), "lr_scaling": "none"}


def test_cli_append_writes_a_one_size_sweep_with_the_proposal(swept_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "next.toml"
    out = run_cli("suggest", "--width", "128", "--depth", "3", "--db", str(swept_db), "--experiment", "lr-sweep",
                  "--append", str(target))
    assert out.returncode == 0, out.stderr
    sweep = load_sweep(target)
    # Every seed the experiment ran, never just the best run's (a lucky seed would flatter the new size).
    assert sorted(r.seed for r in sweep.runs) == [0, 1]
    run = sweep.runs[0]
    assert {(r.model, r.train) for r in sweep.runs} == {(run.model, run.train)}
    proposal = suggest_for(swept_db, "lr-sweep", 128, 3)
    assert (run.model.width, run.model.depth, run.train.lr_scaling) == (128, 3, "none")
    assert run.train.lr == float(f"{proposal.lr:.3g}")
    assert (run.data.train_size, run.train.steps, run.train.batch_size) == (512, 200, 32)  # the best run's config
    assert sweep.name == "lr-sweep-suggested" and sweep.db == swept_db.resolve()
    again = run_cli("suggest", "--width", "128", "--depth", "3", "--db", str(swept_db), "--append", str(target))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_cli_bad_width_is_one_line_exit_2(tmp_path: Path) -> None:
    out = run_cli("suggest", "--width", "0", "--depth", "2", "--db", str(tmp_path / "x.db"))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--width" in out.stderr


def test_cli_on_an_empty_database_falls_back_and_says_so(tmp_path: Path) -> None:
    out = run_cli("suggest", "--width", "256", "--depth", "2", "--db", str(tmp_path / "none.db"))
    assert out.returncode == 0, out.stderr
    assert "method:       width" in out.stdout and "confidence:   low" in out.stdout
    assert "no finished runs to learn from" in out.stdout


def test_cli_suggest_never_imports_torch(swept_db: Path) -> None:
    code = ("import sys\nfrom scaletui.cli import main\ntry:\n"
            f"    main(['suggest', '--width', '64', '--depth', '2', '--db', {str(swept_db)!r}])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


# --------------------------------------------------------------------------- the backtest on real runs


def reduced_lr_transfer(tmp_path: Path, data_dir: Path) -> Path:
    """examples/lr_transfer.toml shrunk to seconds: 4 widths x 3 of its rates x 1 seed, 30 steps."""
    doc = tomllib.loads((REPO / "examples" / "lr_transfer.toml").read_text(encoding="utf-8"))
    grid = doc["train"]["lr"]
    doc["experiment"].update(name="lr-transfer-small", db=str(tmp_path / "runs.db"), data_dir=str(data_dir),
                             checkpoint_dir=str(tmp_path / "checkpoints"))
    doc["data"]["train_size"] = 1024
    doc["model"]["width"] = [8, 16, 32, 64]
    doc["train"].update(lr=[grid[1], grid[len(grid) // 2], grid[-2]], steps=30, eval_every=10, seeds=[0])
    return write_toml(tmp_path / "lr_transfer_small.toml", doc)


@pytest.fixture(scope="module")
def trained_lr_transfer(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """The reduced lr-transfer sweep, trained once through the CLI for the tests below (they only read
    it, or add a sweep of their own to it)."""
    folder = tmp_path_factory.mktemp("lr_transfer")
    sweep = reduced_lr_transfer(folder, shared_data_dir)
    trained = run_cli("run", "--headless", str(sweep), "--db", str(folder / "runs.db"))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr
    return folder / "runs.db"


@pytest.mark.slow
def test_reduced_lr_transfer_end_to_end_backtests_and_chooses_by_evidence(trained_lr_transfer: Path) -> None:
    db = str(trained_lr_transfer)
    out = run_cli("suggest", "--backtest", "--json", "--db", db)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    lr = report["lr"]
    assert (report["experiment"], lr["held_out"], lr["fitted_on"]) == (
        "lr-transfer-small", "w64 d2", ["w8 d2", "w16 d2", "w32 d2"])
    assert lr["params"] == params_of(64)
    assert [r["rule"] for r in lr["rules"]] == ["power_law", "sqrt_params", "width"]
    for r in lr["rules"]:
        assert r["predicted"] > 0 and r["ratio"] == pytest.approx(r["predicted"] / lr["measured"])
        assert r["where"] in ("inside the sweep", "beyond the swept range", "next to a diverged value")
        assert (r["lost_loss"] is None) == (r["where"] != "inside the sweep")
        assert r["lost_loss"] is None or r["lost_loss"] >= -1e-9
    assert lr["winner"] in [r["rule"] for r in lr["rules"]]
    assert report["dropout"] is None and "dropouts" in report["dropout_why"]  # the sweep held dropout fixed

    text = run_cli("suggest", "--backtest", "--db", db)
    assert text.returncode == 0, text.stderr
    assert "held out w64 d2" in text.stdout and f"{lr['winner']:<12}" in text.stdout
    assert "<- auto's choice" in text.stdout

    proposal = run_cli("suggest", "--width", "128", "--depth", "2", "--db", db)
    assert proposal.returncode == 0, proposal.stderr
    assert f"method:       {lr['winner']}" in proposal.stdout
    assert f"{lr['winner']} chosen by backtest (held out w64 d2" in proposal.stdout


@pytest.mark.slow
def test_suggest_records_its_predicted_loss_and_the_suggested_sweep_scores_it(trained_lr_transfer: Path,
                                                                              tmp_path: Path) -> None:
    """End to end: `suggest --append` records the new size's predicted loss in the ledger; training the
    sweep it wrote (through the CLI) scores it against that sweep's own runs."""
    db = str(trained_lr_transfer)
    target = tmp_path / "next.toml"
    out = run_cli("suggest", "--width", "128", "--depth", "2", "--db", db, "--append", str(target))
    assert out.returncode == 0, out.stderr
    assert "recorded as prediction #" in out.stdout, out.stdout
    with Reader(trained_lr_transfer) as reader:
        [entry] = reader.predictions("lr-transfer-small", status=PredictionStatus.OPEN)
        runs = reader.runs("lr-transfer-small")
    assert (entry.source, entry.width, entry.depth) == (PredictionSource.SUGGEST, 128, 2)
    assert entry.inputs["scored_in"] == "lr-transfer-small-suggested"
    # the law of each width's best learning rate: one run (one seed) per width, the lowest loss of its width
    fitted = {r.id for r in runs if r.id in entry.inputs["run_ids"]}
    best = {min((r for r in runs if r.width == w and r.loss is not None), key=lambda r: r.loss or 0.0).id
            for w in (8, 16, 32, 64)}
    assert fitted == best
    assert entry.lo is not None and entry.hi is not None and entry.lo <= entry.predicted <= entry.hi

    trained = run_cli("run", "--headless", str(target), "--db", db)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr
    with Reader(trained_lr_transfer) as reader:
        [scored] = [p for p in reader.predictions("lr-transfer-small") if p.id == entry.id]
        [run] = reader.runs("lr-transfer-small-suggested")
    assert scored.status is PredictionStatus.SCORED, scored.note
    assert scored.truth == pytest.approx(run.loss) and scored.n_truth == 1
    assert scored.error == pytest.approx((entry.predicted - run.loss) / run.loss)


def test_best_plan_runs_keep_each_sizes_best_rate_with_all_its_seeds(swept_db: Path) -> None:
    with Reader(swept_db) as reader:
        runs = reader.runs("lr-sweep")
        kept = best_plan_runs(reader, runs)
    by_id = {r.id: r for r in runs}
    for width in SWEPT_WIDTHS:
        mine = [by_id[i] for i in kept if by_id[i].width == width]
        assert len({r.lr for r in mine}) == 1 and sorted(r.seed for r in mine) == [0, 1]
        mean = {lr: np.mean([r.loss for r in runs if r.width == width and r.lr == lr]) for lr in GRID
                if all(r.loss is not None for r in runs if r.width == width and r.lr == lr)}
        assert mine[0].lr == min(mean, key=lambda lr: mean[lr])


def test_a_suggested_sweep_under_another_plan_or_size_count_is_not_scored_against_it(swept_db: Path,
                                                                                    tmp_path: Path) -> None:
    target = tmp_path / "next.toml"
    out = run_cli("suggest", "--width", "128", "--depth", "2", "--db", str(swept_db), "--experiment", "lr-sweep",
                  "--append", str(target))
    assert out.returncode == 0 and "recorded as prediction #" in out.stdout, out.stdout + out.stderr
    sweep = load_sweep(target, check_data=False)
    other = [replace(spec, train=replace(spec.train, steps=400)) for spec in sweep.runs]  # not the suggested plan
    with Store(swept_db) as store:
        exp = store.upsert_experiment(sweep.name, None, None, "final")
        for run_id, _ in store.register_runs(exp, other, fresh=False):
            store.finish_run(run_id, RunOutcome(RunStatus.DONE, step=400, final_test_loss=1.0))
    [closed] = score_predictions(swept_db, sweep.name)
    assert closed.status is PredictionStatus.UNSCORABLE and "train.steps 200 -> 400" in (closed.note or "")


def test_cli_backtest_without_enough_sizes_says_why(swept_db: Path) -> None:
    out = run_cli("suggest", "--backtest", "--db", str(swept_db), "--experiment", "lr-sweep")
    assert out.returncode == 0, out.stderr
    assert "no backtest: 3 size(s) tried 3 or more learning rates" in out.stdout


def test_cli_option_combinations_are_one_line_exit_2(swept_db: Path) -> None:
    for args in (["--width", "64"], [], ["--json", "--width", "64", "--depth", "2"],
                 ["--backtest", "--json", "--width", "64", "--depth", "2"]):
        out = run_cli("suggest", "--db", str(swept_db), *args)
        assert out.returncode == 2, (args, out.stdout)
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: --"), out.stderr


# --------------------------------------------------------------------------- dropout against depth

DROPOUT_GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
DEPTHS = (1, 2, 4, 8)


def store_runs(db: Path, experiment: str, specs: list[RunSpec], loss_of: Callable[[RunSpec], float]) -> None:
    """Finished runs with the given losses, stored as the runner and its workers store them."""
    with Store(db) as store:
        exp = store.upsert_experiment(experiment, None, '[experiment]\nname = "x"\n', "final")
        for run_id, spec in store.register_runs(exp, specs, fresh=False):
            params = mlp_params(40, spec.model.width, spec.model.depth, 10)
            with StoreSink(db, run_id) as sink:
                sink.started(ModelInfo(params, 2 * params, ("0", "1"), spec.train.lr), resumed_from=0)
            store.finish_run(run_id, RunOutcome(RunStatus.DONE, step=200, final_test_loss=loss_of(spec)))


def dropout_loss(spec: RunSpec) -> float:
    """Every depth's best dropout is 0.1 (a bowl in p), so holding p fixed is right."""
    return 1.0 / spec.model.depth + 4.0 * (spec.model.dropout - 0.1) ** 2 + 0.001 * spec.seed


@pytest.fixture
def dropout_db(tmp_path: Path) -> Path:
    db = tmp_path / "runs.db"
    specs = [RunSpec("dropout-depth", DataSpec(train_size=512), ModelSpec(width=64, depth=d, dropout=p),
                     TrainSpec(lr=1e-3, steps=200, batch_size=32), seed)
             for d in DEPTHS for p in DROPOUT_GRID for seed in (0, 1)]
    store_runs(db, "dropout-depth", specs, dropout_loss)
    return db


def test_a_dropout_sweep_proposes_the_dropout_for_a_new_depth_by_backtest(dropout_db: Path) -> None:
    s = suggestion(dropout_db, None, 64, 16)
    assert s.dropout is not None and s.dropout.backtest is not None
    assert s.dropout.backtest.held_out == "w64 d8" and s.dropout.backtest.fitted_on == ("w64 d1", "w64 d2", "w64 d4")
    assert s.dropout.rule in ("fixed", "depth_fit") and s.dropout.dropout == pytest.approx(0.1, abs=0.01)
    assert "chosen by backtest" in s.dropout.note
    assert s.proposal.rule == "sqrt_params"  # one learning rate: nothing to fit it on
    found = backtests(dropout_db, None)
    assert found.lr is None and "0 size(s) tried 3 or more learning rates" in found.lr_why
    assert found.dropout is not None and found.dropout.winner.rule == s.dropout.rule


def test_cli_prints_and_appends_the_proposed_dropout(dropout_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "next.toml"
    out = run_cli("suggest", "--width", "64", "--depth", "16", "--db", str(dropout_db), "--append", str(target))
    assert out.returncode == 0, out.stderr
    assert "dropout:      0.1" in out.stdout and "for depth 16 by " in out.stdout
    fragment = tomllib.loads(out.stdout[out.stdout.index("# scaletui configurator"):out.stdout.index("\nwrote ")])
    assert fragment["model"]["dropout"] == pytest.approx(0.1, abs=0.01)
    [run, *_] = load_sweep(target).runs
    assert run.model.dropout == fragment["model"]["dropout"] and run.model.depth == 16


def test_learning_rates_are_compared_at_the_best_runs_dropout_only(tmp_path: Path) -> None:
    """A sweep over lr and dropout: the runs at another dropout (best rate 10x lower) stay out of the lr fit."""
    db = tmp_path / "runs.db"
    specs = [RunSpec("both", DataSpec(train_size=512), ModelSpec(width=w, depth=DEPTH, dropout=p),
                     TrainSpec(lr=lr, steps=200, batch_size=32), 0)
             for w in SWEPT_WIDTHS for p in (0.0, 0.5) for lr in GRID]

    def loss(spec: RunSpec) -> float:
        best = true_best_lr(params_of(spec.model.width)) / (10 if spec.model.dropout else 1)
        return (1.0 if spec.model.dropout else 0.5) + 0.05 * math.log(spec.train.lr / best) ** 2

    store_runs(db, "both", specs, loss)
    proposal = suggest_for(db, "both", HELD_OUT_WIDTH, DEPTH)
    for b in proposal.best_lrs:
        assert b.lr == pytest.approx(true_best_lr(b.params), rel=0.05)
