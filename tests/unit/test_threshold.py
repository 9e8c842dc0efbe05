import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.threshold import calibrate, conformal_threshold, f1_optimal_threshold


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
    # Marginal guarantee <= alpha; for one calibration draw the rate is within a few standard errors.
    assert realised <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / n)
    assert realised >= alpha / 2


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
    small = calibrate(good[:10], good[:10], 0.01)
    assert not small.guaranteed and small.threshold == good[9]
