"""Each detector of scaletui.analysis.diagnose on synthetic series: it fires at the step where the
evidence becomes conclusive, stays silent on a healthy run, and follows its threshold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scaletui.analysis.diagnose import (
    GroupRow,
    RunSeries,
    Thresholds,
    detect_divergence,
    detect_gradients,
    detect_overfitting,
    detect_plateau,
    diagnose_group,
    diagnose_run,
    lr_suggestion,
    series_from_records,
    thresholds_from,
)
from scaletui.core.records import LayerStats, MetricRecord

TH = Thresholds()


def healthy(n: int = 2000, layers: int = 4, seed: int = 0, eval_every: int = 100, log_every: int = 10,
            **overrides: object) -> RunSeries:
    """A run that keeps learning: noisy train loss decaying towards 0.5, a test loss tracking it,
    gradient norms of the same order in every layer, weights growing slowly."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1, dtype=float)
    clean = 0.5 + 1.8 * np.exp(-steps / 500)
    train = clean * (1 + 0.05 * rng.standard_normal(n))
    ev = np.arange(0, n + 1, eval_every, dtype=float)
    test = 0.55 + 1.8 * np.exp(-ev / 500) + 0.005 * rng.standard_normal(len(ev))
    ls = np.arange(log_every, n + 1, log_every, dtype=float)
    decay = np.exp(-ls / 2000)[:, None]
    grad = decay * np.linspace(0.5, 1.0, layers)[None, :] * np.exp(0.3 * rng.standard_normal((len(ls), layers)))
    weight = (1 + ls / n)[:, None] * np.ones(layers)[None, :]
    fields = dict(run_id=7, width=64, depth=layers - 1, params=10_000, lr=1e-3, steps=steps, train_loss=train,
                  eval_steps=ev, test_loss=test, test_acc=np.clip(1 - test / 3, 0, 1),
                  train_acc=np.clip(1 - clean[np.maximum(ev.astype(int) - 1, 0)] / 3, 0, 1), layer_steps=ls,
                  grad_norm=grad, weight_norm=weight, nonfinite=np.zeros(len(ls)))
    fields.update(overrides)
    return RunSeries(**fields)  # type: ignore[arg-type]


def kinds(alerts: list) -> list[str]:
    return [a.kind for a in alerts]


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("seed", range(5))
def test_healthy_run_raises_nothing(seed: int) -> None:
    s = healthy(seed=seed)
    assert diagnose_run(s, TH) == []
    assert diagnose_run(s, TH, group_best=0.5, ref_params=1000) == []


def test_healthy_prefixes_raise_nothing() -> None:
    """The runner calls diagnose_run as a run grows: no prefix of a healthy run may alert."""
    full = healthy(seed=3)
    for n in (5, 50, 400, 1000, 1500):
        s = truncate(full, n)
        assert diagnose_run(s, TH, group_best=0.55) == [], n


def truncate(s: RunSeries, n: int) -> RunSeries:
    keep_e, keep_l = s.eval_steps <= n, s.layer_steps <= n
    return replace(s, steps=s.steps[:n], train_loss=s.train_loss[:n], eval_steps=s.eval_steps[keep_e],
                   test_loss=s.test_loss[keep_e], test_acc=s.test_acc[keep_e], train_acc=s.train_acc[keep_e],
                   layer_steps=s.layer_steps[keep_l], grad_norm=s.grad_norm[keep_l],
                   weight_norm=s.weight_norm[keep_l], nonfinite=s.nonfinite[keep_l])


def test_empty_and_tiny_series() -> None:
    empty = RunSeries(run_id=None, width=8, depth=1, params=100, lr=1e-3, steps=[], train_loss=[])
    assert diagnose_run(empty) == []
    assert diagnose_run(truncate(healthy(), 1)) == []


# --------------------------------------------------------------------------- divergence


