"""The producer without a broker: the cameras file, the byte-budgeted send buffer, a live source's newest-frame
handover and its reconnect logging, and the CLI's one-line errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inspector.errors import ConfigError
from inspector.settings import ProducerSettings
from producers.cameras import load_cameras, open_source
from producers.live import LiveSource
from producers.sender import OutgoingFrame, SendBuffer
from tests.live_cameras import MjpegCamera, stamped_image, stamped_ms

# --- the cameras file ---------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_cameras_files_resolve_to_the_same_settings(tmp_path):
    video = write(tmp_path, "belt.mp4", "")
    yaml_file = write(tmp_path, "cameras.yaml", f"""
defaults: {{fps: 10, jpeg_quality: 80}}
cameras:
  - {{id: top, source: "rtsp://10.0.0.21/stream1"}}
  - {{id: side, source: "http://10.0.0.22/video.mjpg", fps: 5, width: 320, height: 240, deadline_ms: 250}}
  - {{id: usb, source: 0}}
  - {{id: replay, source: {video}, loop: true}}
""")
    toml_file = write(tmp_path, "cameras.toml", f"""
[defaults]
fps = 10
jpeg_quality = 80

[[cameras]]
id = "top"
source = "rtsp://10.0.0.21/stream1"

[[cameras]]
id = "side"
source = "http://10.0.0.22/video.mjpg"
fps = 5
width = 320
height = 240
deadline_ms = 250

[[cameras]]
id = "usb"
source = 0

