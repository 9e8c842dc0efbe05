"""A consumed frame, read: its headers into FrameMeta, then its JPEG bytes validated and decoded (or only
validated, when the batch is decoded on the GPU). No torch here, like `inspector.decode.jpeg`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inspector.contracts import FrameMeta
from inspector.decode.jpeg import decode_jpeg, validate_jpeg
from inspector.errors import BadFrame
from inspector.kafka.transport import ConsumedRecord


@dataclass
class Decoded:
    """One consumed record after validation and decode: either an image or the reason it is bad."""

    record: ConsumedRecord
    meta: FrameMeta | None = None
    image: np.ndarray | None = None  # (S, S, 3) uint8 RGB at the model's size (None: decoded on the GPU)
    frame_hw: tuple[int, int] = (0, 0)
    error: BadFrame | None = None


def decode_record(record: ConsumedRecord, size: int, max_bytes: int, max_pixels: int, decode: bool = True) -> Decoded:
    """Headers, then bytes: any problem becomes a BadFrame with a DLQ reason, never an exception.

    With decode=False the bytes are only validated (the batch is then decoded on the GPU)."""
    try:
        meta = FrameMeta.from_headers(record.headers)
        data = record.value or b""
        if not decode:
            return Decoded(record, meta, None, validate_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels))
        image, hw = decode_jpeg(data, size=size, max_bytes=max_bytes, max_pixels=max_pixels)
        return Decoded(record, meta, image, hw)
    except BadFrame as bad:
        return Decoded(record, error=bad)
    except Exception as exc:  # a frame must never take the worker down
        return Decoded(record, error=BadFrame("undecodable", f"{type(exc).__name__}: {exc}"[:160]))
