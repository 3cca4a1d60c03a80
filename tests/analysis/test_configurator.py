"""The configurator predicts a new size's learning rate from a stored sweep, and says which rule it used."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import pytest

from scaletui.analysis.configurator import (
    Backtest,
    DropoutTrial,
    LrTrial,
    RuleScore,
    backtest_dropout,
    backtest_lr,
    best_dropout_per_size,
    best_lr_per_size,
    fit_dropout_depth,
    fit_lr_power_law,
    loss_on_curve,
    mlp_params,
    propose_dropout,
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
    from scaletui.core.config import build_sweep

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
    from scaletui.core.specs import ModelSpec
    from scaletui.engine.models import build_model, count_params

    torch.manual_seed(0)
    for arch in ("mlp", "resmlp"):
        for norm in ("none", "batch", "layer"):
            for width, depth, shape in ((8, 1, (40,)), (17, 3, (1, 28, 28))):
                model = build_model(ModelSpec(arch=arch, width=width, depth=depth, norm=norm), shape, 10)
                assert count_params(model) == mlp_params(math.prod(shape), width, depth, 10, arch, norm)
    with pytest.raises(ValueError, match="resnet"):
        mlp_params(3072, 16, 1, 10, "resnet")


# --------------------------------------------------------------------------- the measured curve


def test_loss_on_curve_is_linear_in_log_lr_away_from_the_best_and_a_parabola_around_it() -> None:
    lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    means = [1.0, 0.8, 0.5, 0.6, 0.9]  # best grid rate 4e-3
    mid = math.sqrt(8e-3 * 1.6e-2)  # halfway in log lr between two rates beyond the parabola's span
    assert loss_on_curve(lrs, means, mid, log=True) == pytest.approx(0.75)
    assert loss_on_curve(lrs, means, 2e-3, log=True) == pytest.approx(0.8)  # exactly on the grid
    a, b, c = np.polyfit(np.log(lrs[1:4]), means[1:4], 2)
    vertex = -b / (2 * a)
    assert loss_on_curve(lrs, means, math.exp(vertex), log=True) == pytest.approx(c - b * b / (4 * a))
    assert loss_on_curve(lrs, means, math.exp(vertex), log=True) < min(means)


def test_loss_on_curve_is_unknown_beyond_the_sweep_and_infinite_next_to_a_diverged_rate() -> None:
    lrs, means = [1e-3, 2e-3, 4e-3, 8e-3], [0.9, 0.5, 0.7, math.inf]
    assert math.isnan(loss_on_curve(lrs, means, 5e-4, log=True))
    assert math.isnan(loss_on_curve(lrs, means, 1.6e-2, log=True))
    assert loss_on_curve(lrs, means, 6e-3, log=True) == math.inf
    assert loss_on_curve([0.0, 0.1, 0.2], [0.6, 0.5, 0.7], 0.2, log=False) == pytest.approx(0.7)


# --------------------------------------------------------------------------- backtest: the rule by evidence

FOUR = [(16, 2), (64, 2), (256, 2), (1024, 2)]
CURVATURE = 0.08  # of `sweep`'s bowl, per (ln lr)^2


def test_backtest_holds_out_the_largest_size_and_scores_every_rule() -> None:
    bt = backtest_lr(sweep(FOUR, noise=0.0))
    assert bt is not None
    assert (bt.quantity, bt.held_out, bt.fitted_on) == ("lr", "w1024 d2", ("w16 d2", "w64 d2", "w256 d2"))
    held = mlp_params(40, 1024, 2, 10)
    assert bt.held_out_params == held and bt.measured == pytest.approx(true_best(held), rel=1e-3)
    assert [s.rule for s in bt.scores] == ["power_law", "sqrt_params", "width"]
    law, sqrt, width = bt.scores
    # The losses follow the power law exactly: its prediction is the truth, and it loses nothing.
    assert law.ratio == pytest.approx(1.0, abs=0.01) and law.lost_loss == pytest.approx(0.0, abs=1e-5)
    # The sqrt-params rule scales the anchor's (w256) best rate by sqrt(params ratio): known in closed form,
    # and inside the bowl's parabola its lost loss is curvature * ln(ratio)^2.
    anchor = mlp_params(40, 256, 2, 10)
    assert sqrt.ratio == pytest.approx((held / anchor) ** (K - 0.5), rel=0.01)
    assert sqrt.lost_loss == pytest.approx(CURVATURE * math.log(sqrt.ratio) ** 2, rel=0.05)
    assert width.ratio == pytest.approx(true_best(anchor) * 256 / 1024 / true_best(held), rel=0.01)
    assert bt.winner.rule == "power_law" and bt.winner.where == "inside the sweep"
    assert "held out w1024 d2" in bt.summary() and "power_law 1.00x" in bt.summary()


def test_the_winner_is_the_rule_that_lost_least_then_unknown_then_next_to_divergence() -> None:
    def bt(*scores: RuleScore) -> Backtest:
        return Backtest("lr", "w64 d2", 7434, 1e-2, 0.5, ("w16 d2",), scores)

    close_but_steep = RuleScore("power_law", 1.2e-2, 1e-2, 0.05, math.log(1.2))
    far_but_flat = RuleScore("sqrt_params", 0.6e-2, 1e-2, 0.01, math.log(1 / 0.6))
    beyond = RuleScore("width", 1e-3, 1e-2, math.nan, math.log(10))
    risky = RuleScore("width", 1.01e-2, 1e-2, math.inf, math.log(1.01))
    assert bt(close_but_steep, far_but_flat).winner is far_but_flat  # loss lost decides, not the ratio
    assert bt(beyond, close_but_steep).winner is close_but_steep  # a measured loss beats an unknown one
    assert bt(risky, beyond).winner is beyond  # next to a diverged rate is the worst place to be
    assert (beyond.where, risky.where, far_but_flat.where) == (
        "beyond the swept range", "next to a diverged value", "inside the sweep")
    assert "width 0.10x, lost unknown (beyond the sweep)" in bt(beyond).summary()


def sqrt_then_flat_sweep() -> list[LrTrial]:
    """Best rates flat over the two smallest sizes, then falling as params^-0.5: a power law through the
    smaller sizes bends the wrong way, and the sqrt-params rule from the nearest size is exact."""
    trials = []
    for width in (16, 32, 256, 1024):
        params = mlp_params(40, width, 2, 10)
        best = 0.5 * max(params, mlp_params(40, 32, 2, 10)) ** -0.5
        for lr in best * 2.0 ** (np.arange(-4, 5) + 0.3):
            trials.append(LrTrial(width, 2, params, float(lr), 0, 1.0 + CURVATURE * math.log(lr / best) ** 2))
    return trials


def test_auto_applies_the_rule_that_won_the_backtest_and_says_so() -> None:
    trials = sqrt_then_flat_sweep()
    bt = backtest_lr(trials)
    assert bt is not None and bt.winner.rule == "sqrt_params"
    law = next(s for s in bt.scores if s.rule == "power_law")
    assert law.lost_loss > 10 * bt.winner.lost_loss and bt.winner.ratio == pytest.approx(1.0, abs=0.01)
    target = mlp_params(40, 2048, 2, 10)
    proposal = propose_lr(trials, target, target_width=2048)
    assert proposal.rule == "sqrt_params" and proposal.backtest == bt
    assert proposal.note.startswith("sqrt_params chosen by backtest (held out w1024 d2")
    assert "it won the backtest" in proposal.note and "asked for" not in proposal.note
    anchor = mlp_params(40, 1024, 2, 10)  # with every size, the nearest one anchors the rule
    assert proposal.lr == pytest.approx(0.5 * anchor**-0.5 * math.sqrt(anchor / target), rel=0.01)
    forced = propose_lr(trials, target, rule="power_law")
    assert forced.rule == "power_law" and forced.backtest is None  # a forced rule is applied as asked


def test_three_swept_sizes_give_no_backtest_and_auto_fits_as_before() -> None:
    trials = sweep(SIZES)
    assert backtest_lr(trials) is None
    proposal = propose_lr(trials, mlp_params(40, 1024, 2, 10))
    assert proposal.rule == "power_law" and proposal.backtest is None and "backtest" not in proposal.note


def bowl(width: int, best: float) -> list[LrTrial]:
    """One size's sweep: rates x2 apart around `best`, losses a noiseless bowl in log lr."""
    params = mlp_params(40, width, 2, 10)
    return [LrTrial(width, 2, params, float(lr), 0, 1.0 + CURVATURE * math.log(lr / best) ** 2)
            for lr in best * 2.0 ** (np.arange(-3, 4) + 0.37)]


