"""The deploy files' PromQL on live data: a real Prometheus scrapes a real worker fed by a real stream.

Every dashboard expression and every rule expression must return data, the rules must evaluate without error,
and the worker's /metrics must pass `promtool check metrics`. Alert rules whose condition is a fault are proven
as ALERT_PROOFS says; their firing logic (thresholds, `for`) is covered by `promtool test rules`
(tests/unit/test_monitoring_files.py).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from inspector.kafka.kafka_python.clients import create_topics
from inspector.kafka.local_broker import free_port
from inspector.sorter.standin_plc import StandinPlc
from producers.base import Publisher, SourceFrame
from producers.synthetic import ListSource, planned_stream
from tests.deploy_expressions import (
    GRAFANA_SUBSTITUTES,
    RULES,
    RULES_DIR,
    assert_sorter_expressions_have_data,
    dashboard_expressions,
    kafka_health_expressions,
    kafka_health_series_names,
    reads_only,
    render_local_config,
    sorter_series_names,
    substitute_grafana_variables,
    ui_series_names,
    with_bool_comparisons,
)

from .conftest import producer_settings, stop_process
from .prometheus_server import PROMETHEUS, Prometheus, prometheus_servers
from .sorter_process import SorterProcess, defect_alert, line_file
from .test_pipeline import _corrupt_frames

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PROMTOOL = shutil.which("promtool")
if not Path(PROMETHEUS).is_file():
    pytest.skip("the Prometheus server is not installed (Debian package `prometheus`)", allow_module_level=True)

FPS = 10
N_FRAMES = 240  # 24 s at FPS: several scrapes (1 s) in every rate() window
BAD_EVERY = 8  # every 8th frame is truncated: 12 % of the frames, over the 5 % of InspectorDeadLetterRate
N_LATE = 9  # frames of a camera whose deadline (1 ms) no verdict can meet

# How each alert rule is proven on live data.
#   "fault": the test produces the fault for real; the rule's own expression returns the faulty series and
#            Prometheus reports the alert pending (its `for` is longer than the test).
#   "live":  the stream itself meets the condition (1 frame in 8 dead-lettered); checked the same way.
#   "bool":  the condition needs a fault the test cannot (or must not) produce in 30 s on a shared broker:
#            a lag over 1000 messages growing for 5 min, a 5-min defect share 3x the hour's, p99 over
#            300 ms, a score drift over 15 min, a live worker that is not ready. Each comparison of the
#            expression is given the `bool` modifier, so it returns 0/1 per series instead of filtering:
#            non-empty proves every series and every vector match (`and`, `on () group_left ()`) exists.
# Every alert is also evaluated in its "bool" form while the worker is healthy.
ALERT_PROOFS = {
    "InspectorWorkerDown": "fault",  # SIGTERM the worker: up == 0; then drop its target: absent(up)
    "InspectorDeadLetterRate": "live",
    "InspectorTransactionsGivenUp": "bool",  # a broker lost mid-transaction (tests/integration/test_faults_broker.py)
    "InspectorConsumerLagGrowing": "bool",
    "InspectorDefectRateSpike": "bool",
    "InspectorLatencyOverBudget": "bool",
    "ScoreDrift": "bool",
    "AlertRateHigh": "bool",
    "InspectorNotReady": "bool",  # a stopped worker exports nothing, so its inspector_ready goes stale
    "CameraDown": "live",  # the producer's second camera points at a port where nothing listens
    "CameraFrameRateLow": "bool",
    # The sorter's: a worker exports none of its series; proven on a live sorter (assert_sorter_expressions_have_data).
    "EjectionsLate": "sorter",
    "ActuatorDown": "sorter",
    # The Kafka cluster's: proven on a live `inspector kafka-health` (kafka_health_expressions).
    "KafkaUnderReplicatedPartitions": "kafka-health",
    "KafkaOfflinePartitions": "kafka-health",
    "KafkaBrokerProbeDown": "kafka-health",
}

def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture()
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    with prometheus_servers(tmp_path) as start:
        yield start


def stream_with_bad_frames() -> tuple[list[SourceFrame], int]:
    """N_FRAMES frames of cam-1, every BAD_EVERY-th one truncated (no end-of-image marker); (frames, n bad)."""
    frames = planned_stream(producer_settings(seed=17), n_frames=N_FRAMES, n_defects=24)
    bad = 0
    for i in range(BAD_EVERY - 1, N_FRAMES, BAD_EVERY):
        jpeg = frames[i].jpeg
        assert jpeg is not None
        frames[i] = SourceFrame(frames[i].image, frames[i].label, jpeg[: len(jpeg) // 2])
        bad += 1
    return frames, bad


def start_camera_producer(topics, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`python -m producers --cameras` with a synthetic camera at 5 frames/s and one that cannot be reached,
    publishing to a topic of its own (the worker's stream stays as planned); (process, metrics port)."""
    topic = f"{topics.frames}-cameras"
    create_topics(topics.kafka_settings(), {topic: 1})
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text(yaml.safe_dump({"cameras": [
        {"id": "cam-synthetic", "source": "synthetic", "fps": 5, "width": 64, "height": 64},
        {"id": "cam-gone", "source": f"rtsp://127.0.0.1:{free_port()}/cam", "fps": 5}]}))
    port = free_port()
    with (tmp_path / "producer.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "producers", "--cameras", str(cameras), "--metrics-port",
                                 str(port)], env={**os.environ, **topics.env(), "INSPECTOR_KAFKA__FRAMES_TOPIC": topic},
                                stdout=log, stderr=subprocess.STDOUT)
    return proc, port


