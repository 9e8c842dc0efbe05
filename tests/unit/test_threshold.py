import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.model.threshold import (
    CalibrationStats,
    calibrate,
    conformal_is_reliable,
    conformal_threshold,
    f1_optimal_threshold,
    false_alarm_upper_bound,
    fitted_tail_threshold,
    is_defect,
    realised_false_alarm,
)


@given(scores=st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=300),
       alpha=st.floats(0.001, 0.5))
def test_conformal_threshold_is_the_right_order_statistic(scores, alpha):
    t = conformal_threshold(np.array(scores), alpha)
    n = len(scores)
    k = min(math.ceil((n + 1) * (1 - alpha)), n)
    assert t == sorted(scores)[k - 1]
    # At most floor(alpha (n+1)) of the calibration scores lie strictly above it.
    assert sum(s > t for s in scores) <= max(n - k, 0)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_conformal_false_alarm_rate_holds_on_fresh_good_scores(seed, alpha):
    rng = np.random.default_rng(seed)
    n = 2000
    t = conformal_threshold(rng.gamma(2.0, 1.0, n), alpha)
    fresh = rng.gamma(2.0, 1.0, 200_000)
    realised = float((fresh > t).mean())
    # Marginal guarantee <= alpha; for one calibration draw the rate is within a few standard errors either way
    # (alpha / 2, only 2.2 standard errors below at alpha 0.01, failed on honest draws such as seed 11989).
    band = 4 * math.sqrt(alpha * (1 - alpha) / n)
    assert alpha - band <= realised <= alpha + band


def test_f1_optimal_threshold_separates_separable_data():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1], bool)
    t = f1_optimal_threshold(scores, labels)
    assert 0.3 <= t < 0.8
    with pytest.raises(ValueError):
        f1_optimal_threshold(scores, np.zeros(5, bool))


def test_calibrate_records_its_statistics():
    good = np.linspace(0, 1, 101)
    stats = calibrate(good, np.linspace(0, 2, 10_000), 0.05)
    assert stats.method == "conformal" and stats.n_good == 101 and stats.guaranteed
    assert stats.threshold == pytest.approx(0.96)  # the ceil(102 * 0.95) = 97th smallest
    assert stats.pixel_threshold == pytest.approx(2.0, abs=1e-3)
    assert stats.tail_power is None
    forced = calibrate(good[:10], good[:10], 0.01, method="conformal")
    assert not forced.guaranteed and forced.threshold == good[9]  # no sample is high enough: the largest


def test_realised_false_alarm_uses_the_alert_comparison():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    assert realised_false_alarm(scores, 0.2) == 0.5  # a score equal to the threshold does not alert
    assert realised_false_alarm(scores, 0.0) == 1.0 and realised_false_alarm(scores, 0.4) == 0.0
    assert realised_false_alarm(scores, 0.25) == np.mean([is_defect(float(x), 0.25) for x in scores])
    with pytest.raises(ValueError):
        realised_false_alarm(np.array([]), 0.1)


@pytest.mark.parametrize(("n", "a", "reliable"), [(299, 0.01, True), (298, 0.01, False), (59, 0.05, True),
                                                   (58, 0.05, False), (2000, 0.01, True)])
def test_conformal_is_reliable_once_two_scores_lie_above_its_rank(n, a, reliable):
    assert conformal_is_reliable(n, a) is reliable


