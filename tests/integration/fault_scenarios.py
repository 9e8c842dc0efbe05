"""What the fault-injection tests (`test_faults_*.py`) share: fresh topics, a planned stream published up front,
a worker SIGKILLed and restarted mid-stream, parsing the records, and the one `FAULTS` summary line each test
prints (sent / scored / lost / duplicated / dead-lettered, and what is particular to it), from which
RELIABILITY.md is filled:

    .venv/bin/python -m pytest tests/integration/test_faults_*.py -q -p no:logging
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from inspector.contracts import (
    Alert,
    FrameScore,
)
from inspector.kafka.kafka_python.clients import create_topics
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import Topics, producer_settings


def summary(capsys: pytest.CaptureFixture, scenario: str, **counts: object) -> str:
    """One line per test, printed past pytest's capture so a passing run shows it too."""
    line = f"FAULTS {scenario}: " + " ".join(f"{k}={v}" for k, v in counts.items())
    with capsys.disabled():
        print(f"\n{line}", flush=True)
    return line


def new_topics(bootstrap: str, tag: str, frames_partitions: int = 2) -> Topics:
    tag = f"{tag}-{uuid.uuid4().hex[:6]}"
    t = Topics(bootstrap, f"frames-{tag}", f"alerts-{tag}", f"scores-{tag}", f"dlq-{tag}", f"group-{tag}")
    create_topics(t.kafka_settings(), {t.frames: frames_partitions, t.alerts: 1, t.scores: 1, t.dlq: 1})
    return t


def parse_scores(records: list) -> list[FrameScore]:
    return [FrameScore.model_validate_json(r.value) for r in records]


def score_ids(records: list) -> Counter:
    """frame id -> how many records carry it (a count > 1 is a duplicate)."""
    return Counter(s.frame_id for s in parse_scores(records))


def wait_for(predicate, timeout_s: float, what: str, step_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def metric(worker, sample: str) -> float:
    """A sample's value from the worker's /metrics, e.g. 'inspector_model_reloads_total{result="ok"}'; 0 if absent."""
    for line in worker.metrics_text().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def publish_planned(topics: Topics, n: int, seed: int, camera: str, defects: int = 0, **producer: object):
    """A planned stream published up front; (publisher, frame id -> ground-truth label)."""
    frames = planned_stream(producer_settings(seed=seed), n_frames=n, n_defects=defects)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id=camera, **producer))
    stats = publisher.publish(ListSource(frames))
    assert stats.acked == n and stats.failed == 0
    return publisher, {f"{camera}-{publisher._run_id}-{i}": f.label for i, f in enumerate(frames)}


def camera_on_partition(partition: int, *, partitions: int) -> str:
    """A camera id whose frames land on `partition`, as kafka-python's default partitioner places keyed records."""
    from kafka.partitioner.default import murmur2

    for i in range(1000):
        camera = f"cam-j{i}"
        if (murmur2(camera.encode()) & 0x7FFFFFFF) % partitions == partition:
            return camera
    raise AssertionError(f"no camera id lands on partition {partition} of {partitions}")


def kill_restart_run(topics: Topics, start_worker, reader, *, n: int, kills: int, seed: int, camera: str,
                      env: dict[str, str]) -> dict:
    """Publish n frames, SIGKILL the worker `kills` times mid-stream (restarting it each time), drain."""
    _, labels = publish_planned(topics, n, seed, camera, defects=n // 20)
    scores = reader(topics.scores)
    worker = start_worker(topics, **env)
    for k in range(kills):
        target = (k + 1) * n // (kills + 2)
        scores.until(lambda rs, target=target: len(score_ids(rs)) >= target, timeout_s=120)
        worker.kill()
        done = len(score_ids(scores.records))
        assert target <= done < n, f"kill {k + 1} at {done}/{n} scored is not mid-stream"
        worker = start_worker(topics, **env)
    scores.until(lambda rs: len(score_ids(rs)) >= n, timeout_s=180)
    ids = score_ids(scores.records)
    alerted = {s.frame_id for s in parse_scores(scores.records) if s.alert}
    alerts = reader(topics.alerts)
    alerts.until(lambda rs: alerted <= {a.frame_id for a in parse_alerts(rs)}, timeout_s=30)
    alert_ids = Counter(a.frame_id for a in parse_alerts(alerts.records))
    assert worker.proc.poll() is None
    assert worker.terminate() == 0
    return {"labels": labels, "ids": ids, "alerted": alerted, "alert_ids": alert_ids,
            "alert_labels": {a.frame_id: a.label for a in parse_alerts(alerts.records)}}


def parse_alerts(records: list) -> list[Alert]:
    return [Alert.model_validate_json(r.value) for r in records]


