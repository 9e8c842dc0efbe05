"""`inspector serve --processes N` without a broker: how many workers, their settings, and the supervisor's one
/metrics made of theirs (the processes themselves: tests/integration/test_worker_processes.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inspector.stream.metrics import WorkerScrapes, build_supervisor_metrics


def _worker_scrape(frames: int, latency_s: float) -> str:
    registry = CollectorRegistry()
    Counter("inspector_frames_scored", "Frames scored.", ("camera",), registry=registry).labels("cam-1").inc(frames)
    Histogram("inspector_stage_duration_seconds", "Stage time.", ("stage",), buckets=(0.01, 0.1),
              registry=registry).labels("score").observe(latency_s)
    return generate_latest(registry).decode()


def test_the_supervisor_re_exposes_each_workers_metrics_with_its_index():
    registry = CollectorRegistry()
    metrics = build_supervisor_metrics(registry, processes=2)
    scrapes = {"0": _worker_scrape(5, 0.05), "1": _worker_scrape(7, 0.5), "2": "not { a scrape"}
    registry.register(WorkerScrapes(lambda: scrapes))
    value = registry.get_sample_value
    assert value("inspector_frames_scored_total", {"camera": "cam-1", "worker": "0"}) == 5
    assert value("inspector_frames_scored_total", {"camera": "cam-1", "worker": "1"}) == 7
    assert value("inspector_stage_duration_seconds_bucket", {"stage": "score", "le": "0.1", "worker": "0"}) == 1
    assert value("inspector_stage_duration_seconds_bucket", {"stage": "score", "le": "0.1", "worker": "1"}) == 0
    assert value("inspector_stage_duration_seconds_count", {"stage": "score", "worker": "1"}) == 1
    assert value("inspector_worker_restarts_total", {"worker": "1"}) == 0
    metrics.restarts.labels("1").inc()
    text = generate_latest(registry).decode()
    assert text.count("# TYPE inspector_stage_duration_seconds histogram") == 1  # one family for both workers
    assert 'inspector_worker_restarts_total{worker="1"} 1.0' in text
    assert 'worker="2"' not in text  # a scrape that does not parse is left out