def test_dashboard_and_rules_return_data_on_a_live_worker(topics, start_worker, start_prometheus, tmp_path,
                                                          default_model_path):
    # A copy of the model, so that touching it makes this worker (and only it) hot-reload.
    model = tmp_path / "model.safetensors"
    shutil.copy2(default_model_path, model)
    worker = start_worker(topics, wait_ready=False, INSPECTOR_MODEL__PATH=str(model))
    target = f"127.0.0.1:{worker.metrics_port}"
    producer, producer_port = start_camera_producer(topics, tmp_path)
    producer_target = f"127.0.0.1:{producer_port}"
    try:
        _check_live_worker_and_producer(topics, worker, target, producer, producer_target, start_prometheus, model)
    finally:
        if producer.poll() is None:
            producer.kill()
        producer.wait(timeout=30)


def _check_live_worker_and_producer(topics, worker, target, producer, producer_target, start_prometheus, model):
    prom = start_prometheus(target, (producer_target,))  # starts while the worker warms up
    worker.wait_ready()
    prom.wait_for_series('inspector_ready{job="inspector"} == 1')
    prom.wait_for_series('inspector_producer_frames_published_total{camera="cam-synthetic"} > 0')

    # 1. The stream: 5 bad records of different kinds; cam-1 at FPS with 1 frame in 8 truncated; cam-late,
    #    whose deadline (1 ms) is always missed; a hot reload of the model half way.
    frames, n_truncated = stream_with_bad_frames()
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-1", fps=FPS))
    late = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-late", deadline_ms=1))
    late_frames = planned_stream(producer_settings(seed=3), n_frames=N_LATE, n_defects=0)
    n_bad = n_truncated + len(_corrupt_frames(publisher))
    half, third = N_FRAMES // 2, N_LATE // 3
    # cam-late in three bursts: its series appear with the first, and the next two make their rates non-zero
    # (a counter that appears and never grows has rate 0, and 0/0 gives NaN).
    late.publish(ListSource(late_frames[:third]))
    publisher.publish(ListSource(frames[:half]))
    late.publish(ListSource(late_frames[third:2 * third]))
    mtime = model.stat().st_mtime + 10
    os.utime(model, (mtime, mtime))
    stats = publisher.publish(ListSource(frames[half:]))
    late.publish(ListSource(late_frames[2 * third:]))
    assert stats.failed == 0 and late.stats.failed == 0
    publisher.close()
    late.close()

    n_good = N_FRAMES - n_truncated + N_LATE
    prom.wait_for_series(f"sum(inspector_frames_scored_total) >= {n_good}", timeout_s=60)
    prom.wait_for_series(f"sum(inspector_frames_dead_lettered_total) >= {n_bad}", timeout_s=30)
    prom.wait_for_series('inspector_model_reloads_total{result="ok"} >= 1', timeout_s=30)
    time.sleep(2)  # a scrape and a rule evaluation after the last frame

    # 2. Every dashboard expression, with Grafana's variables replaced.
    failures: list[str] = []
    values: dict[str, list[tuple[dict, float]]] = {}

    def check(kind: str, expr: str) -> None:
        result, error = prom.query(expr)
        if error or not result:
            failures.append(f"{kind}: {expr!r} -> {error or 'no data'}")
        values[expr] = [(series["metric"], float(series["value"][1])) for series in result]

    # The operators' panels read the UI's metrics, not a worker's: tests/integration/test_ui.py reads them live; the
    # Sorter row reads the sorter's and the Kafka cluster row the probe's, each proven live by its own test.
    elsewhere = ui_series_names() | sorter_series_names() | kafka_health_series_names()
    dashboard = [substitute_grafana_variables(e, GRAFANA_SUBSTITUTES) for e in dashboard_expressions()
                 if not reads_only(e, elsewhere)]
    assert dashboard and all("$" not in e for e in dashboard)
    for expr in dashboard:
        check("dashboard", expr)

    # 3. Every recording rule: its expression, and the series Prometheus recorded from it.
    all_rules = rules()
    for rule in all_rules:
        if "record" in rule:
            check("recording rule", str(rule["expr"]))
            check("recorded series", rule["record"])

    # 4. Every alert rule in its bool form (ALERT_PROOFS), and as written where the stream meets it.
    alert_rules = {rule["alert"]: str(rule["expr"]) for rule in all_rules if "alert" in rule}
    assert set(alert_rules) == set(ALERT_PROOFS), "every alert rule needs a proof in ALERT_PROOFS"
    for name in [name for name, proof in ALERT_PROOFS.items() if proof not in {"sorter", "kafka-health"}]:
        expr = alert_rules[name]
        bool_expr = with_bool_comparisons(expr)
        assert bool_expr != expr, f"{name}: no comparison found to make bool"
        check(f"alert {name} (bool)", bool_expr)
        if ALERT_PROOFS[name] == "live":
            check(f"alert {name}", expr)
    assert not failures, "expressions without data:\n" + "\n".join(failures)
    # Values are read while the stream is inside every window: none may be undefined.
    nan = {expr: [labels for labels, v in got if math.isnan(v)] for expr, got in values.items()}
    assert not any(nan.values()), f"NaN results: { {e: series for e, series in nan.items() if series} }"

    live = [name for name, proof in ALERT_PROOFS.items() if proof == "live"]
    # Pending, or firing for the camera that has been down since the producer started (CameraDown's `for` is 1m).
    prom.wait_for(f"{live} pending", lambda: set(live) <= set(prom.alerts("pending")) | set(prom.alerts("firing")),
                  timeout_s=20)

    # 5. Prometheus evaluates every rule without error, and scrapes the worker.
    def evaluated() -> list[dict]:
        got = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return got if all(r["health"] != "unknown" for r in got) else []

    evaluated_rules = prom.wait_for("every rule evaluated", evaluated, timeout_s=20)
    assert len(evaluated_rules) == len(all_rules)
    unhealthy = {r["name"]: r.get("lastError") for r in evaluated_rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    scraped = {t["labels"]["job"]: t for t in prom.get("/api/v1/targets")["data"]["activeTargets"]}
    assert scraped.keys() == {"inspector", "producer"}, scraped
    for job, instance in (("inspector", target), ("producer", producer_target)):
        assert scraped[job]["health"] == "up" and scraped[job]["labels"] == {"job": job, "instance": instance}

    # 6. The expositions pass promtool's lint; the producer stops cleanly.
    if PROMTOOL:
        with urllib.request.urlopen(f"http://{producer_target}/metrics", timeout=5) as r:
            producer_metrics = r.read().decode()
        for exposition in (worker.metrics_text(), producer_metrics):
            lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True,
                                  text=True, timeout=60)
            assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(timeout=60) == 0

    # 7. The fault: the worker stops; the next scrapes fail, the rule returns its target, the alert pends.
    assert worker.terminate() == 0
    worker_down = alert_rules["InspectorWorkerDown"]
    down = prom.wait_for_series(worker_down, timeout_s=30)
    assert [s["metric"].get("instance") for s in down] == [target], down
    prom.wait_for("InspectorWorkerDown pending", lambda: "InspectorWorkerDown" in prom.alerts("pending"),
                  timeout_s=20)
    # ... and with no target left at all (a stopped replica leaves DNS discovery), the absent() branch.
    config = render_local_config(target, RULES_DIR)
    assert f'["{target}"]' in config
    prom.reload(config.replace(f'["{target}"]', "[]"))
    absent = prom.wait_for("absent(up)", lambda: [s for s in prom.query(worker_down)[0]
                                                   if "instance" not in s["metric"]], timeout_s=30)
    assert [s["metric"] for s in absent] == [{"job": "inspector"}], absent


