"""`make demo`: a real local Kafka broker, a synthetic camera with ~5 % defective bananas, one worker,
live progress, and a summary; everything it starts is stopped at the end."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer

from inspector.errors import TransportError
from inspector.kafka.kafka_python import client_config, create_topics
from inspector.kafka.local_broker import LocalKafka, free_port
from inspector.process import freeze_long_lived_objects
from inspector.settings import Settings, child_environment
from inspector.stream.http_endpoint import wait_until_ready


@dataclass
class Tally:
    """What a downstream subscriber (the sorter) saw."""

    scores: int = 0
    alerts: int = 0
    true_alerts: int = 0
    false_alerts: int = 0
    dead_letters: int = 0
    defects_scored: int = 0  # frames whose ground-truth label is a defect kind
    latencies_s: list[float] = field(default_factory=list)  # capture -> score record received
    frame_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _follow(settings: Settings, tally: Tally, stop: threading.Event) -> None:
    k = settings.kafka
    consumer = KafkaConsumer(k.alerts_topic, k.scores_topic, k.dlq_topic, **client_config(k),
                             group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        while not stop.is_set():
            for tp, records in consumer.poll(timeout_ms=200).items():
                now = time.time_ns()
                with tally.lock:
                    for r in records:
                        if tp.topic == k.dlq_topic:
                            tally.dead_letters += 1
                            continue
                        msg = json.loads(r.value)
                        if tp.topic == k.scores_topic:
                            if msg["frame_id"] in tally.frame_ids:
                                continue  # at-least-once: a re-scored frame counts once
                            tally.frame_ids.add(msg["frame_id"])
                            tally.defects_scored += msg.get("label") not in (None, "good")
                            tally.scores += 1
                            tally.latencies_s.append((now - msg["captured_ns"]) / 1e9)
                        else:
                            tally.alerts += 1
                            if msg.get("label") not in (None, "good"):
                                tally.true_alerts += 1
                            else:
                                tally.false_alerts += 1
    finally:
        consumer.close()


def _ensure_model(settings: Settings) -> None:
    path = Path(settings.model.path)
    if path.is_file():
        return
    print(f"no model at {path}: training a small one on synthetic good bananas (a few minutes on 2 cores)")
    from inspector.decode.preprocess import list_images, load_images
    from inspector.model.networks import FeatureReconstructorConfig
    from inspector.model.runtime import pick_device
    from inspector.synthetic.bananas import write_dataset
    from inspector.training.train import TrainConfig, train_and_calibrate

    with tempfile.TemporaryDirectory(prefix="bananas-") as tmp:
        write_dataset(Path(tmp), n_train=400, n_test_good=0, n_test_per_defect=0, size=256, seed=1)
        paths = list_images(Path(tmp) / "train" / "good")
        cfg = FeatureReconstructorConfig()
        train_and_calibrate(load_images(paths, cfg.image_size), paths, path, cfg, TrainConfig(),
                            pick_device(settings.model.device), model_version="demo")


def run_demo(settings: Settings, *, frames: int, fps: float, defect_rate: float) -> int:
    _ensure_model(settings)
    print("starting a local Kafka broker (Apache Kafka, KRaft, single node) ...", flush=True)
    with LocalKafka() as broker:
        metrics_port = free_port()
        settings = settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})})
        k = settings.kafka
        create_topics(k, {k.frames_topic: 2, k.alerts_topic: 1, k.scores_topic: 1, k.dlq_topic: 1,
                          k.evidence_topic: 1})
        env = child_environment(INSPECTOR_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                                INSPECTOR_HTTP__PORT=str(metrics_port), INSPECTOR_MODEL__PATH=str(settings.model.path))
        log_path = broker.work_dir / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "inspector", "serve"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        tally, stop = Tally(), threading.Event()
        follower = threading.Thread(target=_follow, args=(settings, tally, stop), daemon=True)
        follower.start()
        camera: subprocess.Popen[bytes] | None = None
        camera_log = broker.work_dir / "camera.log"
        try:
            try:  # the camera starts once the worker has its partitions: latency measures the line, not start-up
                wait_until_ready(worker, metrics_port)
            except TransportError as exc:
                raise TransportError(f"{exc}; see {log_path}") from None
            print(f"worker ready (metrics: http://127.0.0.1:{metrics_port}/metrics, log: {log_path})")
            # The camera is its own process, as on a line: `python -m producers synthetic`.
            with camera_log.open("wb") as log:
                camera = subprocess.Popen(
                    [sys.executable, "-m", "producers", "synthetic", "--count", str(frames), "--fps", f"{fps:g}",
                     "--defect-rate", f"{defect_rate:g}", "--seed", "7"],
                    env=env, stdout=log, stderr=subprocess.STDOUT)
            freeze_long_lived_objects()  # this process is the subscriber: no collection pauses
            t0 = time.monotonic()
            deadline = t0 + frames / max(fps, 1) + 120
            while time.monotonic() < deadline:
                time.sleep(1.0)
                if worker.poll() is not None:
                    raise TransportError(f"the worker exited with code {worker.returncode}; see {log_path}")
                if camera.poll() not in (None, 0):
                    raise TransportError(f"the camera exited with code {camera.returncode}; see {camera_log}")
                with tally.lock:
                    done, alerts = tally.scores, tally.alerts
                print(f"\r  scored {done:5d}  alerts {alerts:3d}", end="", flush=True)
                if done >= frames and camera.poll() is not None:
                    break
            elapsed = time.monotonic() - t0
            print()
            time.sleep(0.5)  # the last alerts trail their scores by a few milliseconds
        finally:
            for process in (camera, worker):
                if process is not None and process.poll() is None:
                    process.terminate()
            camera_code = camera.wait(timeout=30) if camera is not None else None
            try:
                code = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            stop.set()
            follower.join(timeout=5)
            gc.unfreeze()

        defects_sent = tally.defects_scored
        lat = np.array(tally.latencies_s) * 1000 if tally.latencies_s else np.array([float("nan")])
        print("\n=== demo summary ===")
        print(f"frames scored {tally.scores} (camera exited with code {camera_code}), "
              f"dead-lettered {tally.dead_letters}")
        print(f"defective bananas sent {defects_sent}; alerts {tally.alerts}: {tally.true_alerts} true defects, "
              f"{tally.false_alerts} false alarms; missed defects {max(0, defects_sent - tally.true_alerts)}")
        print(f"throughput {tally.scores / elapsed:.1f} frames/s (camera at {fps:g} fps); end-to-end latency "
              f"(capture -> score received by a subscriber) p50 {np.percentile(lat, 50):.1f} ms, "
              f"p99 {np.percentile(lat, 99):.1f} ms")
        print(f"worker metrics were at http://127.0.0.1:{metrics_port}/metrics; worker exited with code {code}")
        if tally.scores < frames:
            raise TransportError(f"only {tally.scores} of {frames} frames were scored; see {log_path}")
    print("stopped the worker and the broker.")
    return 0