def test_calibrate_picks_the_method_by_sample_size():
    rng = np.random.default_rng(0)
    for n in (8, 20, 40):
        small = calibrate(rng.lognormal(-4.0, 0.5, n), np.ones(10), 0.01)
        assert small.method == "fitted_tail" and not small.guaranteed and small.tail_power is not None
    large = calibrate(rng.lognormal(-4.0, 0.5, 2000), np.ones(10), 0.01)
    assert large.method == "conformal" and large.guaranteed and large.tail_power is None
    good, defects = rng.lognormal(-4.0, 0.5, 8), rng.lognormal(-2.0, 0.5, 8)
    assert calibrate(good, np.ones(10), 0.01, defect_scores=defects).method == "f1"
    # Naming a method forces it, with or without defects at hand.
    assert calibrate(good, np.ones(10), 0.01, defect_scores=defects, method="fitted_tail").method == "fitted_tail"
    assert calibrate(rng.lognormal(-4.0, 0.5, 2000), np.ones(10), 0.01, method="fitted_tail").method == "fitted_tail"
    with pytest.raises(ValueError, match="defect scores"):
        calibrate(good, np.ones(10), 0.01, method="f1")
    with pytest.raises(ValueError, match="unknown threshold method"):
        calibrate(good, np.ones(10), 0.01, method="lognormal")
    with pytest.raises(ValueError):
        calibrate(good, np.ones(10), 1.0)


def test_one_odd_good_photo_does_not_set_the_fitted_tail():
    rng = np.random.default_rng(0)
    good = np.r_[rng.lognormal(math.log(0.01), 0.3, 19), 0.05]  # one photo at 5x the typical score
    assert calibrate(good, good, 0.01, method="conformal").threshold == 0.05
    stats = calibrate(good, good, 0.01)
    assert stats.method == "fitted_tail" and np.median(good) < stats.threshold < 0.05  # below the odd photo


@settings(deadline=None, max_examples=60)
@given(scores=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
       alpha=st.floats(0.001, 0.5))
def test_fitted_tail_is_finite_and_at_least_the_median(scores, alpha):
    t = fitted_tail_threshold(np.array(scores), alpha)
    assert math.isfinite(t) and t >= np.median(scores)


def test_fitted_tail_degenerate_inputs():
    assert fitted_tail_threshold(np.array([0.3]), 0.01) == 0.3  # one score: no spread to fit
    assert fitted_tail_threshold(np.full(8, 0.02), 0.01) == 0.02  # all equal
    assert fitted_tail_threshold(np.zeros(8), 0.01) == 0.0
    with_zeros = fitted_tail_threshold(np.array([0.0, 0.0, 0.011, 0.009, 0.01, 0.012]), 0.01)
    assert 0.012 < with_zeros < 1.0  # a zero is shifted into the log's reach, not sent to -inf
    assert math.isfinite(fitted_tail_threshold(np.array([1e-300, 1e300]), 0.01))  # no overflow to inf
    x = np.random.default_rng(0).lognormal(0.0, 1.0, 8)
    assert fitted_tail_threshold(x * 1e-9, 0.01) == pytest.approx(1e-9 * fitted_tail_threshold(x, 0.01))
    with pytest.raises(ValueError):
        fitted_tail_threshold(np.array([]), 0.01)


def test_calibration_stats_round_trip_and_old_files():
    stats = calibrate(np.random.default_rng(0).lognormal(-4.0, 0.5, 8), np.ones(10), 0.01)
    assert CalibrationStats.from_dict(stats.to_dict()) == stats
    old = stats.to_dict()
    del old["tail_power"]  # written before the fitted tail existed
    old["method"] = "conformal"
    assert CalibrationStats.from_dict(old).tail_power is None
    with pytest.raises(ValueError, match="unknown fields"):
        CalibrationStats.from_dict({**stats.to_dict(), "surprise": 1})


# --- few good images: the fitted tail's realised false-alarm rate ------------------------------------------

A = 0.01
REPS = 200  # calibration sets per case: one set of 8 is noisy; the rate averaged over sets is what a is
N_FRESH = 200_000
GOOD = {  # score distributions of good images, at the tiny scale of real anomaly scores
    "lognormal": lambda rng, size: rng.lognormal(math.log(0.01), 0.5, size),
    "gamma": lambda rng, size: rng.gamma(2.0, 0.005, size),
    "half-normal": lambda rng, size: np.abs(rng.normal(0.0, 0.01, size)),
}


