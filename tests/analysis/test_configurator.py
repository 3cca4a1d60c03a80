"""The configurator predicts a new size's learning rate from a stored sweep, and says which rule it used."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from scaletui.analysis.configurator import (
    LrTrial,
    best_lr_per_size,
    fit_lr_power_law,
    mlp_params,
    propose_lr,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

C, K = 0.5, 0.45  # the true law: best_lr = C * params^-K


def true_best(params: float) -> float:
    return C * params**-K


def sweep(sizes: list[tuple[int, int]], seeds: int = 2, noise: float = 0.002, lr_step: float = 2.0,
          offset: int = 0) -> list[LrTrial]:
    """A learning-rate sweep per (width, depth): rates on a x`lr_step` grid that does not contain the true
    best, losses a parabola in log lr around it plus seed noise."""
    rng = np.random.default_rng(0)
    trials = []
    for width, depth in sizes:
        params = mlp_params(40, width, depth, 10)
        best = true_best(params)
        grid = best * lr_step ** (np.arange(-3, 4) + 0.37 + 0.1 * offset)  # best falls between grid points
        floor = 2.0 * params**-0.1
        for lr in grid:
            for seed in range(seeds):
                loss = floor + 0.08 * math.log(lr / best) ** 2 + noise * rng.standard_normal()
                trials.append(LrTrial(width, depth, params, float(lr), seed, float(loss)))
    return trials


SIZES = [(16, 2), (64, 2), (256, 2)]


def test_power_law_fit_predicts_a_fourth_size_within_a_factor_of_two() -> None:
    target = mlp_params(40, 1024, 2, 10)
    proposal = propose_lr(sweep(SIZES), target)
    assert proposal.rule == "power_law"
    ratio = proposal.lr / true_best(target)
    assert 0.5 < ratio < 2.0, ratio
    assert proposal.fit is not None and proposal.fit.exponent == pytest.approx(K, abs=0.1)
    assert proposal.r2 is not None and proposal.r2 > 0.95
    assert len(proposal.best_lrs) == 3 and proposal.extrapolation == pytest.approx(target / SIZES_PARAMS[-1])
    assert "R^2" in proposal.note and "extrapolates" in proposal.note


SIZES_PARAMS = [mlp_params(40, w, d, 10) for w, d in SIZES]


def test_best_lr_per_size_refines_between_grid_points() -> None:
    best = best_lr_per_size(sweep(SIZES, noise=0.0))
    assert [b.params for b in best] == SIZES_PARAMS
    for b in best:
        assert b.lr == pytest.approx(true_best(b.params), rel=0.02)  # exact parabola: the vertex is the truth
        assert not b.at_edge and b.n_lrs == 7 and b.n_seeds == 2


def test_diverged_seed_makes_its_rate_the_worst() -> None:
    trials = sweep([(64, 2)], noise=0.0)
    best_grid = min(trials, key=lambda t: t.loss)
    trials.append(LrTrial(best_grid.width, best_grid.depth, best_grid.params, best_grid.lr, 9, float("nan")))
    [b] = best_lr_per_size(trials)
    assert abs(math.log(b.lr / best_grid.lr)) > 0.1  # moved off the rate that diverged once


def test_interpolation_inside_the_data_is_high_confidence() -> None:
    proposal = propose_lr(sweep(SIZES), mlp_params(40, 128, 2, 10))
    assert proposal.extrapolation == 1.0 and proposal.confidence == "high"
    assert 0.5 < proposal.lr / true_best(mlp_params(40, 128, 2, 10)) < 2


def test_far_extrapolation_lowers_confidence() -> None:
    proposal = propose_lr(sweep(SIZES), 10**9)
    assert proposal.extrapolation > 16 and proposal.confidence == "low"


def test_fewer_than_three_swept_sizes_fall_back_to_sqrt_params() -> None:
    trials = sweep(SIZES[:2])
    target = mlp_params(40, 256, 2, 10)
    proposal = propose_lr(trials, target)
    assert proposal.rule == "sqrt_params"
    anchor = max(best_lr_per_size(trials), key=lambda b: b.params)  # nearest swept size to the target
    assert proposal.ref_params == anchor.params
    assert proposal.lr == pytest.approx(anchor.lr * math.sqrt(anchor.params / target))
    assert "sqrt-params" in proposal.note and "only 2 sizes of this experiment tried" in proposal.note
    assert proposal.fit is None


def test_sqrt_params_from_an_explicit_reference_and_from_single_runs() -> None:
    p = propose_lr([], 400_000, rule="sqrt_params", ref_lr=3e-4, ref_params=100_000)
    assert p.lr == pytest.approx(1.5e-4) and p.rule == "sqrt_params" and p.confidence == "low"
    runs = [LrTrial(64, 2, 7434, 3e-3, 0, 1.0), LrTrial(32, 2, 2698, 3e-3, 0, 1.2)]  # no lr sweep at all
    q = propose_lr(runs, 4 * 7434)
    assert q.rule == "sqrt_params" and q.lr == pytest.approx(1.5e-3) and "best run" in q.note
    with pytest.raises(ValueError, match="no finished runs"):
        propose_lr([], 1000)


def test_width_rule_when_asked() -> None:
    trials = sweep(SIZES)
    target = mlp_params(40, 512, 2, 10)
    proposal = propose_lr(trials, target, target_width=512, rule="width")
    anchor = max(best_lr_per_size(trials), key=lambda b: b.width)
    assert proposal.rule == "width" and proposal.ref_width == 256
    assert proposal.lr == pytest.approx(anchor.lr * 256 / 512)
    assert "width rule" in proposal.note and "1/width" in proposal.note
    with pytest.raises(ValueError, match="target_width"):
        propose_lr(trials, target, rule="width")
    explicit = propose_lr([], target, target_width=512, rule="width", ref_lr=1e-3, ref_width=128)
    assert explicit.lr == pytest.approx(2.5e-4)


def test_forced_power_law_without_enough_sizes_says_it_fell_back() -> None:
    proposal = propose_lr(sweep(SIZES[:1]), 10**6, rule="power_law")
    assert proposal.rule == "sqrt_params" and "a fit needs 3" in proposal.note


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        propose_lr(sweep(SIZES), 10**6, rule="magic")


def test_fit_reports_r2_in_log_space() -> None:
    best = best_lr_per_size(sweep(SIZES, noise=0.0))
    fit = fit_lr_power_law(best)
    assert fit.r2 == pytest.approx(1.0, abs=1e-3) and fit.coefficient == pytest.approx(C, rel=0.05)
    with pytest.raises(ValueError):
        fit_lr_power_law(best[:1])


def test_toml_fragment_is_ready_to_run() -> None:
    proposal = propose_lr(sweep(SIZES), mlp_params(40, 1024, 2, 10))
    text = proposal.toml_fragment(1024, 2, arch="mlp", model={"norm": "layer"}, train={"optimizer": "adam"})
    doc = tomllib.loads(text)
    assert doc["model"] == {"arch": "mlp", "width": 1024, "depth": 2, "norm": "layer"}
    assert doc["train"]["lr"] == pytest.approx(proposal.lr, rel=1e-2)
    assert doc["train"]["lr_scaling"] == "none" and doc["train"]["optimizer"] == "adam"
    assert text.startswith("# scaletui configurator") and "power_law" in text


def test_toml_fragment_validates_as_a_sweep(tmp_path) -> None:
    from scaletui.config import build_sweep

    proposal = propose_lr(sweep(SIZES), mlp_params(40, 1024, 2, 10))
    doc = tomllib.loads('[experiment]\nname = "next"\n' + proposal.toml_fragment(1024, 2) + "steps = 10\n")
    built = build_sweep(doc, tmp_path / "experiments.toml")
    [run] = built.runs
    assert run.model.width == 1024 and run.train.lr == pytest.approx(proposal.lr, rel=1e-2)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((40, 64, 2, 10, "mlp", "none"), 7434),  # counted by the engine's count_params
        ((40, 32, 1, 10, "mlp", "none"), 1642),
        ((40, 512, 2, 10, "mlp", "none"), 288778),
        ((40, 32, 8, 10, "mlp", "none"), 9034),
        ((40, 64, 4, 10, "resmlp", "layer"), 20426),
    ],
)
def test_mlp_params_matches_the_engine(args: tuple, expected: int) -> None:
    assert mlp_params(*args) == expected


def test_mlp_params_matches_built_models() -> None:
    torch = pytest.importorskip("torch")
    from scaletui.engine.models import build_model, count_params
    from scaletui.records import ModelSpec

    torch.manual_seed(0)
    for arch in ("mlp", "resmlp"):
        for norm in ("none", "batch", "layer"):
            for width, depth, shape in ((8, 1, (40,)), (17, 3, (1, 28, 28))):
                model = build_model(ModelSpec(arch=arch, width=width, depth=depth, norm=norm), shape, 10)
                assert count_params(model) == mlp_params(math.prod(shape), width, depth, 10, arch, norm)
    with pytest.raises(ValueError, match="resnet"):
        mlp_params(3072, 16, 1, 10, "resnet")
