"""The rolling score quantiles that the drift alert compares with the calibration."""

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from inspector.stream.score_window import RollingScoreQuantiles


def _gauge() -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    return registry, Gauge("score_rolling", "", ("camera", "percentile"), registry=registry)


def test_quantiles_cover_only_the_window_and_follow_a_shift() -> None:
    registry, gauge = _gauge()
    rolling = RollingScoreQuantiles(gauge, window_s=10.0, every_s=0.0)
    rng = np.random.default_rng(0)
    for t, score in enumerate(rng.normal(2.0, 0.1, 1000)):
        rolling.add("cam-1", float(score), t / 100)  # 100 scores/s for 10 s
    rolling.export(10.0)
    p90 = registry.get_sample_value("score_rolling", {"camera": "cam-1", "percentile": "p90"})
    assert p90 is not None and 2.08 < p90 < 2.18  # 2 + 1.28 sigma
    for t in range(1000, 2000):  # the light changes: every score 1.0 higher
        rolling.add("cam-1", float(rng.normal(3.0, 0.1)), t / 100)
    rolling.export(20.0)  # the window holds only the new scores
    p50 = registry.get_sample_value("score_rolling", {"camera": "cam-1", "percentile": "p50"})
    assert p50 is not None and 2.95 < p50 < 3.05


def test_a_camera_without_recent_scores_leaves_the_gauge() -> None:
    registry, gauge = _gauge()
    rolling = RollingScoreQuantiles(gauge, window_s=5.0, every_s=0.0)
    rolling.add("cam-gone", 1.0, 0.0)
    rolling.add("cam-on", 1.0, 0.0)
    rolling.export(1.0)
    assert registry.get_sample_value("score_rolling", {"camera": "cam-gone", "percentile": "p99"}) == 1.0
    rolling.add("cam-on", 2.0, 9.0)
    rolling.export(10.0)
    assert registry.get_sample_value("score_rolling", {"camera": "cam-gone", "percentile": "p99"}) is None
    assert registry.get_sample_value("score_rolling", {"camera": "cam-on", "percentile": "p99"}) == 2.0
    rolling.add("cam-late", 1.0, 0.0)  # added, then out of the window before any export: nothing to remove
    rolling.export(20.0)


def test_memory_is_bounded_per_camera_and_exports_are_rate_limited() -> None:
    registry, gauge = _gauge()
    rolling = RollingScoreQuantiles(gauge, window_s=1e9, capacity=100, every_s=5.0)
    for i in range(1000):
        rolling.add("cam-1", float(i), 0.0)
    rolling.export(0.0)  # only the last 100 scores are kept: 900..999
    assert registry.get_sample_value("score_rolling", {"camera": "cam-1", "percentile": "p50"}) == 949.5
    rolling.add("cam-1", 1e6, 1.0)
    rolling.export(1.0)  # within every_s of the last export: not recomputed
    assert registry.get_sample_value("score_rolling", {"camera": "cam-1", "percentile": "p50"}) == 949.5