@functools.cache
def fresh_good(dist: str) -> np.ndarray:
    """(N_FRESH,) sorted good scores that no calibration set has seen."""
    return np.sort(GOOD[dist](np.random.default_rng(12345), N_FRESH))


def realised_rates(dist: str, n: int, seed: int = 0) -> np.ndarray:
    """(REPS,) false-alarm rate on N_FRESH fresh good scores of the fitted tail from each of REPS sets of n."""
    fresh = fresh_good(dist)
    thresholds = np.array([fitted_tail_threshold(row, A) for row in GOOD[dist](np.random.default_rng(seed), (REPS, n))])
    rates = (N_FRESH - np.searchsorted(fresh, thresholds, side="right")) / N_FRESH  # share of fresh > t, at once
    assert rates[0] == realised_false_alarm(fresh, thresholds[0])
    return rates


# The fitted tail is a 95 % tolerance bound: measured at seed 0, the share of calibration sets whose realised rate
# is at most a: lognormal 0.88-0.90 for n = 8-120 (the Box-Cox power chosen by the data costs the rest of the
# 95 %: a pure normal fit reaches 0.94-0.95), gamma 0.92-0.95, half-normal 0.95-0.99; the mean rate is then
# 0.4-0.6 a (lognormal), lower for the others, whose logs have a long left tail.
@pytest.mark.parametrize(("dist", "share"), [("lognormal", 0.85), ("gamma", 0.88), ("half-normal", 0.9)])
@pytest.mark.parametrize("n", [8, 20, 40])
def test_fitted_tail_keeps_the_target_in_most_calibration_sets(dist, share, n):
    rates = realised_rates(dist, n)
    assert (rates <= A).mean() >= share
    assert rates.mean() <= A  # never the 2.6-5x of the prediction bound on new frames


def test_conformal_realised_rate_stays_below_the_stated_bound_in_95_percent_of_sets():
    # Scores of any continuous distribution: the bound is distribution-free. 1,000 sets of 466 good scores (a
    # conformal quantile at 1 %, 3 scores above it); the binomial spread of the share over 1,000 sets is 0.7 %.
    rng = np.random.default_rng(7)
    fresh = np.sort(rng.gamma(2.0, 0.005, N_FRESH))
    within = []
    for _ in range(1000):
        stats = calibrate(rng.gamma(2.0, 0.005, 466), np.ones(10), A)
        assert stats.method == "conformal" and stats.false_alarm_bound is not None
        realised = (N_FRESH - np.searchsorted(fresh, stats.threshold, side="right")) / N_FRESH
        within.append(realised <= stats.false_alarm_bound)
    assert 0.93 <= np.mean(within) <= 0.99


def test_the_stated_bound_holds_for_the_fitted_tail_too():
    fresh = fresh_good("lognormal")
    rng = np.random.default_rng(3)
    stats = [calibrate(rng.lognormal(math.log(0.01), 0.5, 120), np.ones(10), A) for _ in range(200)]
    assert all(s.method == "fitted_tail" for s in stats)
    realised = np.array([realised_false_alarm(fresh, s.threshold) for s in stats])
    assert np.mean(realised <= np.array([s.false_alarm_bound for s in stats])) >= 0.95


@pytest.mark.parametrize(("n", "exceeding", "bound"), [(120, 0, 0.0247), (466, 3, 0.0166), (1000, 10, 0.0169)])
def test_false_alarm_upper_bound_is_clopper_pearson(n, exceeding, bound):
    assert false_alarm_upper_bound(n, exceeding) == pytest.approx(bound, abs=1e-4)
    assert false_alarm_upper_bound(n, n) == 1.0 and false_alarm_upper_bound(0, 0) == 1.0
    # 0 of n above: the bound solves (1 - u)^n = 0.05
    assert false_alarm_upper_bound(n, 0) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-6)
