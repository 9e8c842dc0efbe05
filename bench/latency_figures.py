"""Latency figures of the pipeline benchmarks: quantiles of measured latencies, and of a worker's Prometheus
histograms read back from its /metrics text."""

from __future__ import annotations

import numpy as np


def quantiles(ms: np.ndarray) -> dict:
    """p50 / p95 / p99 of latencies in ms, rounded; {} when there are none."""
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)} if len(ms) else {}


def histogram_sum(metrics: str, name: str, labels: str = "") -> float:
    """The _sum of a Prometheus histogram, over the label sets that contain `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(f"{name}_sum{{") and labels in line)


def histogram_quantiles(metrics: str, name: str, labels: str = "", scale: float = 1000.0) -> dict[str, float]:
    """p50/p95/p99 from a Prometheus histogram's buckets (linear within a bucket), summed over label sets;
    `scale` 1000 turns seconds into milliseconds."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{") and labels in line:
            le = line.split('le="')[1].split('"')[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return {}
    les = sorted(buckets)
    total = buckets[les[-1]]
    out = {}
    for q in (0.5, 0.95, 0.99):
        rank, prev_le, prev_c = q * total, 0.0, 0.0
        for le in les:
            if buckets[le] >= rank:
                frac = (rank - prev_c) / max(buckets[le] - prev_c, 1e-9)
                upper = le if le != float("inf") else prev_le
                out[f"p{int(q * 100)}"] = round(scale * (prev_le + frac * (upper - prev_le)), 2)
                break
            prev_le, prev_c = le, buckets[le]
    return out
