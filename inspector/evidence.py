"""What an operator sees of an alert: the frame with its difference map as a heat map and the defect box drawn
in (a small JPEG), plus the raw map quantised to uint8 (a small PNG), as one record of the evidence topic.

No torch and no Kafka here: the worker renders in a thread of its own and publishes the record; the UI and
`inspector calibrate --feedback` read it back with `from_record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.contracts import (
    H_CAMERA_ID,
    H_CONTENT_TYPE,
    H_EVIDENCE_MAP,
    H_EVIDENCE_MAP_SCALE,
    H_FRAME_ID,
    H_SCHEMA,
    JPEG_CONTENT_TYPE,
    SCHEMA_VERSION,
    Box,
    Headers,
    header_value,
)
from inspector.decode.jpeg import jpeg_dimensions
from inspector.errors import BadFrame

MAX_JPEG_BYTES = 30_000  # the evidence image's budget: 1.5 frames' worth at most, on a topic kept for days
MAX_SIDE = 320  # pixels: enough to see a bruise on a phone, small enough for the budget at a fair quality
MAP_SIDE = 64  # the quantised map's side at most: 4 KB raw, for re-thresholding, not for looking at
_QUALITIES = (80, 65, 50, 35)  # tried in order until the JPEG fits MAX_JPEG_BYTES
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class Evidence:
    """One alert's evidence: the annotated JPEG and the quantised map (value = q / 255 * map_scale)."""

    jpeg: bytes
    map_png: bytes
    map_scale: float

    def anomaly_map(self) -> np.ndarray:
        """The quantised map back as float32 in the model's units, (h, w) at most MAP_SIDE square."""
        q = cv2.imdecode(np.frombuffer(self.map_png, np.uint8), cv2.IMREAD_UNCHANGED)
        if q is None or q.ndim != 2:
            raise BadFrame("undecodable", "evidence map is not a greyscale PNG")
        return q.astype(np.float32) * np.float32(self.map_scale / 255)


def map_scale(anomaly_map: np.ndarray, pixel_threshold: float) -> float:
    """The map value shown at full heat: twice the pixel threshold, so that the threshold sits mid-scale and a
    colour means the same on every frame; the map's own maximum when the model has no pixel threshold."""
    if math.isfinite(pixel_threshold) and pixel_threshold > 0:
        return 2.0 * pixel_threshold
    peak = float(np.max(anomaly_map)) if anomaly_map.size else 0.0
    return peak if peak > 0 else 1.0


def render(jpeg: bytes, anomaly_map: np.ndarray, pixel_threshold: float, box: Box | None) -> Evidence:
    """The evidence of one alert from its frame's JPEG bytes and its (h, w) float difference map.

    Raises BadFrame when the frame does not decode (it passed validation, so only a decoder bug gets here)."""
    frame_h, frame_w = jpeg_dimensions(jpeg)
    # A large frame is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg itself: most of its cost is skipped.
    reduce = max((f for f in (1, 2, 4, 8) if max(frame_h, frame_w) // f >= MAX_SIDE), default=1)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), _REDUCED[reduce])
    if bgr is None:
        raise BadFrame("undecodable", "frame does not decode for its evidence")
    shrink = min(1.0, MAX_SIDE / max(frame_h, frame_w))
    out_w, out_h = max(1, round(frame_w * shrink)), max(1, round(frame_h * shrink))
    if bgr.shape[:2] != (out_h, out_w):
        bgr = cv2.resize(bgr, (out_w, out_h), interpolation=cv2.INTER_AREA)
    scale = map_scale(anomaly_map, pixel_threshold)
    heat = np.clip(anomaly_map.astype(np.float32) / scale, 0.0, 1.0)  # (h, w) in [0, 1]
    heat = cv2.resize(heat, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    alpha = (0.65 * heat)[..., None]  # (H, W, 1): cool regions leave the frame as it was
    shown = (bgr.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
    if box is not None:
        sx, sy = out_w / frame_w, out_h / frame_h
        corner0 = (int(box.x0 * sx), int(box.y0 * sy))
        corner1 = (max(corner0[0], math.ceil(box.x1 * sx) - 1), max(corner0[1], math.ceil(box.y1 * sy) - 1))
        cv2.rectangle(shown, corner0, corner1, (255, 255, 255), 2)
        cv2.rectangle(shown, corner0, corner1, (0, 0, 0), 1)
    return Evidence(_jpeg_within_budget(shown), _quantised_png(anomaly_map, scale), scale)


def _jpeg_within_budget(bgr: np.ndarray) -> bytes:
    for quality in _QUALITIES:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(buf) <= MAX_JPEG_BYTES:
            return buf.tobytes()
    # A noisy frame at 320 px over budget even at the lowest quality: halve it until it fits.
    half = cv2.resize(bgr, (max(1, bgr.shape[1] // 2), max(1, bgr.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    return _jpeg_within_budget(half)


def _quantised_png(anomaly_map: np.ndarray, scale: float) -> bytes:
    h, w = anomaly_map.shape
    side = max(h, w)
    small: np.ndarray = anomaly_map.astype(np.float32)
    if side > MAP_SIDE:
        small = cv2.resize(small, (max(1, w * MAP_SIDE // side), max(1, h * MAP_SIDE // side)),
                           interpolation=cv2.INTER_AREA)
    q = np.round(np.clip(small / scale, 0.0, 1.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", q)
    assert ok  # a uint8 greyscale array always encodes
    return buf.tobytes()


def to_record(evidence: Evidence, frame_id: str, camera_id: str) -> tuple[str, bytes, Headers]:
    """The evidence topic's record -> (key = frame id, value = the JPEG, headers)."""
    return frame_id, evidence.jpeg, [
        (H_SCHEMA, str(SCHEMA_VERSION).encode()),
        (H_FRAME_ID, frame_id.encode()),
        (H_CAMERA_ID, camera_id.encode()),
        (H_CONTENT_TYPE, JPEG_CONTENT_TYPE.encode()),
        (H_EVIDENCE_MAP_SCALE, repr(evidence.map_scale).encode()),
        (H_EVIDENCE_MAP, evidence.map_png),
    ]


def from_record(value: bytes | None, headers: Headers | None) -> Evidence:
    """An evidence record back; BadFrame when it is not one (the topic is read by untrusting consumers)."""
    png = next((v for k, v in headers or [] if k == H_EVIDENCE_MAP), None)
    scale_text = header_value(headers, H_EVIDENCE_MAP_SCALE)
    if not value or not png or scale_text is None:
        raise BadFrame("missing_header", "not an evidence record")
    try:
        scale = float(scale_text)
    except ValueError:
        raise BadFrame("malformed_header", H_EVIDENCE_MAP_SCALE) from None
    if not (math.isfinite(scale) and scale > 0):
        raise BadFrame("malformed_header", H_EVIDENCE_MAP_SCALE)
    return Evidence(value, png, scale)