[[cameras]]
id = "replay"
source = "{video}"
loop = true
""")
    base = ProducerSettings(width=256, height=256, deadline_ms=300)
    from_yaml, from_toml = load_cameras(yaml_file, base), load_cameras(toml_file, base)
    assert from_yaml == from_toml
    top, side, usb, replay = from_yaml
    assert (top.settings.camera_id, top.settings.fps, top.settings.jpeg_quality, top.settings.width) == \
        ("top", 10, 80, 256)
    assert (side.settings.fps, side.settings.width, side.settings.height, side.settings.deadline_ms) == \
        (5, 320, 240, 250)
    assert usb.source == 0 and replay.loop and not top.loop


@pytest.mark.parametrize(("text", "message"), [
    ("cameras:\n  - {id: a, source: 0}\n  - {id: b, source: 1, fps: -3}\n",
     r"camera 2 \(b\): fps: Input should be greater than or equal to 0"),
    ("cameras:\n  - {id: a, source: 0}\n  - {id: a, source: 1}\n", "camera id 'a' appears twice"),
    ("cameras:\n  - {id: a, source: 0, colour: red}\n", r"camera 1 \(a\): colour: Extra inputs"),
    ("cameras:\n  - {source: 0}\n", r"camera 1: id: Field required"),
    ("cameras:\n  - {id: a, source: 'ftp://x/y'}\n", r"camera a: ftp:// is not a source"),
    ("cameras:\n  - {id: a, source: /no/such/belt.mp4}\n", "camera a: no such video file or folder"),
    ("cameras: []\n", "cameras: List should have at least 1 item"),
    ("cameras:\n  - {id: a, source: 0\n", "not valid YAML at line"),
])
def test_a_bad_entry_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_cameras(write(tmp_path, "cameras.yaml", text), ProducerSettings())
    assert "\n" not in str(caught.value)


def test_the_cli_stops_on_a_bad_cameras_file_with_one_line(tmp_path):
    path = write(tmp_path, "cameras.yaml", "cameras:\n  - {id: cam-1, source: 'rtsp://10.0.0.1/s'}\n"
                                           "  - {id: cam-2, source: 0, fps: -3}\n")
    for args in (["--cameras", str(path)], ["--cameras", str(tmp_path / "none.yaml")], []):
        done = subprocess.run([sys.executable, "-m", "producers", *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: "), done.stderr


# --- the send buffer ----------------------------------------------------------------------------------------


def frame(size: int, dropped: list[int], tag: int, droppable: bool = True) -> OutgoingFrame:
    return OutgoingFrame(None, bytes(size), [], on_ack=lambda: None, on_error=lambda _e: None,
                         on_drop=lambda: dropped.append(tag), droppable=droppable)


def put(buffer: SendBuffer, item: OutgoingFrame) -> None:
    for gone in buffer.put(item):
        gone.on_drop()


def test_the_buffer_drops_the_oldest_live_frames_past_its_budget():
    buffer, dropped = SendBuffer(budget_bytes=1000, in_flight_cap=250), []
    for i in range(8):
        put(buffer, frame(300, dropped, i))
    assert dropped == [0, 1, 2, 3, 4] and buffer.held_bytes == 900
    taken = buffer.take()  # handed to Kafka: in flight, and still counted against the budget
    assert taken is not None and buffer.in_flight_bytes == 300
    put(buffer, frame(300, dropped, 8))
    assert dropped == [0, 1, 2, 3, 4, 6] and buffer.held_bytes == 900  # 6: the oldest still waiting
    buffer.settled(taken)
    assert buffer.held_bytes == 600 and buffer.in_flight_bytes == 0


def test_a_file_frame_waits_for_room_and_is_never_dropped():
    buffer, dropped = SendBuffer(budget_bytes=1000, in_flight_cap=10_000), []
    for i in range(3):
        buffer.put(frame(300, dropped, i, droppable=False))
    waiting = threading.Thread(target=buffer.put, args=(frame(300, dropped, 3, droppable=False),))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive()  # 1200 bytes would be over the budget
    for gone in buffer.put(frame(300, dropped, 4)):  # a live frame: it is the one dropped, not a file's
        gone.on_drop()
    assert dropped == [4]
    buffer.settled(buffer.take() or pytest.fail("nothing to take"))
    waiting.join(timeout=10)
    assert not waiting.is_alive() and buffer.held_bytes == 900 and dropped == [4]


# --- live sources -------------------------------------------------------------------------------------------


def test_the_stamp_survives_jpeg_and_resizing():
    import cv2
    import numpy as np

    image = stamped_image(3_141_592_653)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])[1]
    small = cv2.resize(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), (256, 256))
    assert stamped_ms(small) == 3_141_592_653


def test_a_live_source_hands_over_each_grab_at_most_once_and_counts_the_rest():
    camera = MjpegCamera(fps=30)
    source = open_source(load_cameras_entry(camera.url))
    try:
        assert isinstance(source, LiveSource)
        frames = source.frames()
        taken = [next(frames) for _ in range(5)]
        stamps = [stamped_ms(f.image) for f in taken]
        assert stamps == sorted(set(stamps))  # each newer than the one before
        assert all(f.captured_ns for f in taken) and source.up
        threading.Event().wait(0.5)  # frames keep coming while nobody takes them: ~15 at 30 frames/s
        taken.append(next(frames))
        assert taken[-1].skipped >= 5
        # Every grab so far was taken or counted as skipped (bar those since the last one taken).
        assert sum(f.skipped + 1 for f in taken) <= source._grabs <= sum(f.skipped + 1 for f in taken) + 3
    finally:
        source.close()
        camera.close()


def load_cameras_entry(url: str):
    from producers.cameras import CameraConfig

    return CameraConfig(ProducerSettings(camera_id="cam-live", stall_s=2), url)


def test_an_unreachable_camera_logs_down_and_reconnecting_once_and_keeps_trying(caplog):
    from inspector.kafka.local_broker import free_port

    settings = ProducerSettings(camera_id="cam-gone", reconnect_min_s=0.05, reconnect_max_s=0.2, stall_s=1)
    with caplog.at_level(logging.DEBUG, logger="producers.live"):
        source = LiveSource(f"rtsp://127.0.0.1:{free_port()}/cam", settings)
        try:
            for _ in range(200):  # until six tries have failed (about 1 s), or 20 s
                if sum("try" in r.getMessage() for r in caplog.records) >= 6:
                    break
                threading.Event().wait(0.1)
        finally:
            source.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w.split(":")[0].split(" ")[2] for w in warnings] == ["down", "reconnecting"], warnings
    assert not source.up and source.reconnects == 0
