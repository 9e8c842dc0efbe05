"""Decode processes: the same pixels as decoding in-process, and bad frames named, not fatal."""

import cv2
import numpy as np

from bench.decode_pool import DecodePool
from inspector.decode.jpeg import decode_jpeg
from inspector.errors import BadFrame

LIMITS = {"max_bytes": 1 << 20, "max_pixels": 1 << 22}


def _jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    shapes = [(48, 64, 3), (32, 32, 3), (100, 80, 3)]
    return [cv2.imencode(".jpg", cv2.GaussianBlur(rng.integers(0, 255, shapes[i % 3], dtype=np.uint8), (9, 9), 3))[1]
            .tobytes() for i in range(n)]


def test_processes_decode_like_the_worker_and_name_bad_frames():
    jpegs = _jpegs(9)
    jpegs[4] = b"not a jpeg"
    jpegs[7] = jpegs[7][: len(jpegs[7]) // 2]  # truncated
    with DecodePool(2, 32, 16, slots=2, **LIMITS) as pool:
        first = pool.submit(jpegs)
        second = pool.submit(jpegs[:3])  # another slot: must not overwrite the first job's images
        images, outcomes = first.result()
        assert images.shape == (9, 32, 32, 3)
        assert [o.reason for o in outcomes if isinstance(o, BadFrame)] == ["not_jpeg", "truncated"]
        for i, outcome in enumerate(outcomes):
            if not isinstance(outcome, BadFrame):
                expected, hw = decode_jpeg(jpegs[i], size=32, **LIMITS)
                assert outcome == hw
                assert np.array_equal(images[i], expected)
        assert second.result()[0].shape == (3, 32, 32, 3)
