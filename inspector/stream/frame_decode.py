"""A consumed frame, read: its headers into FrameMeta, then its JPEG bytes validated and decoded (or only
validated, when the batch is decoded on the GPU). No torch here, like `inspector.decode.jpeg`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inspector.contracts import FrameMeta
from inspector.decode.jpeg import InputSize, decode_jpeg, validate_jpeg
from inspector.errors import BadFrame
from inspector.kafka.transport import ConsumedRecord


@dataclass(slots=True)
class DecodedFrame:
    """A record whose headers parsed and whose JPEG bytes passed validation: on its way to be scored."""

    record: ConsumedRecord
    meta: FrameMeta
    frame_hw: tuple[int, int]  # the frame's own (height, width)
    image: np.ndarray | None = None  # (S, S, 3) (a tiled model's (h, w, 3)) uint8 RGB; None: the batch decodes on the GPU


class Rejected(NamedTuple):
    """A record that cannot be scored, and why: it goes to the dead-letter topic."""

    record: ConsumedRecord
    error: BadFrame


def decode_record(record: ConsumedRecord, size: InputSize, max_bytes: int, max_pixels: int,
                  decode: bool = True) -> DecodedFrame | Rejected:
    """Headers, then bytes: any problem becomes a Rejected with a DLQ reason, never an exception.

    With decode=False the bytes are only validated (the batch is then decoded on the GPU)."""
    try:
        meta = FrameMeta.from_headers(record.headers)
        data = record.value or b""
        if not decode:
            return DecodedFrame(record, meta, validate_jpeg(data, max_bytes=max_bytes, max_pixels=max_pixels))
        image, frame_hw = decode_jpeg(data, size=size, max_bytes=max_bytes, max_pixels=max_pixels)
        return DecodedFrame(record, meta, frame_hw, image)
    except BadFrame as bad:
        return Rejected(record, bad)
    except Exception as exc:  # a frame must never take the worker down
        return Rejected(record, BadFrame("undecodable", f"{type(exc).__name__}: {exc}"[:160]))


def decode_records(records: list[ConsumedRecord], size: InputSize, max_bytes: int, max_pixels: int,
                   decode: bool = True) -> list[DecodedFrame | Rejected]:
    """`decode_record` for each of a run of a batch's records: one task per decode thread, not per record,
    whose future, queue and wake-up cost the GIL a third of the decode threads' time on 256-px frames."""
    return [decode_record(record, size, max_bytes, max_pixels, decode) for record in records]


def split_among(records: list[ConsumedRecord], runs: int) -> list[list[ConsumedRecord]]:
    """The records in at most `runs` contiguous runs of nearly equal length, in order."""
    runs = max(1, min(runs, len(records)))
    step, extra = divmod(len(records), runs)
    bounds = [i * step + min(i, extra) for i in range(runs + 1)]
    return [records[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def split_decoded(decoded: list[DecodedFrame | Rejected]) -> tuple[list[DecodedFrame], list[Rejected]]:
    """A batch's frames to score and its rejects, each in record order."""
    frames: list[DecodedFrame] = []
    rejected: list[Rejected] = []
    for outcome in decoded:
        if isinstance(outcome, Rejected):
            rejected.append(outcome)
        else:
            frames.append(outcome)
    return frames, rejected
