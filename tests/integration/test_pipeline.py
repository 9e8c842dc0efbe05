"""The pipeline end to end on a real broker: producer -> worker process -> alerts, scores, DLQ, offsets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from inspector.contracts import Alert, FrameMeta, FrameScore
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import committed_offsets, distinct_frame_ids, producer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _corrupt_frames(publisher: Publisher) -> list[str]:
    """Five bad records of different kinds; returns the reasons the worker should give."""
    good = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()

    def headers(i: int, **over: object) -> list[tuple[str, bytes]]:
        meta = FrameMeta(frame_id=f"bad-{i}", camera_id="cam-bad", sequence=i, captured_ns=time.time_ns())
        h = dict(meta.to_headers())
        h.update({k: v for k, v in over.items()})
        return [(k, v) for k, v in h.items() if v is not None]

    publisher.send_raw(b"", headers(0), key=b"cam-bad")
    publisher.send_raw(np.random.default_rng(0).bytes(5000), headers(1), key=b"cam-bad")
    publisher.send_raw(good[: len(good) // 2], headers(2), key=b"cam-bad")
    publisher.send_raw(good, headers(3, **{"schema-version": b"99"}), key=b"cam-bad")
    publisher.send_raw(good, [("frame-id", b"bad-4")], key=b"cam-bad")
    publisher.flush()
    return ["empty_value", "not_jpeg", "truncated", "unknown_schema", "missing_header"]


@pytest.mark.parametrize("transport", ["kafka-python", "confluent"])
def test_frames_flow_to_alerts_scores_and_dead_letters(topics, start_worker, reader, transport):
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    frames = planned_stream(producer_settings(seed=11), n_frames=200, n_defects=20)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-1"))
    worker = start_worker(topics, INSPECTOR_KAFKA__TRANSPORT=transport)
    stats = publisher.publish(ListSource(frames))
    expected_reasons = _corrupt_frames(publisher)
    assert stats.acked == 205 and stats.failed == 0

    scores = reader(topics.scores)
    scores.until(lambda rs: len(distinct_frame_ids(rs)) >= 200, timeout_s=180)
    alerts = reader(topics.alerts)
    alerts.until(lambda _rs: False, timeout_s=3)  # alerts precede their scores; take what is there
    dlq = reader(topics.dlq)
    dlq.until(lambda rs: len(rs) >= 5, timeout_s=30)

    score_msgs = [FrameScore.model_validate_json(r.value) for r in scores.records]
    ids = {s.frame_id for s in score_msgs}
    sent_ids = {f"cam-1-{publisher._run_id}-{i}" for i in range(200)}
    assert ids == sent_ids, f"missing {len(sent_ids - ids)} frame ids"

    alert_msgs = [Alert.model_validate_json(r.value) for r in alerts.records]
    true_alerts = {a.frame_id for a in alert_msgs if a.label != "good"}
    false_alerts = {a.frame_id for a in alert_msgs if a.label == "good"}
    print(f"\npipeline: 200 frames, 20 defects -> {len(true_alerts)} true alerts, {len(false_alerts)} false alerts")
    assert len(true_alerts) >= 18, f"only {len(true_alerts)} of 20 defects alerted"
    # Model quality is bench/quality.py's; here the bound is issue 14's 5 % of the good frames, which a model
    # that mis-scores JPEG frames (180 false alerts in 180 before JPEG copies joined training) cannot meet.
    assert len(false_alerts) <= 9, f"{len(false_alerts)} false alerts"
    assert all(a.box is not None and a.box.x1 > a.box.x0 for a in alert_msgs if a.label != "good")
    assert all(r.key == b"cam-1" for r in alerts.records)

    reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dlq.records)
    assert reasons == sorted(expected_reasons)
    assert all(dict(r.headers)["dlq.origin"].decode().startswith(topics.frames) for r in dlq.records)

    # Offsets are committed to the end of the topic once everything is acknowledged.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        committed, ends = committed_offsets(topics.bootstrap, topics.group, topics.frames)
        if committed == ends:
            break
        time.sleep(0.5)
    assert committed == ends

    metrics = worker.metrics_text()
    assert 'inspector_frames_dead_lettered_total{reason="truncated"} 1.0' in metrics
    assert 'inspector_frames_scored_total{camera="cam-1"} 200.0' in metrics
    assert worker.http_status("/healthz") == 200 and worker.http_status("/readyz") == 200
    assert worker.terminate() == 0
    publisher.close()


def test_alerts_are_read_by_an_independent_client(topics, start_worker, reader):
    """kcat (librdkafka) reads the alerts topic and every value parses as the documented JSON."""
    frames = planned_stream(producer_settings(seed=5), n_frames=30, n_defects=6)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-7"))
    worker = start_worker(topics)
    publisher.publish(ListSource(frames))
    publisher.close()
    reader(topics.scores).until(lambda rs: len(distinct_frame_ids(rs)) >= 30, timeout_s=120)
    worker.terminate()

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat:
        out = subprocess.run([kcat, "-b", topics.bootstrap, "-C", "-t", topics.alerts, "-o", "beginning", "-e",
                              "-q", "-f", "%k\t%s\n"], capture_output=True, text=True, timeout=60, check=True).stdout
        lines = [line.split("\t", 1) for line in out.splitlines() if line.strip()]
    else:  # a second independent client: confluent-kafka (librdkafka)
        confluent_kafka = pytest.importorskip("confluent_kafka")
        c = confluent_kafka.Consumer({"bootstrap.servers": topics.bootstrap, "group.id": "interop",
                                      "auto.offset.reset": "earliest"})
        c.subscribe([topics.alerts])
        lines, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and not m.error():
                lines.append([m.key().decode(), m.value().decode()])
        c.close()
    assert len(lines) >= 5
    for key, value in lines:
        data = json.loads(value)
        assert key == "cam-7" and data["camera_id"] == "cam-7" and data["kind"] == "defect-alert"
        assert data["score"] > data["threshold"] and set(data["box"]) >= {"x0", "y0", "x1", "y1"}
        Alert.model_validate(data)


def test_a_restarted_worker_in_the_same_group_loses_no_frame(topics, start_worker, reader):
    frames = planned_stream(producer_settings(seed=21), n_frames=300, n_defects=10)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-2"))
    first = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8")
    publisher.publish(ListSource(frames))
    scores = reader(topics.scores)
    scores.until(lambda rs: len(distinct_frame_ids(rs)) >= 60, timeout_s=120)
    assert first.terminate() == 0  # SIGTERM mid-stream: finish the batch in hand, commit, exit 0
    done_before = len(distinct_frame_ids(scores.records))
    assert done_before < 300, "the stream ended before the stop; the test would prove nothing"

    start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8")
    scores.until(lambda rs: len(distinct_frame_ids(rs)) >= 300, timeout_s=180)
    ids = distinct_frame_ids(scores.records)
    assert ids == {f"cam-2-{publisher._run_id}-{i}" for i in range(300)}
    # A graceful stop commits what it scored: the successor re-scores nothing.
    assert len(scores.records) == 300
    publisher.close()


def test_bad_settings_and_missing_files_end_with_one_line(tmp_path, kafka_broker):
    import os
    import sys

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})

    cases = [
        run("serve", "--model", str(tmp_path / "nope.safetensors"), "--bootstrap-servers",
            kafka_broker.bootstrap_servers),
        run("serve", INSPECTOR_BATCH__MAX_SIZE="0"),
        run("serve", "--bootstrap-servers", "127.0.0.1:1", INSPECTOR_KAFKA__REQUEST_TIMEOUT_MS="2000"),
        run("train", "--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors")),
    ]
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04not a model")
    cases.append(run("serve", "--model", str(tmp_path / "bad.safetensors")))
    for done in cases:
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not found" in cases[0].stderr and "batch.max_size" in cases[1].stderr
    assert "cannot reach Kafka" in cases[2].stderr and "no images" in cases[3].stderr
