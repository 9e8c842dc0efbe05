"""Thresholds from score samples: pure functions, no I/O.

The default threshold comes from good images only: a split-conformal quantile of held-out good scores, so
that a new good frame is flagged with probability at most the target false-alarm rate (for exchangeable
scores), whatever the score distribution looks like.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def is_defect(score: float, threshold: float) -> bool:
    """The one comparison that turns a score into an alert."""
    return score > threshold


def conformal_threshold(good_scores: np.ndarray, target_false_alarm: float) -> float:
    """The ceil((n+1)(1-a))-th smallest good score: P(new good score > t) <= a for exchangeable scores.

    With too few samples for the target (n < 1/a - 1) no sample is high enough; we return the largest
    score, and `CalibrationStats.guaranteed` records that the guarantee does not hold.
    """
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("need at least one good score to calibrate")
    if not 0 < target_false_alarm < 1:
        raise ValueError(f"target false-alarm rate must be in (0, 1), got {target_false_alarm}")
    k = math.ceil((s.size + 1) * (1 - target_false_alarm))  # 1-based rank
    return float(s[min(k, s.size) - 1])


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (one of the scores) that maximises F1 of `score > t` on labelled data."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if not y.any() or y.all():
        raise ValueError("F1-optimal threshold needs both good and defective samples")
    candidates = np.r_[np.unique(s), -np.inf]  # alert when score > t; -inf alerts on everything
    best_t, best_f1 = float(candidates[0]), -1.0
    for t in candidates:
        alert = s > t
        tp = np.sum(alert & y)
        f1 = 2 * tp / (2 * tp + np.sum(alert & ~y) + np.sum(~alert & y))
        if f1 > best_f1:
            best_t, best_f1 = float(t), float(f1)
    return best_t


@dataclass(frozen=True)
class CalibrationStats:
    """What the threshold was set from; stored in the model file and shown in reports and metrics."""

    method: str  # "conformal" or "f1"
    target_false_alarm: float
    threshold: float
    pixel_threshold: float  # difference-map level that outlines a defect region
    n_good: int
    guaranteed: bool  # n_good was large enough for the conformal guarantee at this target
    good_mean: float
    good_std: float
    good_quantiles: dict[str, float]  # "p50", "p90", "p99", "max"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "CalibrationStats":
        return cls(**data)  # type: ignore[arg-type]


def calibrate(
    good_scores: np.ndarray,
    good_pixel_values: np.ndarray,
    target_false_alarm: float,
    *,
    defect_scores: np.ndarray | None = None,
) -> CalibrationStats:
    """Threshold at the target false-alarm rate from good scores (or F1-optimal when defects are given)."""
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if defect_scores is not None and len(defect_scores):
        both = np.r_[s, np.asarray(defect_scores, dtype=np.float64).ravel()]
        labels = np.r_[np.zeros(s.size, bool), np.ones(len(defect_scores), bool)]
        method, threshold = "f1", f1_optimal_threshold(both, labels)
    else:
        method, threshold = "conformal", conformal_threshold(s, target_false_alarm)
    # A pixel is "defect" when it is above nearly every pixel of good images: the same false-alarm
    # target, applied per pixel, would outline noise; 1e-4 of good pixels keeps boxes tight.
    pixels = np.asarray(good_pixel_values, dtype=np.float64).ravel()
    pixel_threshold = float(np.quantile(pixels, 0.9999)) if pixels.size else threshold
    return CalibrationStats(
        method=method,
        target_false_alarm=float(target_false_alarm),
        threshold=float(threshold),
        pixel_threshold=pixel_threshold,
        n_good=int(s.size),
        guaranteed=bool(s.size >= math.ceil(1 / target_false_alarm) - 1),
        good_mean=float(s.mean()),
        good_std=float(s.std()),
        good_quantiles={
            "p50": float(np.quantile(s, 0.5)),
            "p90": float(np.quantile(s, 0.9)),
            "p99": float(np.quantile(s, 0.99)),
            "max": float(s.max()),
        },
    )
