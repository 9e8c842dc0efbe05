"""Each camera's recent anomaly scores, as the rolling quantiles that the drift alerts compare with the scores
of good images at calibration (see the ScoreDrift rule)."""

from __future__ import annotations

import numpy as np
from prometheus_client import Gauge

QUANTILES = (0.5, 0.9, 0.99)
PERCENTILE_LABELS = ("p50", "p90", "p99")  # the gauge's `percentile` label of each (promtool reserves `quantile`
# for summaries)


class _ScoreRing:
    """The last `capacity` scores of one camera with their times; older ones are overwritten."""

    def __init__(self, capacity: int) -> None:
        self.times = np.full(capacity, -np.inf)  # (capacity,) time.monotonic() of each score
        self.scores = np.zeros(capacity)  # (capacity,)
        self.written = 0
        self.exported = False  # its quantiles are in the gauge

    def add(self, score: float, now: float) -> None:
        i = self.written % self.times.size
        self.times[i], self.scores[i] = now, score
        self.written += 1

    def since(self, start: float) -> np.ndarray:
        return self.scores[self.times >= start]


class RollingScoreQuantiles:
    """Per camera label, the quantiles of the scores of the last `window_s` seconds (at most `capacity` scores
    per camera bound the memory), exported to `gauge` (labels camera, percentile) at most once per `every_s`; a
    camera without scores in the window leaves the gauge, so that a stopped camera cannot look drifted."""

    def __init__(self, gauge: Gauge, window_s: float, *, capacity: int = 20_000, every_s: float = 1.0) -> None:
        self.gauge = gauge
        self.window_s = window_s
        self.capacity = capacity
        self.every_s = every_s
        self._rings: dict[str, _ScoreRing] = {}
        self._next_export = 0.0

    def add(self, camera: str, score: float, now: float) -> None:
        ring = self._rings.get(camera)
        if ring is None:
            ring = self._rings[camera] = _ScoreRing(self.capacity)
        ring.add(score, now)

    def export(self, now: float) -> None:
        """Set the gauge from each camera's window (a few ms for hundreds of cameras: call it off the hot path's
        per-frame work, at most once per `every_s`)."""
        if now < self._next_export:
            return
        self._next_export = now + self.every_s
        for camera, ring in list(self._rings.items()):
            recent = ring.since(now - self.window_s)
            if recent.size == 0:
                if ring.exported:
                    for label in PERCENTILE_LABELS:
                        self.gauge.remove(camera, label)
                del self._rings[camera]
                continue
            for label, value in zip(PERCENTILE_LABELS, np.quantile(recent, QUANTILES)):
                self.gauge.labels(camera, label).set(float(value))
            ring.exported = True
