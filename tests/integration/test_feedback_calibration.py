"""`inspector calibrate --feedback` on a real broker: the frames operators confirmed as false alarms are fetched
from the frames topic by their origin and join the good images, so the re-set threshold rises towards them; frames
whose latest verdict is "confirmed defect", or that are no longer retained, are left out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer

from inspector.contracts import Feedback
from inspector.model import artifact as artifact_io
from producers.synthetic import planned_stream

from .conftest import producer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_confirmed_false_alarms_from_kafka_raise_the_threshold(topics, default_model_path, tmp_path):
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    for i, f in enumerate(planned_stream(producer_settings(seed=61), n_frames=60, n_defects=0)):
        (good_dir / f"good-{i:03d}.jpg").write_bytes(f.jpeg)
    # Frames an operator called false alarms: defect renderings here, e.g. a harmless label the line accepts.
    flagged = planned_stream(producer_settings(seed=62), n_frames=8, n_defects=8)
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    origins = {}
    for i, f in enumerate(flagged):
        meta = producer.send(topics.frames, key=b"cam-f", value=f.jpeg, headers=[("frame-id", f"fa-{i}".encode())],
                             partition=0).get(30)
        origins[f"fa-{i}"] = f"{topics.frames}/{meta.partition}/{meta.offset}"
    now = time.time_ns()
    verdicts = [Feedback(frame_id=fid, camera_id="cam-f", verdict="false_alarm", at_ns=now, origin=origin)
                for fid, origin in origins.items()]
    verdicts.append(Feedback(frame_id="fa-0", camera_id="cam-f", verdict="confirmed_defect", at_ns=now + 1,
                             origin=origins["fa-0"]))  # corrected: fa-0 is a defect after all
    verdicts.append(Feedback(frame_id="gone", camera_id="cam-f", verdict="false_alarm", at_ns=now,
                             origin=f"{topics.frames}/0/999999"))  # not (or no longer) on the topic
    for v in verdicts:
        producer.send(topics.feedback, key=v.frame_id.encode(), value=v.to_json()).get(30)
    producer.close()

    model = tmp_path / "model.safetensors"
    shutil.copy(default_model_path, model)
    env = {**os.environ, **topics.env()}
    common = [sys.executable, "-m", "inspector", "calibrate", "--model", str(model), "--device", "cpu",
              "--good", str(good_dir)]
    plain = subprocess.run([*common, "--out", str(tmp_path / "plain.safetensors")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    with_feedback = subprocess.run([*common, "--feedback", "--feedback-frames", str(tmp_path / "fa"), "--out",
                                    str(tmp_path / "fb.safetensors")], env=env, capture_output=True, text=True,
                                   timeout=300)
    assert with_feedback.returncode == 0, with_feedback.stderr
    assert "7 confirmed false alarm(s)" in with_feedback.stdout and "1 no longer retained" in with_feedback.stdout
    assert sorted(p.name.split("-", 3)[3] for p in (tmp_path / "fa").iterdir()) == [
        f"fa-{i}.jpg" for i in range(1, 8)]

    before = artifact_io.load(tmp_path / "plain.safetensors").threshold
    after = artifact_io.load(tmp_path / "fb.safetensors").threshold
    assert after > before
