"""The synthetic belt: objects in consecutive frames, whole bananas, arrivals consistent with the line geometry,
determinism; the belt camera's frames and truth; and scoring a run's pulses against the truth."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pytest

from inspector.contracts import FrameMeta
from inspector.demo import pace_hint
from inspector.errors import ConfigError
from inspector.settings import KafkaSettings, ProducerSettings
from inspector.sorter.belt_report import score_ejections
from inspector.sorter.line_file import CameraGeometry, Line, parse_line
from inspector.synthetic.belt import BeltFrame, BeltObject, BeltStream, prerender, read_truth, write_truth
from producers.__main__ import run_belt
from producers.base import Publisher
from producers.belt import BeltSource
from producers.sender import FrameSender, OutgoingFrame

GEOMETRY = {"belt_speed_m_s": 0.256, "metres_per_pixel": 0.001, "ejector_distance_m": 0.154,
            "actuation_latency_ms": 15, "pulse_ms": 40}


def _line(**overrides: object) -> Line:
    return parse_line({"defaults": {**GEOMETRY, **overrides}, "lanes": [
        {"id": "lane-1", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-1"}]},
        {"id": "lane-2", "actuator": {"protocol": "log"}, "cameras": [{"id": "cam-2", "direction": "-y"}]}]})


def _camera(camera_id: str = "cam-1", **overrides: object) -> CameraGeometry:
    camera = _line(**overrides).camera(camera_id)
    assert camera is not None
    return camera


def _frames(stream: BeltStream, n: int) -> list[BeltFrame]:
    return list(itertools.islice(stream.frames(), n))


def _box_centre(region: np.ndarray) -> tuple[float, float]:
    """Bounding-box centre of a 0/255 mask, in pixel edges (as an alert's box is)."""
    cols, rows = np.flatnonzero(region.any(axis=0)), np.flatnonzero(region.any(axis=1))
    return (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2


# ---- the plan and its rendering -----------------------------------------------------------------------------


def test_each_object_is_seen_in_two_to_five_consecutive_frames_and_every_frame_shows_one() -> None:
    stream = BeltStream(_camera(), fps=15, objects_per_second=4, defect_rate=0.2, seed=1)
    frames = _frames(stream, 300)
    objects = stream.objects(300)
    assert [f.index for f in frames] == list(range(300))
    assert [i for obj in objects for i in obj.frames] == list(range(300))  # in order, each frame once
    for obj in objects[:-1]:  # the last one may be cut short by the end of the run
        assert 2 <= len(obj.frames) <= 5
        assert obj.frames == tuple(range(obj.frames[0], obj.frames[-1] + 1))
    assert all(f.offset_ns == round(f.index * 1e9 / 15) for f in frames)
    assert 0.05 < sum(obj.defective for obj in objects) / len(objects) < 0.4


@pytest.mark.parametrize("camera_id", ["cam-1", "cam-2"])  # the belt along +x, and along -y
def test_the_whole_banana_is_inside_every_frame(camera_id: str) -> None:
    stream = BeltStream(_camera(camera_id), fps=15, objects_per_second=4, defect_rate=0.5, seed=2)
    for frame in _frames(stream, 60):
        fruit = frame.render().fruit
        assert fruit.any()
        assert not (fruit[:2].any() or fruit[-2:].any() or fruit[:, :2].any() or fruit[:, -2:].any())


@pytest.mark.parametrize("camera_id", ["cam-1", "cam-2"])
def test_truth_arrival_agrees_with_the_line_geometry_in_every_frame_of_an_object(camera_id: str) -> None:
    geometry = _camera(camera_id)
    stream = BeltStream(geometry, fps=15, objects_per_second=4, defect_rate=0.5, seed=3)
    # One pixel of belt, in time: the rendered masks are whole pixels, so their box centres are within one of
    # the exact reference point.
    pixel_ns = geometry.metres_per_pixel / geometry.belt_speed_m_s * 1e9
    seen = {"good": 0, "defective": 0}
    for frame in _frames(stream, 90):
        truth = frame.object
        # The physics: the reference point moves with the belt, so every frame gives the same arrival.
        assert abs(geometry.arrival_ns(frame.offset_ns, *frame.reference_px) - truth.arrival_ns) <= 1e6
        # The picture: the reference point is the centre of the banana's box, defect or not.
        scene = frame.render()
        drawn = _box_centre(scene.fruit)
        assert abs(geometry.arrival_ns(frame.offset_ns, *drawn) - truth.arrival_ns) <= pixel_ns
        assert np.hypot(drawn[0] - frame.reference_px[0], drawn[1] - frame.reference_px[1]) <= 1.0
        if frame.index == truth.frames[0]:
            assert frame.reference_px == (truth.target_x_px, truth.target_y_px)
        seen["defective" if truth.defective else "good"] += 1
    assert seen["good"] and seen["defective"]


def test_the_banana_moves_at_the_belt_speed_and_downstream() -> None:
    geometry = _camera()
    stream = BeltStream(geometry, fps=15, objects_per_second=4, seed=4)
    first, second = _frames(stream, 2)
    assert first.object == second.object
    step = geometry.belt_speed_m_s / geometry.metres_per_pixel * (second.offset_ns - first.offset_ns) / 1e9
    assert second.params.centre[0] - first.params.centre[0] == pytest.approx(step)
    assert second.params.centre[1] == first.params.centre[1]
    assert second.params.noise_offset != first.params.noise_offset


def test_the_same_seed_plans_and_renders_the_same_run() -> None:
    a, b = (BeltStream(_camera(), fps=15, defect_rate=0.3, seed=5) for _ in range(2))
    c = BeltStream(_camera(), fps=15, defect_rate=0.3, seed=6)
    assert a.objects(60) == b.objects(60) != c.objects(60)
    for fa, fb in zip(_frames(a, 8), _frames(b, 8), strict=True):
        assert np.array_equal(fa.render().image, fb.render().image)


def test_a_belt_that_cannot_show_its_objects_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="fps"):
        BeltStream(_camera(), fps=5, objects_per_second=4)
    with pytest.raises(ConfigError, match="no banana stays"):  # 2.5 frame widths of belt per object
        BeltStream(_camera(belt_speed_m_s=2.56), fps=30, objects_per_second=4).objects(1)


def test_prerender_encodes_the_plan_and_truth_survives_a_file(tmp_path: Path) -> None:
    stream = BeltStream(_camera(), fps=15, defect_rate=0.3, seed=7)
    recording = prerender(stream, 20, jpeg_quality=90)
    assert [f.plan.index for f in recording.frames] == list(range(20))
    image = cv2.imdecode(np.frombuffer(recording.frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (256, 256, 3)
    assert list(recording.objects) == stream.objects(20)
    write_truth(tmp_path / "truth.jsonl", recording.objects)
    assert read_truth(tmp_path / "truth.jsonl") == list(recording.objects)


# ---- the belt camera ----------------------------------------------------------------------------------------


class _RecordingSender:
    """Stands in for the FrameSender: every record is acknowledged at once."""

    def __init__(self) -> None:
        self.frames: list[OutgoingFrame] = []

    def submit(self, frame: OutgoingFrame) -> None:
        self.frames.append(frame)
        frame.on_ack()

    def flush(self, timeout_s: float | None = None) -> None:
        """Nothing is ever pending."""


@pytest.mark.parametrize("prerendered", [False, True])
def test_belt_source_publishes_planned_capture_times_labels_and_object_ids(prerendered: bool) -> None:
    settings = ProducerSettings(fps=0, count=12, defect_rate=0.3, seed=8)
    # fps=0 lets the publisher send as fast as it can; the plan keeps its own 15 fps capture times.
    source = BeltSource(_camera(), settings.model_copy(update={"fps": 15}), prerender_frames=12 if prerendered else 0)
    sender = _RecordingSender()
    Publisher(KafkaSettings(), settings, sender=cast(FrameSender, sender)).publish(source)
    metas = [FrameMeta.from_headers(f.headers) for f in sender.frames]
    assert len(metas) == 12 and source.start_ns is not None
    assert [m.captured_ns - source.start_ns for m in metas] == [round(i * 1e9 / 15) for i in range(12)]
    truth = source.objects()
    by_id = {obj.object_id: obj for obj in truth}
    for meta in metas:
        assert meta.object_id is not None and meta.sequence in by_id[meta.object_id].frames
        assert meta.label == by_id[meta.object_id].label
    plan = BeltStream(_camera(), fps=15, defect_rate=0.3, seed=8).objects(12)
    assert [obj.arrival_ns - source.start_ns for obj in truth] == [obj.arrival_ns for obj in plan]
    assert [obj.frames for obj in truth] == [obj.frames for obj in plan]


def test_a_rendered_belt_camera_says_so_and_waits_for_the_start_file(tmp_path: Path) -> None:
    settings = ProducerSettings(camera_id="cam-1", fps=0, count=4, seed=8)
    source = BeltSource(_camera(), settings.model_copy(update={"fps": 15}), prerender_frames=4)
    sender = _RecordingSender()
    start, ready = tmp_path / "start", tmp_path / "start.cam-1.ready"
    seen_while_waiting: list[int] = []

    def starter() -> None:  # the harness: waits for the camera's word, then starts it
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        seen_while_waiting.append(len(sender.frames))
        start.touch()

    harness = threading.Thread(target=starter)
    harness.start()
    run_belt(source, Publisher(KafkaSettings(), settings, sender=cast(FrameSender, sender)), None, start)  # signals
    harness.join()
    assert ready.exists() and seen_while_waiting == [0] and len(sender.frames) == 4


def test_the_belt_command_needs_a_line_file_and_a_camera_of_it(tmp_path: Path) -> None:
    line_file = tmp_path / "line.yaml"
    line_file.write_text("defaults: {belt_speed_m_s: 0.256, metres_per_pixel: 0.001, ejector_distance_m: 0.154}\n"
                         "lanes: [{id: lane-1, actuator: {protocol: log}, cameras: [{id: cam-1}]}]\n")
    for args, message in ((["belt"], "needs --line"),
                          (["belt", "--line", str(line_file), "--camera-id", "cam-9"], "no lane has camera cam-9"),
                          (["belt", "--line", str(line_file), "--prerender"], "--prerender needs"),
                          (["belt", "--line", str(line_file), "--count", "3", "--start-file", str(tmp_path / "go")],
                           "--start-file needs --prerender")):
        done = subprocess.run([sys.executable, "-m", "producers", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr and message in done.stderr


# ---- scoring a run ------------------------------------------------------------------------------------------


def _object(k: int, arrival_ms: float, label: str = "good", lane: str = "lane-1") -> BeltObject:
    return BeltObject(f"o{k}", "cam-1" if lane == "lane-1" else "cam-2", lane, label, (k,), 128.0, 128.0,
                      round(arrival_ms * 1e6))


def test_pulses_are_matched_to_the_nearest_object_and_scored() -> None:
    line = _line()  # actuation latency 15 ms, pulse 40 ms: on time within 20 ms
    objects = [
        _object(0, 1000, "bruise"),  # hit 5 ms late: on time
        _object(1, 1250, "mould"),  # hit 30 ms early: ejected off time
        _object(2, 1500, "cut"),  # its alert came too late
        _object(3, 1750, "rotten"),  # missed
        _object(4, 2000),  # good, ejected (a false ejection), and a second pulse on it
        _object(5, 2250),  # good, passed
        _object(6, 1000, "bruise", lane="lane-2"),  # hit 2 ms early, in the other lane
    ]
    ms = 1_000_000
    pulses = {"lane-1": [1000 * ms - 15 * ms + 5 * ms, 1250 * ms - 15 * ms - 30 * ms,
                         2000 * ms - 15 * ms, 2000 * ms - 15 * ms + 60 * ms,
                         2375 * ms],  # past half the gap after the last object: hits nothing
              "lane-2": [1000 * ms - 15 * ms - 2 * ms, 5000 * ms]}
    report = score_ejections(objects, pulses, line, late_object_ids={"o2"})
    outcomes = {r.object.object_id: (r.outcome, r.error_ns) for r in report.results}
    assert outcomes == {
        "o0": ("ejected_on_time", 5 * ms), "o1": ("ejected_off_time", -30 * ms), "o2": ("late", None),
        "o3": ("not_ejected", None), "o4": ("ejected_on_time", 0), "o5": ("not_ejected", None),
        "o6": ("ejected_on_time", -2 * ms)}
    assert report.spurious_pulses == 2 and report.repeated_pulses == 1
    assert report.recall == pytest.approx(2 / 5)
    assert report.false_ejection_rate == pytest.approx(1 / 2)
    assert report.fire_error_ms(0.5) == pytest.approx(5.0)  # over the ejected defective: 2, 5 and 30 ms
    assert report.fire_error_ms(0.99) == pytest.approx(29.5)
    last = report.summary_lines()[-1]
    assert "ejection recall 40.0 % (2/5)" in last and "false ejections 50.0 % (1/2)" in last
    assert "p50 5.0 ms, p99 29.5 ms" in last


def test_a_run_without_pulses_ejects_nothing() -> None:
    report = score_ejections([_object(0, 1000, "bruise"), _object(1, 1300)], {}, _line())
    assert [r.outcome for r in report.results] == ["not_ejected", "not_ejected"]
    assert report.recall == 0.0 and report.false_ejection_rate == 0.0
    assert report.summary_lines()[-1] == ("ejection recall 0.0 % (0/1); false ejections 0.0 % (0/1); "
                                          "fire-time error p50 n/a, p99 n/a (0 defective ejected)")


def test_the_demo_says_when_the_machine_could_not_keep_up_with_the_cameras():
    # 25 of 30 frames/s scored and ejections late: the line names the rate and a camera rate this machine holds.
    hint = pace_hint(25.1, late=9, lanes=2, fps=15)
    assert hint is not None and "25.1 of the 30 frames/s" in hint and "--fps 10" in hint
    assert pace_hint(29.5, late=9, lanes=2, fps=15) is None  # kept up: late for another reason
    assert pace_hint(20.0, late=0, lanes=2, fps=15) is None  # behind, yet nothing came late
