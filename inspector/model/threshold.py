"""Thresholds from score samples: pure functions, no I/O.

The default threshold comes from good images only, by one of two methods, picked by how many there are:

- "conformal": a split-conformal quantile of held-out good scores, so that a new good frame is flagged
  with probability at most the target false-alarm rate (for exchangeable scores), whatever the score
  distribution looks like. It needs enough scores for the target (see `conformal_is_reliable`).
- "fitted_tail": with fewer, a normal fitted to the log (or, when the data clearly prefer it, a Box-Cox
  power) of the good scores, extrapolated to the target with a one-sided tolerance bound: with 95 %
  confidence (if the fit holds) at most the target share of good frames lies above it. A prediction bound
  (the target on average over calibration sets) was optimistic on 56-215 held-out scores: 2.6-5x the
  target on new frames. With 8 good images and a 1 % target the conformal rank is the largest score, so
  one odd photo would set it.

Whatever the method, `false_alarm_upper_bound` states what the good scores alone support: a one-sided
Clopper-Pearson bound on the false-alarm rate from how many of them lie above the threshold, exact for the
conformal quantile and free of any assumption on the scores' distribution.

With defect scores at hand, "f1" picks the threshold that best separates them from the good ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import Any

import numpy as np

METHODS = ("auto", "conformal", "fitted_tail", "f1")
_POWERS = np.linspace(0.0, 1.0, 11)  # (P,) Box-Cox powers a tail fit may use: 0 = log, 1 = scores as they are
_LOG_FLOAT_MAX = math.log(np.finfo(np.float64).max)
BOUND_CONFIDENCE = 0.95  # of the false-alarm bounds stated in model files and reports, and of the fitted tail


def is_defect(score: float, threshold: float) -> bool:
    """The one comparison that turns a score into an alert."""
    return score > threshold


def defects_flagged(scores: np.ndarray, threshold: float) -> np.ndarray:
    """`is_defect` over an array of scores -> a boolean array of the same shape."""
    return np.asarray(scores) > threshold


def realised_false_alarm(good_scores: np.ndarray, threshold: float) -> float:
    """Share of good scores that `is_defect` flags at this threshold."""
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one good score to measure a false-alarm rate")
    return float(np.count_nonzero(defects_flagged(s, threshold)) / s.size)


def _check_target(target_false_alarm: float) -> None:
    if not 0 < target_false_alarm < 1:
        raise ValueError(f"target false-alarm rate must be in (0, 1), got {target_false_alarm}")


def _conformal_rank(n: int, target_false_alarm: float) -> int:
    """1-based rank ceil((n+1)(1-a)) of the conformal quantile; above n when no sample is high enough."""
    return math.ceil((n + 1) * (1 - target_false_alarm))


def conformal_is_reliable(n: int, target_false_alarm: float) -> bool:
    """True when at least two of n held-out scores lie above the conformal rank (n >= 3/a - 1)."""
    # The realised rate of an order-statistic threshold is Beta(j, n+1-j), j = n+1-rank: at j >= 3 its
    # relative spread is about 1/sqrt(j) < 0.6; at j = 1 it is the sample maximum, set by one photo.
    return n - _conformal_rank(n, target_false_alarm) >= 2


def conformal_threshold(good_scores: np.ndarray, target_false_alarm: float) -> float:
    """The ceil((n+1)(1-a))-th smallest good score: P(new good score > t) <= a for exchangeable scores.

    With too few samples for the target (n < 1/a - 1) no sample is high enough; we return the largest
    score, and `CalibrationStats.guaranteed` records that the guarantee does not hold.
    """
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("need at least one good score to calibrate")
    _check_target(target_false_alarm)
    k = _conformal_rank(s.size, target_false_alarm)
    return float(s[min(k, s.size) - 1])


@functools.lru_cache(maxsize=64)
def _t_upper_quantile(tail: float, dof: int) -> float:
    """t with P(T > t) = tail for Student's t with integer dof >= 1 (exact CDF, Abramowitz-Stegun 26.7.3-4)."""
    if tail > 0.5:
        return -_t_upper_quantile(1 - tail, dof)
    # P(|T| < sqrt(dof) tan(theta)) is a finite series in cos(theta): bisect theta for 1 - 2 tail.
    if dof % 2:
        terms = (dof - 1) // 2  # none for dof = 1: the Cauchy CDF
        k = np.arange(1, terms)
        coefs = np.cumprod(np.r_[1.0, 2 * k / (2 * k + 1)])[:terms]  # 1, 2/3, 2*4/(3*5), ...

        def inside(theta: float) -> float:
            c = math.cos(theta)
            series = c * np.polynomial.polynomial.polyval(c * c, coefs) if coefs.size else 0.0
            return 2 / math.pi * (theta + math.sin(theta) * float(series))
    else:
        k = np.arange(1, dof // 2)
        coefs = np.cumprod(np.r_[1.0, (2 * k - 1) / (2 * k)])  # 1, 1/2, 1*3/(2*4), ...

        def inside(theta: float) -> float:
            c = math.cos(theta)
            return math.sin(theta) * float(np.polynomial.polynomial.polyval(c * c, coefs))

    lo, hi = 0.0, math.pi / 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < 1 - 2 * tail else (lo, mid)
    return math.sqrt(dof) * math.tan((lo + hi) / 2)


def false_alarm_upper_bound(n: int, exceeding: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """The one-sided Clopper-Pearson upper bound on P(good score > threshold) when `exceeding` of `n` good scores
    lie above the threshold. For the conformal quantile (the k-th smallest score, n - k above it) this is the
    `confidence` quantile of its realised rate, Beta(n + 1 - k, k): a new good frame alerts with probability at
    most this, with `confidence`, whatever the scores' distribution."""
    if n <= 0:
        return 1.0
    if not 0 <= exceeding <= n:
        raise ValueError(f"exceeding must be in [0, {n}], got {exceeding}")
    if exceeding == n:
        return 1.0
    counts = np.arange(exceeding + 1)
    log_choose = math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in counts])

    def cdf(rate: float) -> float:  # P(Binomial(n, rate) <= exceeding)
        log_terms = log_choose + counts * math.log(rate) + (n - counts) * math.log1p(-rate)
        top = float(log_terms.max())
        return math.exp(top) * float(np.exp(log_terms - top).sum())

    lo, hi = exceeding / n, 1.0  # cdf falls from >= 1/2 at the observed rate to 0 at 1
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - confidence else (lo, mid)
    return hi


