"""JPEG bytes -> (S, S, 3) uint8 RGB on the CPU, with the checks every frame passes first.

Frames are validated before OpenCV sees them: size limit, JPEG magic, and the dimensions declared in the
JPEG header (a decompression bomb declares huge dimensions in a few hundred bytes). No torch here, so
the decode processes of `bench/decode_pool.py` need none of it.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from inspector.errors import BadFrame

# A model's input: the square side, or (height, width) of a tiled model's canvas (inspector.model.tiling).
InputSize = int | tuple[int, int]

# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOF markers.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(height, width) declared by a JPEG's start-of-frame segment; BadFrame if there is none."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise BadFrame("not_jpeg", "missing JPEG start-of-image marker")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise BadFrame("undecodable", f"bad marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if height == 0 or width == 0:
                raise BadFrame("undecodable", "zero image dimension")
            return int(height), int(width)
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
            break
        i += 2 + length
    raise BadFrame("undecodable", "no start-of-frame segment")


def validate_jpeg(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Check a frame before any decoder sees it -> (frame height, frame width); BadFrame otherwise."""
    if not data:
        raise BadFrame("empty_value")
    if len(data) > max_bytes:
        raise BadFrame("oversized", f"{len(data)} bytes > {max_bytes}")
    height, width = jpeg_dimensions(data)
    # Checked here, not at decode: on CUDA the bytes go from validation straight to nvJPEG.
    if height * width > max_pixels:
        raise BadFrame("too_many_pixels", f"{width}x{height}")
    # libjpeg "decodes" a truncated stream by filling the rest with grey; refuse it instead. A few
    # cameras pad after the end-of-image marker, so look for it near the end, not only at the end.
    if b"\xff\xd9" not in data[-64:]:
        raise BadFrame("truncated", "no JPEG end-of-image marker")
    return height, width


def decode_jpeg(data: bytes, *, size: InputSize, max_bytes: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Validate and decode JPEG bytes -> ((h, w, 3) uint8 RGB at the model's input size, (frame height, frame
    width))."""
    height, width = validate_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels)
    out_h, out_w = size_hw(size)
    # libjpeg can decode at 1/2, 1/4, 1/8 scale directly: far cheaper than a full decode then resize.
    shrink = min(height // out_h, width // out_w)
    flag = cv2.IMREAD_COLOR
    if shrink >= 8:
        flag = cv2.IMREAD_REDUCED_COLOR_8
    elif shrink >= 4:
        flag = cv2.IMREAD_REDUCED_COLOR_4
    elif shrink >= 2:
        flag = cv2.IMREAD_REDUCED_COLOR_2
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:
        raise BadFrame("undecodable", str(exc).strip().splitlines()[-1][:120]) from None
    if bgr is None:
        raise BadFrame("undecodable", "OpenCV could not decode the JPEG")
    return to_model_rgb(bgr, size), (height, width)


def size_hw(size: InputSize) -> tuple[int, int]:
    """A model input size as (height, width): a side for the square input, or a tiled model's canvas."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def to_model_rgb(bgr: np.ndarray, size: InputSize) -> np.ndarray:
    """OpenCV BGR image of any size -> (h, w, 3) uint8 RGB, the model's input geometry."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(to_input_size(bgr, size), cv2.COLOR_BGR2RGB)


def to_input_size(image: np.ndarray, size: InputSize) -> np.ndarray:
    """An (H, W, C) image -> (size, size, C) (or (h, w, C) for a tiled model's canvas): area-averaged when both
    sides shrink, by more than 1.25x on one, else bilinear; as it is when already that size."""
    height, width = image.shape[:2]
    out_h, out_w = size_hw(size)
    if height == out_h and width == out_w:
        return image
    # Under 1.25x (the producer's 256-px frames into the default 224-px model) an output pixel's box spans little
    # more than one source pixel: bilinear scores the same there, and OpenCV's area path for a non-integer factor
    # cost 1.5x the frame's JPEG decode (850 against 220 us).
    area = height > out_h and width > out_w and max(height / out_h, width / out_w) > 1.25
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