def test_nonfinite_train_loss_is_critical_divergence_at_its_step() -> None:
    s = healthy()
    train = s.train_loss.copy()
    train[700:] = np.nan  # step 701 onwards
    alerts = diagnose_run(replace(s, train_loss=train), TH)
    assert kinds(alerts) == ["divergence"]
    assert alerts[0].step == 701 and alerts[0].severity == "critical" and alerts[0].run_id == 7
    assert "nan" in alerts[0].message


def test_nonfinite_gradients_alone_are_divergence() -> None:
    s = healthy()
    nonfinite = s.nonfinite.copy()
    nonfinite[49] = 12  # log step 500
    [alert] = detect_divergence(replace(s, nonfinite=nonfinite), TH)
    assert alert.step == 500 and "12" in alert.message


def test_loss_blowup_fires_when_sustained() -> None:
    s = healthy()
    train = s.train_loss.copy()
    train[1199:] *= 40  # steps 1200.. : ~25x the best level, sustained
    [alert] = detect_divergence(replace(s, train_loss=train), TH)
    assert alert.kind == "divergence" and alert.severity == "critical"
    assert alert.step == 1200 + TH.divergence_window - 1
    assert alert.evidence["loss"] > TH.divergence_factor * alert.evidence["reference_loss"]


def test_single_spike_is_not_divergence() -> None:
    s = healthy()
    train = s.train_loss.copy()
    train[[800, 803, 806]] *= 100  # isolated spikes, never 5 steps in a row
    assert detect_divergence(replace(s, train_loss=train), TH) == []


def test_divergence_factor_is_respected() -> None:
    s = healthy()
    train = s.train_loss.copy()
    train[1199:] *= 40
    blown = replace(s, train_loss=train)
    assert detect_divergence(blown, replace(TH, divergence_factor=100.0)) == []
    assert detect_divergence(blown, replace(TH, divergence_factor=5.0))


def test_memorised_loss_tiny_wiggle_is_not_divergence() -> None:
    """A train loss that fell to 1e-4 and wobbles to 1e-2 stays far below the initial loss: the
    divergence_floor keeps that from counting as a 100x blow-up."""
    s = healthy()
    train = s.train_loss.copy()
    train[1000:] = 1e-4
    train[1500:1600] = 1e-2
    assert detect_divergence(replace(s, train_loss=train), TH) == []


def test_suggestion_uses_sqrt_params_rule_with_a_reference() -> None:
    s = replace(healthy(), params=40_000, lr=4e-3)
    lr, why = lr_suggestion(s, TH, ref_params=10_000)
    assert lr == pytest.approx(2e-3)  # 4e-3 * sqrt(10k / 40k)
    assert "sqrt" in why and "0.004 -> 0.002" in why
    # the run's own reference is used when none is given
    lr2, _ = lr_suggestion(replace(s, lr_ref_params=10_000, base_lr=4e-3), TH)
    assert lr2 == pytest.approx(2e-3)
    # already scaled by the rule: back off by lr_backoff instead
    scaled = replace(s, lr=2e-3, base_lr=4e-3, lr_ref_params=10_000)
    lr3, why3 = lr_suggestion(scaled, TH)
    assert lr3 == pytest.approx(2e-3 / TH.lr_backoff) and "already" in why3
    # no reference at all
    lr4, _ = lr_suggestion(s, TH)
    assert lr4 == pytest.approx(4e-3 / TH.lr_backoff)


def test_divergence_alert_carries_the_suggestion() -> None:
    s = replace(healthy(), params=40_000, lr=4e-3)
    train = s.train_loss.copy()
    train[300:] = np.inf
    [alert] = diagnose_run(replace(s, train_loss=train), TH, ref_params=10_000)
    assert alert.evidence["suggested_lr"] == pytest.approx(2e-3)
    assert "sqrt" in alert.suggestion