def tolerance_factor(n: int, target_false_alarm: float, confidence: float = BOUND_CONFIDENCE) -> float:
    """k such that mean + k * std of n normal draws lies above a 1 - target share of the population with
    `confidence` (one-sided normal tolerance bound, Natrella's approximation; n >= 3)."""
    z_p = NormalDist().inv_cdf(1 - target_false_alarm)
    z_g = NormalDist().inv_cdf(confidence)
    a = 1 - z_g**2 / (2 * (n - 1))
    b = z_p**2 - z_g**2 / n
    return (z_p + math.sqrt(z_p**2 - a * b)) / a


def _tail_fit(good_scores: np.ndarray, target_false_alarm: float) -> tuple[float, float]:
    """(threshold, Box-Cox power) of the fitted tail; see `fitted_tail_threshold`."""
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one good score to calibrate")
    _check_target(target_false_alarm)
    median = float(np.median(s))
    if s.min() == s.max():
        return median, 0.0  # no spread to fit: one score, or all equal
    # The log needs positive values: shift so the lowest score lies as far above zero as the next one above it.
    shift = 0.0 if s.min() > 0 else float(s[s > s.min()].min() - 2 * s.min())
    log_x = np.log(s + shift)
    if not np.ptp(log_x) > 0:
        return median, 0.0  # scores so close that their logs are equal
    log_scale = float(log_x.mean())
    log_x -= log_scale  # scores over their geometric mean: the fit is scale-free and tiny scores keep precision
    n = s.size
    powers = _POWERS[:, None]  # (P, 1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # scores spanning 1e300: powers overflow
        transformed = np.expm1(powers * log_x) / np.where(powers > 0, powers, 1.0)  # Box-Cox, (P, n)
        transformed[_POWERS == 0] = log_x
        # Profile log-likelihood of each power (the Jacobian term is zero after the geometric-mean scaling);
        # a power other than the log must beat it by AIC's one unit per extra parameter.
        loglik = -0.5 * n * np.log(transformed.var(axis=1))  # (P,)
    loglik[~np.isfinite(loglik)] = -np.inf
    best = int(np.argmax(loglik))
    best = best if loglik[best] - loglik[0] > 1 else 0
    power, y = float(_POWERS[best]), transformed[best]
    # A tolerance bound: with BOUND_CONFIDENCE at most the target lies above it. Below 6 scores Natrella's
    # approximation is poor, and the prediction bound (the target on average) already extrapolates far.
    q = _t_upper_quantile(target_false_alarm, n - 1) * math.sqrt(1 + 1 / n)
    if n >= 6:
        q = max(q, tolerance_factor(n, target_false_alarm))
    y_t = float(y.mean() + q * y.std(ddof=1))
    if power == 0:
        log_t = y_t
    else:
        log_t = math.log1p(power * y_t) / power if power * y_t > -1 else -math.inf
    # Capped to stay finite: with n = 2 the bound is 39 standard deviations up (t with 1 dof is 31.8 at 1 %).
    threshold = math.exp(min(log_t + log_scale, _LOG_FLOAT_MAX)) - shift
    return max(threshold, median), power  # below the median most good frames would alert


