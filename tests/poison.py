"""Poison records for the fault tests: every kind of bad frame a worker must dead-letter, drawn by hypothesis.

Each `Poison` carries the dead-letter reasons it may get. Frames are small; `MAX_FRAME_BYTES` is the worker's
`limits.max_frame_bytes` in the test, lowered so that an oversized frame is cheap to make.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import uuid

import cv2
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inspector.contracts import H_CAMERA_ID, H_CAPTURED_NS, H_CONTENT_TYPE, H_FRAME_ID, H_SCHEMA, H_SEQUENCE, FrameMeta

_GOOD_JPEG = cv2.imencode(".jpg", np.full((96, 128, 3), 140, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
MAX_FRAME_BYTES = 256 * 1024


def _sof_offset(jpeg: bytes) -> int:
    """Byte offset of the height field in the SOF0 segment (marker, length, precision, then height, width)."""
    return jpeg.index(b"\xff\xc0") + 5


def _headers(**over: bytes | None) -> list[tuple[str, bytes]]:
    meta = FrameMeta(frame_id=f"poison-{uuid.uuid4().hex[:8]}", camera_id="cam-p", sequence=1,
                     captured_ns=time.time_ns())
    h = dict(meta.to_headers())
    h.update(over)
    return [(k, v) for k, v in h.items() if v is not None]


@dataclasses.dataclass(frozen=True)
class Poison:
    kind: str
    value: bytes | None
    headers: list[tuple[str, bytes]]
    key: bytes | None
    reasons: frozenset[str]  # the dead-letter reasons this record may get


def _is_count(s: str) -> bool:
    try:
        return int(s) >= 0
    except ValueError:
        return False


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


POISON_KINDS = ("empty", "random", "truncated", "bomb", "missing_header", "schema", "not_utf8", "huge_camera",
                "bad_number", "content_type", "oversized")


@st.composite
def poison_records(draw: st.DrawFn, kind: str) -> Poison:
    """One bad record of `kind`: value, headers and key drawn by hypothesis."""
    key = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=64)))
    if kind == "empty":
        return Poison(kind, draw(st.sampled_from([b"", None])), _headers(), key or b"cam-p",
                      frozenset({"empty_value"}))
    if kind == "random":
        value = draw(st.binary(min_size=1, max_size=20_000).filter(lambda b: b[:2] != b"\xff\xd8"))
        return Poison(kind, value, _headers(), key, frozenset({"not_jpeg"}))
    if kind == "truncated":
        cut = draw(st.integers(1, len(_GOOD_JPEG) - 3))
        value = _GOOD_JPEG[:cut]
        assert b"\xff\xd9" not in value
        return Poison(kind, value, _headers(), key, frozenset({"truncated", "undecodable", "not_jpeg"}))
    if kind == "bomb":  # a real JPEG whose start-of-frame declares up to 65535 x 65535 pixels
        h = draw(st.integers(4097, 65535))
        w = draw(st.integers(max(1, 4096 * 4096 // h + 1), 65535))
        i = _sof_offset(_GOOD_JPEG)
        value = _GOOD_JPEG[:i] + struct.pack(">HH", h, w) + _GOOD_JPEG[i + 4:]
        return Poison(kind, value, _headers(), key, frozenset({"too_many_pixels"}))
    if kind == "missing_header":
        required = [H_SCHEMA, H_FRAME_ID, H_CAMERA_ID, H_SEQUENCE, H_CAPTURED_NS]
        gone = draw(st.sets(st.sampled_from(required), min_size=1))
        return Poison(kind, _GOOD_JPEG, _headers(**{k: None for k in gone}), key, frozenset({"missing_header"}))
    if kind == "schema":
        version = draw(st.one_of(st.integers(2, 10**9), st.integers(-10**9, 0)))
        return Poison(kind, _GOOD_JPEG, _headers(**{H_SCHEMA: str(version).encode()}), key,
                      frozenset({"unknown_schema"}))
    if kind == "not_utf8":
        name = draw(st.sampled_from([H_SCHEMA, H_FRAME_ID, H_CAMERA_ID, H_SEQUENCE, H_CAPTURED_NS, "label"]))
        value = draw(st.binary(min_size=1, max_size=64).filter(_not_utf8))
        return Poison(kind, _GOOD_JPEG, _headers(**{name: value}), key, frozenset({"malformed_header"}))
    if kind == "huge_camera":
        camera = draw(st.sampled_from("cé漢")) * draw(st.integers(129, 300_000))
        huge_key = draw(st.booleans())
        return Poison(kind, _GOOD_JPEG, _headers(**{H_CAMERA_ID: camera.encode()}),
                      camera.encode() if huge_key else key, frozenset({"malformed_header"}))
    if kind == "bad_number":  # not a count: words, negative numbers ("-1" is an unknown schema version)
        name = draw(st.sampled_from([H_SEQUENCE, H_CAPTURED_NS, "deadline-ns", H_SCHEMA]))
        text = draw(st.one_of(st.text(min_size=1, max_size=20).filter(lambda s: not _is_count(s)),
                              st.integers(-10**12, -1).map(str)))
        reasons = {"malformed_header", "unknown_schema"} if name == H_SCHEMA else {"malformed_header"}
        return Poison(kind, _GOOD_JPEG, _headers(**{name: text.encode()}), key, frozenset(reasons))
    if kind == "content_type":
        ctype = draw(st.text(max_size=40).filter(lambda s: s not in ("", "image/jpeg")))
        return Poison(kind, _GOOD_JPEG, _headers(**{H_CONTENT_TYPE: ctype.encode()}), key,
                      frozenset({"unsupported_content_type"}))
    assert kind == "oversized"  # a valid JPEG padded past limits.max_frame_bytes
    size = draw(st.integers(MAX_FRAME_BYTES + 1, 3 * MAX_FRAME_BYTES))
    return Poison(kind, _GOOD_JPEG + b"\0" * (size - len(_GOOD_JPEG)), _headers(), key, frozenset({"oversized"}))


def draw_poison(per_kind: int) -> list[Poison]:
    """`per_kind` records of every kind, generated by hypothesis (deterministically); the "test" only collects."""
    drawn: list[Poison] = []
    for kind in POISON_KINDS:

        @settings(max_examples=per_kind, database=None, derandomize=True, phases=[Phase.generate], deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(poison_records(kind))
        def collect(p: Poison) -> None:
            drawn.append(p)

        collect()
    return drawn
