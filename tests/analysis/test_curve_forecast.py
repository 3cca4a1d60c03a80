"""analysis.curve_forecast: a run's final loss from its loss so far and the finished runs' curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaletui.analysis.curve_forecast import (
    BY_DEPTH,
    POOLED,
    Finished,
    depth_term,
    forecast_final,
    latest_window,
    window_mean,
    window_means,
    within_size_slope,
)

A, B = -0.2, -0.05  # the drop still to come: log(final / at t) = A + B log params


def _refs(sizes: list[float], depth: int = 1, seeds: int = 4, noise: float = 0.0, c: float = 0.0,
          seed: int = 0) -> list[Finished]:
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        for _ in range(seeds):
            at = 1.0 + rng.uniform(0, 0.1)
            r = A + B * math.log(n) + c * depth_term(depth) + noise * rng.standard_normal()
            out.append(Finished(n, depth, at, at * math.exp(r)))
    return out


def test_the_drop_still_to_come_is_learned_from_the_runs_of_its_depth() -> None:
    f = forecast_final(0.9, 3e4, 1, _refs([1e3, 1e4, 1e5]))
    assert f is not None and f.basis == BY_DEPTH and (f.n_runs, f.n_sizes) == (12, 3)
    assert f.predicted == pytest.approx(0.9 * math.exp(A + B * math.log(3e4)), rel=1e-9)
    assert f.coef == pytest.approx((A, B), abs=1e-9)


def test_the_band_covers_noisy_truths_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(1)
    inside = []
    for trial in range(300):
        refs = _refs([1e3, 3e3, 1e4, 3e4], noise=0.03, seed=trial)
        n = float(rng.uniform(1e3, 3e4))
        f = forecast_final(1.0, n, 1, refs)
        assert f is not None
        truth = math.exp(A + B * math.log(n) + 0.03 * rng.standard_normal())
        inside.append(f.lo <= truth <= f.hi)
    assert 0.85 <= np.mean(inside) <= 0.99


def test_the_band_widens_away_from_the_finished_sizes() -> None:
    refs = _refs([1e3, 3e3, 1e4], noise=0.02)
    near, far = forecast_final(1.0, 3e3, 1, refs), forecast_final(1.0, 1e6, 1, refs)
    assert near is not None and far is not None
    assert far.hi / far.lo > near.hi / near.lo


def test_a_depth_without_two_finished_sizes_learns_from_every_depth() -> None:
    refs = _refs([1e3, 1e4], depth=2, c=0.1) + _refs([1e3, 1e4], depth=4, c=0.1) + _refs([5e3], depth=6, c=0.1)
    f = forecast_final(1.0, 2e4, 6, refs)
    assert f is not None and f.basis == POOLED
    assert f.predicted == pytest.approx(math.exp(A + B * math.log(2e4) + 0.1 * depth_term(6)), rel=1e-9)


def test_the_pooled_law_extrapolates_to_a_shallower_depth_along_one_over_root_depth() -> None:
    # The widest sizes of the shallow depths train before any run of their depth has finished: depth 1
    # here is predicted from depths 2-6, along depth^-1/2 (log depth put them 4-7% low on the default sweep).
    def drop(n: float, depth: int) -> float:
        return A + B * math.log(n) + 0.4 / math.sqrt(depth)
    refs = [Finished(n, d, 1.0, math.exp(drop(n, d))) for d in (2, 3, 4, 6) for n in (1e3, 1e4) for _ in range(3)]
    f = forecast_final(1.0, 2e4, 1, refs)
    assert f is not None and f.basis == POOLED
    assert math.log(f.predicted) == pytest.approx(drop(2e4, 1), abs=1e-9)


def test_a_bending_ratio_law_is_followed_through_the_nearest_finished_sizes() -> None:
    # What each size still drops curves in log N; the run is smaller than every finished size (the
    # sweep trains its largest first). A line through all of them misses it; the nearest two carry it.
    def drop(n: float) -> float:
        return -0.1 * math.log(n) + 0.02 * math.log(n) ** 2 - 0.2
    sizes, run = [4e3, 8e3, 1.6e4, 3.2e4, 6.4e4], 2e3
    refs = [Finished(n, 1, 1.0, math.exp(drop(n))) for n in sizes for _ in range(4)]
    f = forecast_final(1.0, run, 1, refs)
    assert f is not None and f.basis == BY_DEPTH
    slope, intercept = np.polyfit(np.log(sizes), [drop(n) for n in sizes], 1)
    chord = abs(intercept + slope * math.log(run) - drop(run))
    tangent = abs(math.log(f.predicted) - drop(run))
    assert chord > 0.05 and tangent < chord / 2
    # the two nearest sizes' own line, extrapolated one doubling: what the law is close to
    near_slope = (drop(8e3) - drop(4e3)) / math.log(2)
    assert math.log(f.predicted) == pytest.approx(drop(4e3) - near_slope * math.log(2), abs=0.01)
    # the band is the whole law's: it still covers the truth
    assert f.lo <= math.exp(drop(run)) <= f.hi


def test_the_pooled_law_is_also_the_tangent_at_the_nearest_finished_sizes() -> None:
    # The first size of a new depth, wider than every finished one: the drop bends in log N at every
    # depth, so a chord through every finished size (of any depth) misses it; the nearest carry it.
    def drop(n: float, depth: int) -> float:
        return -0.1 * math.log(n) + 0.02 * math.log(n) ** 2 - 0.2 + 0.1 * depth_term(depth)
    refs = [Finished(n, d, 1.0, math.exp(drop(n, d))) for d in (3, 4) for n in (2e3, 4e3, 8e3, 1.6e4, 3.2e4)
            for _ in range(3)]
    run, depth = 6.4e4, 2
    f = forecast_final(1.0, run, depth, refs)
    assert f is not None and f.basis == POOLED
    x = np.array([[1.0, math.log(r.params), depth_term(r.depth)] for r in refs])
    chord_coef, *_ = np.linalg.lstsq(x, [math.log(r.final) for r in refs], rcond=None)
    chord = abs(float(np.array([1.0, math.log(run), depth_term(depth)]) @ chord_coef) - drop(run, depth))
    tangent = abs(math.log(f.predicted) - drop(run, depth))
    assert chord > 0.05 and tangent < chord / 2
    assert f.lo <= math.exp(drop(run, depth)) <= f.hi


@pytest.mark.parametrize("refs", [
    [],
    _refs([1e3], seeds=8),  # one size: no slope to learn
    _refs([1e3, 1e4], seeds=1),  # two runs: too few for a fit with a scatter
])
def test_nothing_to_learn_from_gives_no_prediction(refs: list[Finished]) -> None:
    assert forecast_final(1.0, 1e4, 1, refs) is None


@pytest.mark.parametrize("loss_now", [0.0, -1.0, math.nan, math.inf])
def test_an_unusable_loss_gives_no_prediction(loss_now: float) -> None:
    assert forecast_final(loss_now, 1e4, 1, _refs([1e3, 1e4])) is None


def test_unusable_reference_runs_are_left_out() -> None:
    bad = [Finished(1e3, 1, math.nan, 1.0), Finished(1e4, 1, 1.0, 0.0)]
    good = _refs([1e3, 1e4])
    assert forecast_final(1.0, 3e3, 1, good + bad) == forecast_final(1.0, 3e3, 1, good)


def _lucky_refs(sizes: list[float], carried: float, seeds: int = 6) -> list[Finished]:
    """Finished runs whose luck at step t (a log deviation from their size's loss then) is `carried`
    times still there at the end; the size's own drop is A + B log N as in `_refs`."""
    out = []
    for n in sizes:
        for luck in np.linspace(-0.1, 0.1, seeds):
            out.append(Finished(n, 1, 1.2 * math.exp(luck), 1.2 * math.exp(A + B * math.log(n) + carried * luck)))
    return out


@pytest.mark.parametrize("carried", [0.0, 0.2, 1.0])
def test_how_much_of_a_runs_luck_lasts_is_learned_within_the_finished_sizes(carried: float) -> None:
    refs = _lucky_refs([1e3, 1e4, 1e5], carried)
    assert within_size_slope(refs) == pytest.approx(carried, abs=1e-9)
    peers = [1.0 * math.exp(-0.1), 1.0 * math.exp(0.05)]
    f = forecast_final(1.0 * math.exp(0.1), 3e4, 1, refs, peers_now=peers)
    assert f is not None and (f.shrink, f.n_peers) == (pytest.approx(carried), 2)
    mean_now = (-0.1 + 0.05 + 0.1) / 3  # the size's mean log loss now, the run among its peers
    expected = mean_now + carried * (0.1 - mean_now) + A + B * math.log(3e4)
    assert f.predicted == pytest.approx(math.exp(expected), rel=1e-9)


def test_without_peers_or_without_a_size_of_two_runs_the_run_carries_all_its_luck() -> None:
    refs = _lucky_refs([1e3, 1e4, 1e5], carried=0.0)
    alone = forecast_final(1.3, 3e4, 1, refs)
    assert alone is not None and alone.predicted == pytest.approx(1.3 * math.exp(A + B * math.log(3e4)), rel=1e-9)
    one_each = _lucky_refs([1e3, 3e3, 1e4, 3e4, 1e5], carried=0.0, seeds=1)
    assert within_size_slope(one_each) == 1.0


def test_a_run_beyond_the_finished_sizes_gets_a_band_from_extrapolations_widened_with_the_distance() -> None:
    # A bend the ratio law cannot follow: what each size still drops curves in log N.
    sizes = [1e3, 2e3, 4e3, 8e3, 1.6e4]
    def drop(n: float) -> float:
        return -0.1 * math.log(n) + 0.02 * math.log(n) ** 2 - 0.2
    refs = [Finished(n, 1, 1.0, math.exp(drop(n))) for n in sizes for _ in range(4)]
    inside, near, far = (forecast_final(1.0, n, 1, refs) for n in (3e3, 3.2e4, 1e6))
    assert inside is not None and near is not None and far is not None
    widths = [math.log(f.hi / f.lo) / 2 for f in (inside, near, far)]
    assert widths[0] < widths[1] < widths[2]
    # Each edge size predicted from the other four (one doubling away, as 3.2e4 is from 1.6e4): the band
    # at 1e6, six doublings beyond, is at least six times the smaller of those two errors.
    logs = [math.log(n) for n in sizes]
    edge_errors = []
    for out in (0, len(sizes) - 1):
        keep = [i for i in range(len(sizes)) if i != out]
        slope, intercept = np.polyfit([logs[i] for i in keep], [drop(sizes[i]) for i in keep], 1)
        edge_errors.append(abs(intercept + slope * logs[out] - drop(sizes[out])))
    assert widths[2] >= math.log(1e6 / 1.6e4) / math.log(2) * min(edge_errors)
    assert widths[1] >= min(edge_errors)


def _bending_drop(n: float) -> float:
    """What each size still drops, curving in log N (every depth alike here)."""
    return -0.1 * math.log(n) + 0.02 * math.log(n) ** 2 - 0.2


def test_two_sizes_extrapolated_borrow_the_shape_error_of_a_depth_that_shows_its_own() -> None:
    # Depth 2 has finished only its two largest sizes and the run lies below both (the sweep trains its
    # largest first): two sizes cannot show what a straight law misses, so the band borrows it from
    # depth 1, whose five sizes, each edge left out in turn, can.
    sizes = [1e3, 2e3, 4e3, 8e3, 1.6e4]
    refs = ([Finished(n, 1, 1.0, math.exp(_bending_drop(n))) for n in sizes for _ in range(4)]
            + [Finished(n, 2, 1.0, math.exp(_bending_drop(n))) for n in (8e3, 1.6e4) for _ in range(4)])
    run = 2e3
    f = forecast_final(1.0, run, 2, refs)
    assert f is not None and f.basis == BY_DEPTH and f.n_sizes == 2
    miss = abs(math.log(f.predicted) - _bending_drop(run))
    assert miss > 0.05  # the two-point line misses the bend
    assert f.lo <= math.exp(_bending_drop(run)) <= f.hi  # and the band says so
    # The borrowed error: depth 1's edge sizes, each predicted from the other four, scaled by how much
    # farther the run lies (two doublings below 8e3) than the edge lay from the rest (one doubling).
    logs = [math.log(n) for n in sizes]
    edge_errors = []
    for out in (0, len(sizes) - 1):
        keep = [i for i in range(len(sizes)) if i != out]
        slope, intercept = np.polyfit([logs[i] for i in keep], [_bending_drop(sizes[i]) for i in keep], 1)
        edge_errors.append(2 * abs(intercept + slope * logs[out] - _bending_drop(sizes[out])))
    assert math.log(f.hi / f.lo) / 2 >= min(edge_errors)


def test_two_sizes_extrapolated_with_no_depth_of_three_sizes_borrow_from_the_pooled_law() -> None:
    # No depth has three finished sizes yet (early in a sweep trained largest first): the pooled law over
    # both depths, its edge sizes left out, is what shows the bend. The run lies less than a doubling
    # below its depth's sizes; depth 1's smallest size lies a whole doubling below the rest.
    def drop(n: float) -> float:
        return -0.3 * math.log(n) + 0.06 * math.log(n) ** 2
    refs = [Finished(n, d, 1.0, math.exp(drop(n))) for n, d in
            ((8e3, 2), (1.6e4, 2), (4e3, 1), (8e3, 1)) for _ in range(4)]
    f = forecast_final(1.0, 5e3, 2, refs)
    assert f is not None and f.basis == BY_DEPTH and f.n_sizes == 2
    assert abs(math.log(f.predicted) - drop(5e3)) > 0.03  # the seeds agree exactly: the band is all borrowed
    assert f.lo <= math.exp(drop(5e3)) <= f.hi


def test_two_sizes_interpolated_or_without_a_donor_keep_their_own_band() -> None:
    # Between its two sizes, a law's chord is what the band describes; with no depth of three sizes and no
    # pooled law to learn from (one depth), nothing is borrowed and the band stays the seeds' scatter.
    bending = [Finished(n, 1, 1.0, math.exp(_bending_drop(n))) for n in (1e3, 2e3, 4e3, 8e3, 1.6e4) for _ in range(4)]
    two = _refs([1e3, 1e4], depth=2, noise=0.01)
    inside, alone = forecast_final(1.0, 3e3, 2, two + bending), forecast_final(1.0, 3e2, 2, two)
    assert inside is not None and alone is not None and inside.n_sizes == alone.n_sizes == 2
    assert math.log(inside.hi / inside.lo) / 2 < 0.03 and math.log(alone.hi / alone.lo) / 2 < 0.03


def test_a_log_window_is_the_mean_of_its_steps_and_only_a_complete_one_counts() -> None:
    losses = {s: float(s) for s in range(1, 24)}  # steps 1-23
    assert window_mean(losses, 10, 5) == pytest.approx(8.0)  # steps 6-10
    assert window_mean(losses, 25, 5) is None  # steps 24 and 25 not logged yet
    assert window_mean({**losses, 7: math.nan}, 10, 5) is None
    assert window_means(losses, 5, before=20) == pytest.approx({5: 3.0, 10: 8.0, 15: 13.0})
    assert latest_window(losses, 5, before=100) == 20
    assert latest_window(losses, 5, before=20) == 15  # the window ending at the first evaluation is not before it
    assert latest_window({s: 1.0 for s in range(1, 5)}, 5, before=100) is None


def test_a_new_depth_predicted_by_the_pooled_law_gets_a_band_from_depths_left_out() -> None:
    # What each run still drops bends in log depth, which the pooled law (linear in depth^-1/2) cannot
    # follow; depth 1 has no finished run, so its prediction extrapolates along depth.
    def drop(n: float, depth: int) -> float:
        return A + B * math.log(n) + 0.3 * math.log(depth) - 0.1 * math.log(depth) ** 2
    sizes = [(n, d) for d in (2, 3, 4, 6) for n in (1e3, 1e4)] + [(1e3, 5)]  # depth 5: one size finished
    refs = [Finished(n, d, 1.0, math.exp(drop(n, d))) for n, d in sizes for _ in range(4)]
    new, known = forecast_final(1.0, 1e4, 1, refs), forecast_final(1.0, 1e4, 5, refs)
    assert new is not None and known is not None and new.basis == known.basis == POOLED
    half = math.log(new.hi / new.lo) / 2
    # Each edge depth predicted from the others, its error scaled by how much farther depth 1 lies (log 2
    # from depth 2) than the edge lay from the rest: the band is at least the smaller of the two.
    scaled = []
    for out, nearest in ((2, 3), (6, 5)):
        keep = [(n, d) for n, d in sizes if d != out]
        x = np.array([[1.0, math.log(n), depth_term(d)] for n, d in keep])
        coef, *_ = np.linalg.lstsq(x, np.array([drop(n, d) for n, d in keep]), rcond=None)
        error = abs(np.array([1.0, math.log(1e4), depth_term(out)]) @ coef - drop(1e4, out))
        scaled.append(error * math.log(2) / abs(math.log(out / nearest)))
    assert half >= min(scaled) > 0.03
    assert math.log(known.hi / known.lo) / 2 < half / 2  # a finished depth keeps the band of sizes alone