def fitted_tail_threshold(good_scores: np.ndarray, target_false_alarm: float) -> float:
    """Threshold at rate a of a normal fitted to the log (or a Box-Cox power) of good scores.

    Uses the one-sided tolerance bound mean + k * std (`tolerance_factor`), so that for log-normal scores at
    most a of good frames are flagged with 95 % confidence over calibration sets (below 6 scores the Student-t
    prediction bound mean + t_{1-a, n-1} * std * sqrt(1 + 1/n)). Never below the median good score; one score,
    or all equal, gives that score.
    """
    return _tail_fit(good_scores, target_false_alarm)[0]


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

    method: str  # "conformal", "fitted_tail" or "f1"
    target_false_alarm: float
    threshold: float
    pixel_threshold: float  # difference-map level that outlines a defect region
    n_good: int
    guaranteed: bool  # the threshold is conformal and n_good was large enough for its guarantee at this target
    good_mean: float
    good_std: float
    good_quantiles: dict[str, float]  # "p50", "p90", "p99", "max"
    tail_power: float | None = None  # "fitted_tail" only: Box-Cox power of the fit, 0 = log-normal
    # `false_alarm_upper_bound` of the calibration scores at the threshold (at `BOUND_CONFIDENCE`): what n good
    # scores alone support; None in files calibrated before it was recorded.
    false_alarm_bound: float | None = None
    # Per camera, a threshold set on the line's own good frames (`inspector calibrate --from-line`), in force
    # instead of `threshold` for that camera.
    camera_thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalibrationStats":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"calibration has unknown fields {unknown}: the model file is newer than this code; "
                             "upgrade the inspector or recalibrate")
        return cls(**data)


def calibrate(
    good_scores: np.ndarray,
    good_pixel_values: np.ndarray,
    target_false_alarm: float,
    *,
    defect_scores: np.ndarray | None = None,
    method: str = "auto",
) -> CalibrationStats:
    """Threshold at the target false-alarm rate from good scores (or F1-optimal when defects are given).

    method "auto" picks "f1" when defect scores are given, else "conformal" when `conformal_is_reliable`,
    else "fitted_tail"; naming one forces it.
    """
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one good score to calibrate")
    _check_target(target_false_alarm)
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}: use one of {', '.join(METHODS)}")
    defects = np.asarray(defect_scores if defect_scores is not None else [], dtype=np.float64).ravel()
    if method == "auto":
        if defects.size:
            method = "f1"
        else:
            method = "conformal" if conformal_is_reliable(s.size, target_false_alarm) else "fitted_tail"
    tail_power = None
    if method == "f1":
        if not defects.size:
            raise ValueError("method 'f1' needs defect scores: pass defect_scores, or use 'auto'")
        labels = np.r_[np.zeros(s.size, bool), np.ones(defects.size, bool)]
        threshold = f1_optimal_threshold(np.r_[s, defects], labels)
    elif method == "conformal":
        threshold = conformal_threshold(s, target_false_alarm)
    else:
        threshold, tail_power = _tail_fit(s, target_false_alarm)
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
        guaranteed=method == "conformal" and _conformal_rank(s.size, target_false_alarm) <= s.size,
        good_mean=float(s.mean()),
        good_std=float(s.std()),
        good_quantiles={**{name: float(q) for name, q in zip(("p50", "p90", "p99"), np.quantile(s, [0.5, 0.9, 0.99]))},
                        "max": float(s.max())},
        tail_power=tail_power,
        false_alarm_bound=false_alarm_upper_bound(s.size, int(np.count_nonzero(defects_flagged(s, threshold)))),
    )


def pixel_sample(maps: np.ndarray, size: int = 2_000_000) -> np.ndarray:
    """Good images' map values, flattened; a fixed-size random sample is enough for the 0.9999 pixel quantile."""
    flat = np.asarray(maps).reshape(-1)
    return flat if flat.size <= size else np.random.default_rng(0).choice(flat, size, replace=False)