def test_the_width_rule_competes_only_when_the_target_width_is_known() -> None:
    # The held-out size's best rate is exactly the width rule's prediction from w256: its best / 4.
    rigged = [t for t in sweep(FOUR, noise=0.0) if t.width != 1024]
    rigged += bowl(1024, true_best(mlp_params(40, 256, 2, 10)) / 4)
    bt = backtest_lr(rigged)
    assert bt is not None and bt.winner.rule == "width" and bt.winner.ratio == pytest.approx(1.0, abs=1e-3)
    assert propose_lr(rigged, 10**6, target_width=2048).rule == "width"
    assert propose_lr(rigged, 10**6).rule != "width"  # no target width: the width rule cannot apply


def test_a_winner_that_missed_by_more_than_2x_gets_low_confidence() -> None:
    held = mlp_params(40, 1024, 2, 10)
    off = [t for t in sweep(FOUR, noise=0.0) if t.width != 1024] + bowl(1024, 3 * true_best(held))
    proposal = propose_lr(off, mlp_params(40, 2048, 2, 10), target_width=2048)
    assert proposal.backtest is not None and proposal.backtest.winner.miss > math.log(2)
    assert proposal.confidence == "low"


# --------------------------------------------------------------------------- dropout scaled with depth

DEPTHS = (1, 2, 4, 8)
DROPOUTS = [round(0.05 * i, 2) for i in range(11)]  # 0 ... 0.5


