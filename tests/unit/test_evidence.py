"""Evidence rendering: the annotated JPEG stays within budget and shows the heat where the map is hot, the box
is drawn where it says, and the quantised map reads back to the map within one quantum."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector import evidence
from inspector.contracts import Box
from inspector.errors import BadFrame


def _frame(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (60, 170, 200), np.uint8)  # a banana-ish yellow, BGR
    img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _hot_map(side: int = 64, pixel_threshold: float = 0.1) -> np.ndarray:
    m = np.full((side, side), pixel_threshold * 0.1, np.float32)
    m[8:24, 40:56] = pixel_threshold * 3  # the defect: top right
    return m


def _decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_heat_is_drawn_where_the_map_is_hot_and_not_elsewhere():
    frame = _frame(256, 256)
    ev = evidence.render(frame, _hot_map(), 0.1, None)
    shown, original = _decode(ev.jpeg).astype(np.int16), _decode(frame).astype(np.int16)
    assert shown.shape == original.shape  # 256 px is under MAX_SIDE: kept at its size
    hot = np.abs(shown[32:96, 160:224] - original[32:96, 160:224]).mean()
    cool = np.abs(shown[160:240, 20:100] - original[160:240, 20:100]).mean()
    assert hot > 40 > 10 > cool


def test_the_box_is_drawn_at_its_frame_coordinates_after_downscaling():
    frame = _frame(960, 1280)
    box = Box(x0=640, y0=480, x1=960, y1=720, area_fraction=0.0625)
    ev = evidence.render(frame, np.zeros((64, 64), np.float32), 0.1, box)
    shown = _decode(ev.jpeg)
    assert max(shown.shape[:2]) == evidence.MAX_SIDE and shown.shape[:2] == (240, 320)
    # Scaled by 1/4: the box's left edge at x=160, from y=120 to 180, white-and-black over the yellow frame.
    near_edge = shown[125:175, 157:164].min(axis=2)  # (rows, 7): a white pixel has all channels high
    inside = shown[125:175, 185:195].min(axis=2)
    assert (near_edge.max(axis=1) > 200).all() and (near_edge.min(axis=1) < 40).all()
    assert inside.max() < 120
    assert shown[125:175, 120:150].min(axis=2).max() < 120  # left of the box: no line


def test_a_noisy_large_frame_still_fits_the_budget():
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (2000, 2000, 3), np.uint8)  # incompressible: the worst case for JPEG
    frame = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    ev = evidence.render(frame, rng.random((256, 256), np.float32), 0.5, None)
    assert len(ev.jpeg) <= evidence.MAX_JPEG_BYTES
    assert _decode(ev.jpeg).shape[2] == 3


def test_the_quantised_map_reads_back_within_one_quantum_and_is_small():
    m = np.random.default_rng(1).random((64, 64), np.float32) * 0.2
    ev = evidence.render(_frame(128, 128), m, 0.1, None)
    back = ev.anomaly_map()
    assert back.shape == (64, 64)
    assert ev.map_scale == pytest.approx(0.2)
    assert np.abs(back - np.clip(m, 0, ev.map_scale)).max() <= ev.map_scale / 255 / 2 + 1e-6
    assert len(ev.map_png) < 64 * 64 + 512  # at most about the raw uint8 map


def test_a_model_map_larger_than_map_side_is_downsampled_and_values_over_scale_saturate():
    m = np.zeros((256, 256), np.float32)
    m[:128] = 1.0  # ten times the scale
    ev = evidence.render(_frame(256, 256), m, 0.05, None)
    back = ev.anomaly_map()
    assert back.shape == (evidence.MAP_SIDE, evidence.MAP_SIDE)
    assert back[:30].min() == pytest.approx(0.1) and back[34:].max() == 0.0


def test_without_a_pixel_threshold_the_map_is_scaled_to_its_peak():
    m = np.zeros((64, 64), np.float32)
    m[10, 10] = 0.3
    assert evidence.map_scale(m, float("inf")) == pytest.approx(0.3)
    assert evidence.map_scale(np.zeros((4, 4), np.float32), float("inf")) == 1.0


def test_the_record_round_trips_and_a_foreign_record_is_refused():
    ev = evidence.render(_frame(128, 128), _hot_map(), 0.1, None)
    key, value, headers = evidence.to_record(ev, "frame-7", "cam-<b>")
    assert key == "frame-7" and value == ev.jpeg
    assert evidence.from_record(value, headers) == ev
    with pytest.raises(BadFrame):
        evidence.from_record(value, [("frame-id", b"frame-7")])
    bad_scale = [(k, b"nan" if k == "evidence-map-scale" else v) for k, v in headers]
    with pytest.raises(BadFrame):
        evidence.from_record(value, bad_scale)


def test_an_undecodable_frame_raises_bad_frame():
    with pytest.raises(BadFrame):
        evidence.render(b"\xff\xd8 not really", _hot_map(), 0.1, None)
