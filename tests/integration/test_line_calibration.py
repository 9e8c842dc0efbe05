"""`inspector calibrate --from-line` on a real broker with a running worker: the scores the worker published for
each camera become that camera's threshold, frames operators confirmed as defects are left out, and the worker
hot-reloads the new model version and alerts with the new thresholds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer

from inspector.contracts import Feedback, FrameScore
from inspector.model import artifact as artifact_io
from producers.base import Publisher, SourceFrame
from producers.synthetic import ListSource, planned_stream

from .conftest import producer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_FRAMES = 90  # per camera: a conformal quantile at 5 % needs 59 good scores


def brighter(frames: list[SourceFrame], gain: float) -> list[SourceFrame]:
    """The same scenes under stronger light, as that camera would send them (JPEG)."""
    out = []
    for f in frames:
        image = np.clip(f.image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        out.append(SourceFrame(image, f.label, cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()))
    return out


def threshold_metric(worker, camera: str) -> float | None:
    for line in worker.metrics_text().splitlines():
        if line.startswith(f'inspector_threshold{{camera="{camera}"}}'):
            return float(line.split()[-1])
    return None


def test_from_line_sets_per_camera_thresholds_that_the_running_worker_reloads(topics, start_worker, reader,
                                                                               default_model_path, tmp_path):
    model = tmp_path / "model.safetensors"
    shutil.copy2(default_model_path, model)
    worker = start_worker(topics, INSPECTOR_MODEL__PATH=str(model))
    scores = reader(topics.scores)
    normal = planned_stream(producer_settings(seed=71), n_frames=N_FRAMES, n_defects=0)
    bright = brighter(planned_stream(producer_settings(seed=72), n_frames=N_FRAMES, n_defects=0), 1.35)
    # Defects on the normal camera, confirmed by an operator: they must not lift its good frames' threshold.
    defects = planned_stream(producer_settings(seed=73), n_frames=6, n_defects=6)
    for camera, frames in (("cam-normal", normal + defects), ("cam-bright", bright)):
        publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id=camera))
        assert publisher.publish(ListSource(frames)).failed == 0
        publisher.close()
    got = scores.until(lambda records: len(records) >= 2 * N_FRAMES + 6, timeout_s=180)
    published = [FrameScore.model_validate_json(r.value) for r in got]
    confirmed = [s for s in published if s.label not in (None, "good")]
    assert len(confirmed) == 6
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for s in confirmed:  # their label leaves them out already; the operators say so too
        verdict = Feedback(frame_id=s.frame_id, camera_id=s.camera_id, verdict="confirmed_defect", at_ns=time.time_ns())
        producer.send(topics.feedback, key=s.frame_id.encode(), value=verdict.to_json()).get(30)
    producer.close()

    before = artifact_io.load(model)
    env = {**os.environ, **topics.env(), "INSPECTOR_MODEL__PATH": str(model)}
    done = subprocess.run([sys.executable, "-m", "inspector", "calibrate", "--from-line", "--window-minutes", "10",
                           "--target-far", "0.05"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "6 frames confirmed defective" in done.stdout, done.stdout
    after = artifact_io.load(model)
    assert after.model_version.startswith(f"{before.model_version}+line.")
    cameras = after.calibration.camera_thresholds if after.calibration else {}
    assert set(cameras) == {"cam-normal", "cam-bright"}
    assert cameras["cam-bright"] > cameras["cam-normal"]  # its light raised every score
    normal_scores = np.array([s.score for s in published if s.camera_id == "cam-normal" and s.label == "good"])
    assert cameras["cam-normal"] < normal_scores.max() * 1.0001  # a quantile of its good frames, not the defects'
    assert after.threshold == before.threshold  # the default stays

    deadline = time.monotonic() + 60  # the worker polls its model file every second
    while threshold_metric(worker, "cam-bright") != pytest.approx(cameras["cam-bright"]):
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.5)
    # The next frames of the bright camera are scored against its own threshold.
    more = brighter(planned_stream(producer_settings(seed=74), n_frames=10, n_defects=0), 1.35)
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-bright"))
    publisher.publish(ListSource(more))
    publisher.close()
    later = scores.until(lambda records: len(records) >= 2 * N_FRAMES + 16, timeout_s=120)
    newest = [FrameScore.model_validate_json(r.value) for r in later[2 * N_FRAMES + 6:]]
    assert len(newest) == 10 and all(s.thr == pytest.approx(cameras["cam-bright"]) for s in newest)
