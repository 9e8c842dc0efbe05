"""`inspector serve --processes N` without a broker: how many workers, their settings, and the supervisor's one
/metrics made of theirs (the processes themselves: tests/integration/test_worker_processes.py)."""

from __future__ import annotations

import pickle

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inspector.__main__ import _settings, build_parser
from inspector.errors import ConfigError
from inspector.settings import Settings, load_settings
from inspector.stream.metrics import WorkerScrapes, build_supervisor_metrics
from inspector.stream.supervisor import processes_for_host, worker_processes, worker_settings


def test_auto_runs_one_worker_on_the_cpu_and_one_per_two_cores_on_a_gpu_up_to_eight():
    assert [processes_for_host(cores, cuda=False) for cores in (1, 2, 16, 64)] == [1, 1, 1, 1]
    assert [processes_for_host(cores, cuda=True) for cores in (1, 2, 6, 16, 64)] == [1, 1, 3, 8, 8]
    assert worker_processes(load_settings(workers={"processes": 3})) == 3


def test_processes_come_from_the_environment_or_the_flag_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.setenv("INSPECTOR_WORKERS__PROCESSES", "4")
    assert load_settings().workers.processes == 4
    assert _settings(build_parser().parse_args(["serve", "--processes", "2"])).workers.processes == 2
    with pytest.raises(ConfigError, match="workers.processes"):
        load_settings(workers={"processes": -1})
    with pytest.raises(ConfigError, match="restart_min_s"):
        load_settings(workers={"restart_min_s": 60, "restart_max_s": 30})


def test_a_worker_listens_on_loopback_keeps_secrets_and_has_a_transactional_id_of_its_slot():
    settings = Settings(http={"host": "0.0.0.0", "port": 9400},
                        kafka={"sasl_password": "s3cret", "exactly_once": True, "group_id": "g"})
    worker = pickle.loads(pickle.dumps(worker_settings(settings, 2, supervisor_pid=77)))  # as spawn passes it
    assert (worker.http.host, worker.http.port) == ("127.0.0.1", 0)
    assert worker.kafka.sasl_password is not None and worker.kafka.sasl_password.get_secret_value() == "s3cret"
    assert worker.kafka.transactional_id is not None and worker.kafka.transactional_id.endswith("-77-2")
    named = Settings(kafka={"exactly_once": True, "transactional_id": "line-3"})
    assert worker_settings(named, 1, supervisor_pid=77).kafka.transactional_id == "line-3-1"
    assert settings.http.port == 9400 and worker_settings(Settings(), 0, 77).kafka.transactional_id is None


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