def unstable(train_rise: float, grad_growth: float) -> RunSeries:
    """Test loss best at step 1000, then 1.3x, 1.6x, 2x, 2.4x ... its best; from step 1000 the train
    loss stops falling and is scaled by `train_rise`, the gradient norms by `grad_growth` (both
    ramped in over 300 steps)."""
    s = healthy()
    test = s.test_loss.copy()
    best = test[10]
    test[11:] = best * np.linspace(1.3, 4.0, len(test) - 11)
    ramp_t = np.clip((s.steps - 1000) / 300, 0, 1)
    train = np.where(s.steps > 1000, s.train_loss[900:1000].mean(), s.train_loss) * (1 + (train_rise - 1) * ramp_t)
    ramp_l = np.clip((s.layer_steps - 1000) / 300, 0, 1)[:, None]
    grad = s.grad_norm * (1 + (grad_growth - 1) * ramp_l)
    weight = s.weight_norm * (1 + 0.5 * ramp_l)
    return replace(s, test_loss=test, train_loss=train, grad_norm=grad, weight_norm=weight)


def test_rising_test_loss_with_rising_train_loss_is_instability() -> None:
    alerts = diagnose_run(unstable(train_rise=1.6, grad_growth=1.0), TH)
    assert kinds(alerts) == ["divergence"]
    # 1.3x at 1100, 1.6x at 1200 (first above 1.5x), still above at 1300: rise_evals = 2 -> 1300
    assert alerts[0].step == 1300 and alerts[0].severity == "warning"
    assert "not overfitting" in alerts[0].message


def test_rising_test_loss_with_growing_gradients_is_instability() -> None:
    [alert] = detect_divergence(unstable(train_rise=1.0, grad_growth=4.0), TH)
    assert alert.step == 1300 and alert.evidence["grad_norm_growth"] > TH.norm_growth_factor


def test_rising_test_loss_with_quiet_train_and_norms_is_not_instability() -> None:
    assert detect_divergence(unstable(train_rise=1.0, grad_growth=1.0), TH) == []


# --------------------------------------------------------------------------- overfitting


def memorising() -> RunSeries:
    """Train loss keeps falling towards 0; test loss best at step 400, then climbs 10% per evaluation."""
    s = healthy()
    train = s.train_loss * np.exp(-s.steps / 300)
    test = s.test_loss.copy()
    test[5:] = test[4] * (1 + 0.1 * np.arange(1, len(test) - 4))  # 1.1x at 500, 1.2x at 600, ...
    return replace(s, train_loss=train, test_loss=test)


def test_overfitting_fires_when_test_rises_while_train_falls() -> None:
    alerts = diagnose_run(memorising(), TH)
    assert kinds(alerts) == ["overfitting"]
    # above 1.1x its best from step 600 (500 is exactly 1.1x, not above); two evaluations -> 700
    assert alerts[0].step == 700
    assert alerts[0].evidence["best_step"] == 400


def test_overfitting_threshold_is_respected() -> None:
    assert detect_overfitting(memorising(), replace(TH, overfit_test_rise=0.9)) != []
    assert detect_overfitting(memorising(), replace(TH, overfit_test_rise=0.99, rise_evals=50)) == []
    assert detect_overfitting(memorising(), replace(TH, overfit_gap_growth=100.0)) == []


def test_generalisation_gap_alone_is_not_overfitting() -> None:
    """Test loss above train loss by a growing margin but still improving: no alert."""
    s = healthy()
    train = s.train_loss * np.exp(-s.steps / 1000)
    assert detect_overfitting(replace(s, train_loss=train), TH) == []


# --------------------------------------------------------------------------- plateau