def test_the_sorter_row_and_rules_return_data_on_a_live_sorter(topics, start_prometheus, tmp_path: Path) -> None:
    """The dashboard's Sorter row and the sorter's alert rules, proven on a real sorter that ejects a fruit every
    100 ms through a stand-in PLC while Prometheus scrapes it (quantiles need pulses in their window)."""
    with StandinPlc() as plc:
        sorter = SorterProcess(topics, line_file(tmp_path / "line.yaml", plc.port), tmp_path / "sorter.log")
        stop = threading.Event()

        def feed() -> None:
            producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
            i = 0
            while not stop.wait(0.1):
                producer.send(topics.alerts, key=b"cam-1", value=defect_alert(f"live-{i}", time.time_ns()).to_json())
                producer.flush()
                i += 1
            producer.close()

        feeder = threading.Thread(target=feed, daemon=True)
        try:
            sorter.wait_ready()
            prom = start_prometheus("", sorter_targets=(f"127.0.0.1:{sorter.port}",))
            feeder.start()
            assert_sorter_expressions_have_data(prom.url, sorter_series_names(), timeout_s=90)
            assert plc.pulses(), sorter.log()
        finally:
            stop.set()
            feeder.join(timeout=5)
            stop_process(sorter.proc)


def test_the_kafka_cluster_row_and_alerts_return_data_on_a_live_probe(kafka_broker, topics, start_prometheus,
                                                                     tmp_path: Path) -> None:
    """`inspector kafka-health` against the real broker, scraped by Prometheus: every Kafka cluster panel and Kafka
    alert (bool form) has data, none NaN, and on a healthy broker none of the alerts' conditions holds."""
    port = free_port()
    env = {**os.environ, "INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers}
    with (tmp_path / "kafka-health.log").open("wb") as log:
        probe = subprocess.Popen([sys.executable, "-m", "inspector", "kafka-health", "--metrics-port", str(port),
                                  "--interval", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        prom = start_prometheus("", kafka_health_targets=(f"127.0.0.1:{port}",))
        prom.wait_for_series(f'inspector_kafka_partitions{{topic="{topics.frames}"}} == 2', timeout_s=60)
        failures: list[str] = []
        for label, expr in kafka_health_expressions().items():
            result, error = prom.query(expr)
            nan = [s["metric"] for s in result if math.isnan(float(s["value"][1]))]
            if error or not result or nan:
                failures.append(f"{label} -> {error or ('NaN for ' + str(nan) if nan else 'no data')}")
            elif label.startswith("alert "):
                assert {s["value"][1] for s in result} == {"0"}, (label, result)
        assert not failures, "Kafka health expressions without data:\n" + "\n".join(failures)
        assert prom.query('inspector_kafka_brokers{job="kafka-health"}')[0][0]["value"][1] == "1"
    finally:
        stop_process(probe)
    assert probe.returncode == 0, (tmp_path / "kafka-health.log").read_text()


def test_score_drift_fires_on_a_live_prometheus_when_a_cameras_light_changes(topics, start_worker, start_prometheus,
                                                                            tmp_path):
    """The rules as shipped, with ScoreDrift's 10 minutes shortened to none: a camera whose light brightens mid-run
    makes its rolling p90 cross the calibration p99, and only that camera's alert fires."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shipped = yaml.safe_load(RULES.read_text())
    for group in shipped["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "ScoreDrift":
                rule["for"] = "0s"
    (rules_dir / "inspector.rules.yml").write_text(yaml.safe_dump(shipped))
    worker = start_worker(topics, INSPECTOR_HTTP__SCORE_WINDOW_S="4")
    prom = start_prometheus(f"127.0.0.1:{worker.metrics_port}", rules_dir=rules_dir)

    def publish(camera: str, seed: int, gain: float, n_frames: int) -> None:
        frames = planned_stream(producer_settings(seed=seed), n_frames=n_frames, n_defects=0)
        if gain != 1.0:
            frames = [SourceFrame(image, "good", cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
                      for image in (np.clip(f.image.astype(np.float32) * gain, 0, 255).astype(np.uint8) for f in frames)]
        publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id=camera, fps=10))
        assert publisher.publish(ListSource(frames)).failed == 0
        publisher.close()

    def drifting() -> set[str]:
        result, error = prom.query('ALERTS{alertname="ScoreDrift", alertstate="firing"}')
        assert not error, error
        return {series["metric"]["camera"] for series in result}

    publish("cam-steady", 81, 1.0, 40)  # 4 s at the light of training
    prom.wait_for_series('inspector_anomaly_score_rolling{camera="cam-steady", percentile="p90"}', timeout_s=30)
    time.sleep(3)  # rule evaluations over the steady window
    assert drifting() == set()
    publish("cam-steady", 82, 1.6, 40)  # the same camera, its light 60 % stronger
    prom.wait_for("ScoreDrift firing for cam-steady", lambda: drifting() == {"cam-steady"}, timeout_s=40)