def dropout_sweep(best_p: Callable[[int], float], width: int = 128) -> list[DropoutTrial]:
    """Losses a parabola in p around each depth's best dropout (no noise)."""
    return [DropoutTrial(width, d, mlp_params(40, width, d, 10), p, 0, 0.5 + 4.0 * (p - best_p(d)) ** 2)
            for d in DEPTHS for p in DROPOUTS]


def keep_total(d: int) -> float:
    return 1.0 - 0.64 ** (1.0 / d)  # (1 - p)^depth = 0.64 at every depth


def test_best_dropout_per_size_and_the_depth_fit_find_the_keep_total_law() -> None:
    best = best_dropout_per_size(dropout_sweep(keep_total))
    assert [b.depth for b in best] == list(DEPTHS)
    assert [b.dropout for b in best] == pytest.approx([keep_total(d) for d in DEPTHS], rel=1e-6)
    fit = fit_dropout_depth(best)
    assert fit.exponent == pytest.approx(1.0, abs=1e-6) and fit.predict(16) == pytest.approx(keep_total(16))


def test_dropout_backtest_prefers_keep_total_when_the_data_follow_it() -> None:
    bt = backtest_dropout(dropout_sweep(keep_total))
    assert bt is not None and (bt.quantity, bt.held_out) == ("dropout", "w128 d8")
    scores = {s.rule: s for s in bt.scores}
    assert set(scores) == {"depth_fit", "fixed", "keep_total"}
    assert scores["keep_total"].lost_loss == pytest.approx(0.0, abs=1e-9)
    assert scores["fixed"].predicted == pytest.approx(keep_total(4))  # the nearest depth's p, unchanged
    assert scores["fixed"].lost_loss > 0.005
    assert bt.winner.rule in ("keep_total", "depth_fit") and bt.winner.lost_loss < 1e-6
    proposal = propose_dropout(dropout_sweep(keep_total), 16, target_width=128)
    assert proposal is not None and proposal.backtest == bt
    assert proposal.dropout == pytest.approx(keep_total(16), rel=1e-3)
    assert proposal.note.startswith(f"{bt.winner.rule} chosen by backtest (held out w128 d8")


def test_dropout_backtest_prefers_a_fixed_dropout_when_the_best_p_does_not_move() -> None:
    bt = backtest_dropout(dropout_sweep(lambda d: 0.2))
    assert bt is not None
    scores = {s.rule: s for s in bt.scores}
    assert scores["fixed"].lost_loss == pytest.approx(0.0, abs=1e-9)
    assert scores["keep_total"].lost_loss > 0.005  # halving p from depth 4 to 8 is wrong here
    assert bt.winner.rule in ("fixed", "depth_fit")


def test_dropout_proposals_without_enough_evidence() -> None:
    assert propose_dropout([], 4) is None
    lr_only = [DropoutTrial(64, 2, 7434, 0.0, s, 1.0) for s in range(3)]  # one dropout: no sweep
    assert propose_dropout(lr_only, 4) is None
    three = [t for t in dropout_sweep(keep_total) if t.depth != 8]
    assert backtest_dropout(three) is None
    fitted = propose_dropout(three, 8)
    assert fitted is not None and fitted.rule == "depth_fit" and fitted.backtest is None
    two = [t for t in three if t.depth != 4]
    rule_of_thumb = propose_dropout(two, 8)
    assert rule_of_thumb is not None and rule_of_thumb.rule == "keep_total"
    assert rule_of_thumb.dropout == pytest.approx(1 - (1 - keep_total(2)) ** (2 / 8), rel=1e-6)
    assert rule_of_thumb.confidence == "low"  # depth 8 is 4x beyond the deepest swept
    zeros = [t for t in dropout_sweep(lambda d: 0.0) if t.depth != 8]  # best p 0 everywhere: no log to fit
    fell_back = propose_dropout(zeros, 8, rule="depth_fit")
    assert fell_back is not None and fell_back.rule == "keep_total" and "no depth fit" in fell_back.note
    with pytest.raises(ValueError, match="unknown dropout rule"):
        propose_dropout(three, 8, rule="magic")