def flat(level: float = 2.3, n: int = 2000, seed: int = 0) -> RunSeries:
    s = healthy(n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    train = level * (1 + 0.02 * rng.standard_normal(n))
    test = np.full(len(s.eval_steps), level) + 0.002 * rng.standard_normal(len(s.eval_steps))
    return replace(s, train_loss=train, test_loss=test)


def test_flatline_from_init_fires_once_the_window_spans_enough_steps() -> None:
    [alert] = detect_plateau(flat(), TH)
    assert alert.kind == "plateau"
    # window = last half of the steps so far, at least plateau_min_steps = 200 long: step 401
    assert alert.step == 401
    assert "flatline" in alert.message


def test_plateau_far_above_the_group_best() -> None:
    s = healthy()
    train = np.where(s.steps < 500, s.train_loss, 1.0 * (1 + 0.02 * np.sin(s.steps)))
    test = np.where(s.eval_steps < 500, s.test_loss, 1.05)
    stuck = replace(s, train_loss=train, test_loss=test)
    [alert] = detect_plateau(stuck, TH, group_best=0.5)
    assert alert.step > 500 and alert.evidence["group_best"] == 0.5
    assert detect_plateau(stuck, TH, group_best=0.9) == []  # 1.05 < 1.3 x 0.9: near the best
    assert detect_plateau(stuck, TH) == []  # no group, and 1.0 is well below 0.8 x the initial loss


def test_plateau_thresholds_are_respected() -> None:
    s = flat()
    train = s.train_loss.copy()
    train[0] = 2.3 / 0.7  # the loss did fall: it sits at 70% of its initial level
    fell = replace(s, train_loss=train)
    assert detect_plateau(fell, TH) == []
    assert detect_plateau(fell, replace(TH, flatline_frac=0.6))[0].step == 401
    assert detect_plateau(fell, TH, group_best=2.0) == []  # 2.3 < 1.3 x 2.0
    assert detect_plateau(fell, replace(TH, plateau_gap_factor=1.1), group_best=2.0)[0].step == 401
    # the window is the last half of the steps so far: 300 steps long at step 601
    assert detect_plateau(flat(), replace(TH, plateau_min_steps=300))[0].step == 601
    assert detect_plateau(flat(), replace(TH, plateau_min_steps=1000)) == []  # needs step 2001 of 2000


def test_batch_noise_must_be_ruled_out() -> None:
    """A flat but very noisy train loss is stuck only once the window's standard error is small."""
    s = flat(level=1.0)
    rng = np.random.default_rng(5)
    noisy = replace(s, train_loss=1.0 + 0.3 * rng.standard_normal(len(s.steps)))
    [alert] = detect_plateau(noisy, TH, group_best=0.5)
    assert alert.step >= 401
    assert detect_plateau(noisy, replace(TH, plateau_z=50.0), group_best=0.5) == []


def test_flat_train_loss_with_improving_test_loss_is_not_a_plateau() -> None:
    """Where the window holds enough evaluations, the test loss must be stuck too."""
    s = flat()
    test = s.test_loss * np.exp(-s.eval_steps / 1000)
    alerts = detect_plateau(replace(s, test_loss=test), TH)
    # early on (fewer than plateau_min_evals evaluations in the window) the train loss decides alone
    assert [a.step for a in alerts] == [401]
    assert detect_plateau(replace(s, test_loss=test), replace(TH, plateau_min_evals=1)) == []


def test_slowly_improving_run_is_not_a_plateau() -> None:
    s = flat()
    train = s.train_loss * np.exp(-s.steps / 1500)  # ~17% better per quarter of the run
    test = s.test_loss * np.exp(-s.eval_steps / 1500)
    assert detect_plateau(replace(s, train_loss=train, test_loss=test), TH, group_best=0.3) == []


# --------------------------------------------------------------------------- gradients


def with_layer0(s: RunSeries, factor: np.ndarray) -> RunSeries:
    grad = s.grad_norm.copy()
    grad[:, 0] = grad[:, -1] * factor
    return replace(s, grad_norm=grad)


def test_vanishing_gradients_fire_after_grad_window_logs() -> None:
    s = healthy()
    factor = np.where(s.layer_steps >= 300, 1e-3, 1.0)
    alerts = diagnose_run(with_layer0(s, factor), TH)
    assert kinds(alerts) == ["vanishing_gradients"]
    assert alerts[0].step == 300 + 10 * (TH.grad_window - 1)  # logs at 300..340
    assert alerts[0].evidence["ratio"] == pytest.approx(1e-3)


def test_exploding_gradients_fire() -> None:
    s = healthy()
    factor = np.where(s.layer_steps >= 1000, 500.0, 1.0)
    [alert] = detect_gradients(with_layer0(s, factor), TH)
    assert alert.kind == "exploding_gradients" and alert.step == 1040


def test_one_noisy_log_step_is_not_vanishing() -> None:
    s = healthy()
    factor = np.ones(len(s.layer_steps))
    factor[[30, 33, 36, 39]] = 1e-5  # isolated: never grad_window logs in a row, never a median
    assert detect_gradients(with_layer0(s, factor), TH) == []


def test_gradient_ratio_thresholds_are_respected() -> None:
    s = with_layer0(healthy(), np.full(len(healthy().layer_steps), 0.05))
    assert detect_gradients(s, TH) == []
    assert kinds(detect_gradients(s, replace(TH, grad_ratio_vanishing=0.1))) == ["vanishing_gradients"]


def test_collapsing_middle_layer_is_vanishing() -> None:
    s = healthy()
    grad = s.grad_norm.copy()
    grad[s.layer_steps >= 500, 1] *= 1e-3
    [alert] = detect_gradients(replace(s, grad_norm=grad), TH)
    assert alert.kind == "vanishing_gradients" and alert.evidence["layer"] == 1
    assert alert.step == 520  # the rolling median of 5 logs turns at the third collapsed one


def test_all_layers_falling_together_is_not_a_collapse() -> None:
    s = healthy()
    grad = s.grad_norm * np.where(s.layer_steps >= 500, 1e-3, 1.0)[:, None]
    assert detect_gradients(replace(s, grad_norm=grad), TH) == []


# --------------------------------------------------------------------------- group level


def rows(losses: dict[tuple[int, int], list[float]]) -> list[GroupRow]:
    out, run_id = [], 0
    for (w, d), values in losses.items():
        for seed, v in enumerate(values):
            run_id += 1
            out.append(GroupRow(w, d, seed, v, run_id))
    return out


def test_monotone_clean_grid_raises_nothing() -> None:
    grid = {(w, d): [1.0 / w**0.3 / d**0.1 + 0.001 * s for s in range(2)] for w in (16, 32, 64) for d in (1, 2, 4)}
    assert diagnose_group(rows(grid), TH) == []


def test_deeper_model_worse_than_shallow_is_non_monotonic() -> None:
    table = rows({(64, 1): [1.00, 1.02], (64, 2): [0.90, 0.91], (64, 4): [1.20, 1.21]})
    [alert] = diagnose_group(table, TH)
    assert alert.kind == "non_monotonic" and alert.step is None and alert.run_id is None
    ev = alert.evidence
    assert (ev["width"], ev["depth_small"], ev["depth_large"]) == (64, 2, 4)
    assert ev["loss_large"] == pytest.approx(1.205) and ev["run_large_s0"] == 5
    assert "depth 4" in alert.message and "depth 2" in alert.message


def test_wider_model_worse_is_non_monotonic_too() -> None:
    [alert] = diagnose_group([(32, 2, 0, 0.8), (64, 2, 0, 0.9)], TH)
    assert alert.kind == "non_monotonic" and alert.evidence["width_large"] == 64


def test_worse_within_the_seed_spread_is_seed_sensitivity_not_non_monotonic() -> None:
    table = rows({(64, 1): [1.00, 1.20], (64, 2): [1.05, 1.25]})
    [alert] = diagnose_group(table, TH)
    assert alert.kind == "seed_sensitivity"
    assert alert.evidence["spread_small"] == pytest.approx(0.2)


def test_seed_sensitivity_judges_the_gap_by_the_means_uncertainty_not_the_seeds_range() -> None:
    """16 seeds spread over 0.052 but their means are 0.03 apart: 2 standard errors of the gap are
    0.012, a real trend (the default sweep's case). The same gap and spread with 2 seeds is not."""
    many = rows({(64, 1): list(0.53 + np.linspace(-0.026, 0.026, 16)),
                 (64, 2): list(0.50 + np.linspace(-0.026, 0.026, 16))})
    assert diagnose_group(many, TH) == []
    few = rows({(64, 1): [0.504, 0.556], (64, 2): [0.474, 0.526]})
    [alert] = diagnose_group(few, TH)
    assert alert.kind == "seed_sensitivity" and alert.evidence["seed_noise"] == pytest.approx(2 * 0.052 / 2**0.5)
    assert "within the seed noise 0.0735" in alert.message


def test_group_thresholds_are_respected() -> None:
    table = [(64, 1, 0, 1.0), (64, 2, 0, 1.005)]  # 0.5% worse
    assert diagnose_group(table, TH) == []
    assert kinds(diagnose_group(table, replace(TH, monotonic_tolerance=0.001))) == ["non_monotonic"]
    spread = rows({(64, 1): [1.0, 1.1], (64, 2): [0.8, 0.9]})  # spread 0.1, gap 0.2
    assert diagnose_group(spread, TH) == []
    assert kinds(diagnose_group(spread, replace(TH, seed_spread_factor=0.4))) == ["seed_sensitivity"]


def test_diverged_runs_are_left_out_of_group_checks() -> None:
    assert diagnose_group([(64, 1, 0, 1.0), (64, 2, 0, float("nan")), (64, 4, 0, 0.8)], TH) == []


# --------------------------------------------------------------------------- plumbing


def test_thresholds_validate_and_load_from_a_mapping() -> None:
    th = thresholds_from({"divergence_factor": 5, "plateau_window": 0.5, "grad_window": 3.0})
    assert th.divergence_factor == 5 and th.plateau_window == 0.5 and th.grad_window == 3
    with pytest.raises(ValueError, match="unknown threshold"):
        thresholds_from({"divergance_factor": 5})
    with pytest.raises(ValueError, match="divergence_factor"):
        Thresholds(divergence_factor=0.5)
    with pytest.raises(ValueError, match="plateau_window"):
        Thresholds(plateau_window=1.5)


def test_series_from_records_aligns_and_dedupes() -> None:
    metrics = [MetricRecord(s, "train_loss", 2.0 - s / 10) for s in range(1, 6)]
    metrics += [MetricRecord(3, "train_loss", 9.0)]  # re-emitted after a resume: last wins
    metrics += [MetricRecord(0, "test_loss", 2.3), MetricRecord(0, "test_acc", 0.1)]
    metrics += [MetricRecord(5, "test_loss", 1.5)]
    layers = [LayerStats(s, layer, f"fc{layer}", 1.0 + layer, 2.0, 0.01, 0) for s in (2, 4) for layer in range(3)]
    layers = [r for r in layers if not (r.step == 4 and r.layer == 2)] + [LayerStats(4, 1, "fc1", 1.0, 2.0, 0.0, 3)]
    s = series_from_records(metrics, layers, run_id=1, width=8, depth=2, params=100, lr=0.1)
    assert list(s.steps) == [1, 2, 3, 4, 5] and s.train_loss[2] == 9.0
    assert list(s.eval_steps) == [0, 5] and s.test_acc[0] == 0.1 and np.isnan(s.test_acc[1])
    assert s.train_acc.size == 0
    assert s.grad_norm.shape == (2, 3) and np.isnan(s.grad_norm[1, 2]) and s.grad_norm[1, 1] == 1.0
    assert list(s.nonfinite) == [0, 3]


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="test_loss"):
        RunSeries(run_id=None, width=8, depth=1, params=10, lr=1e-3, steps=[1, 2], train_loss=[1, 1],
                  eval_steps=[0], test_loss=[1, 2])


def test_a_long_healthy_run_raises_nothing() -> None:
    """The runner re-diagnoses every run as it grows: 100k steps and 20 layers stay quiet. (Its speed is not
    asserted: a wall-clock bound fails on a loaded shared machine, and a test must wait on events only.)"""
    s = healthy(n=100_000, layers=20, log_every=10, eval_every=500)
    assert diagnose_run(s, TH, group_best=0.5) == []
