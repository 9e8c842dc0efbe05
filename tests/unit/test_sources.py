"""Frame sources read real files with OpenCV; the producer CLI fails with one line on a bad target."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from inspector.errors import ConfigError
from inspector.settings import ProducerSettings
from producers.base import encode_jpeg
from producers.files import CaptureSource, FolderSource
from producers.synthetic import SyntheticSource, planned_stream


def test_folder_source_reads_images_with_their_folder_as_label(tiny_dataset):
    frames = list(FolderSource(tiny_dataset / "test").frames())
    labels = {f.label for f in frames}
    assert len(frames) == 8 + 6 * 2 and "good" in labels and "rotten" in labels
    assert all(f.image.ndim == 3 and f.image.dtype == np.uint8 for f in frames)


def test_video_source_reads_every_frame_and_can_loop(tmp_path):
    path = tmp_path / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    frames = list(CaptureSource(str(path)).frames())
    assert len(frames) == 5 and frames[0].image.shape == (48, 64, 3)
    looping = CaptureSource(str(path), loop=True)
    it = looping.frames()
    assert len([next(it) for _ in range(12)]) == 12
    looping.close()


def test_missing_targets_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError):
        FolderSource(tmp_path / "nope")
    with pytest.raises(ConfigError):
        CaptureSource(str(tmp_path / "nope.mp4"))
    done = subprocess.run([sys.executable, "-m", "producers", "folder", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "folder not found" in done.stderr


def test_synthetic_source_defect_share_and_edge_resize():
    settings = ProducerSettings(defect_rate=0.5, seed=3, width=128, height=96)
    frames = SyntheticSource(settings, size=64).frames()
    labels = [next(frames).label for _ in range(200)]
    assert 60 < sum(label != "good" for label in labels) < 140
    jpeg = encode_jpeg(np.zeros((64, 64, 3), np.uint8), settings)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)
    planned = planned_stream(ProducerSettings(seed=1), 30, 6, size=64)
    assert sum(f.label != "good" for f in planned) == 6 and all(f.jpeg for f in planned)
