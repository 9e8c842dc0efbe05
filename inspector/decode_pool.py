"""JPEG decode in processes, written straight into shared memory: CPU decode that uses every core.

OpenCV releases the GIL inside imdecode, yet a pool of Python threads still queues on it between calls: on a
16-core GPU host 16 decode threads managed 5.1k frames/s where one core alone does ~4k. Processes have a GIL
each. Frames travel to them as bytes (8-20 KB); the decoded images (196 KB each at 256 px) come back through
one shared buffer instead of a pipe. Started with spawn, so a caller holding CUDA is never forked.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult

import cv2
import numpy as np

from inspector.errors import BadFrame
from inspector.jpeg import decode_jpeg

# In each decode process: the shared (slots, max_batch, S, S, 3) uint8 buffer and the frame limits.
_images: np.ndarray | None = None
_limits: dict = {}


def _attach(buffer: object, shape: tuple[int, ...], limits: dict) -> None:
    global _images, _limits
    cv2.setNumThreads(1)  # one process per core is the parallelism
    _images = np.frombuffer(buffer, np.uint8).reshape(shape)  # type: ignore[call-overload]
    _limits = limits


def _decode_into(slot: int, start: int, datas: list[bytes]) -> list[tuple]:
    """Decode frames into _images[slot, start:]; per frame ("ok", h, w) or ("bad", reason, detail)."""
    assert _images is not None
    out: list[tuple] = []
    for i, data in enumerate(datas):
        try:
            image, (h, w) = decode_jpeg(data, size=_images.shape[2], **_limits)
            _images[slot, start + i] = image
            out.append(("ok", h, w))
        except BadFrame as bad:  # BadFrame does not survive pickling whole: send its two fields
            out.append(("bad", bad.reason, bad.detail))
        except Exception as exc:  # noqa: BLE001 - a frame must never take a decode process down
            out.append(("bad", "undecodable", f"{type(exc).__name__}: {exc}"[:160]))
    return out


@dataclass
class DecodeJob:
    """A batch being decoded: `result()` waits, then gives the images and each frame's outcome."""

    images: np.ndarray  # (n, S, S, 3) uint8 RGB, a view of the shared buffer (rows of bad frames are stale)
    parts: list[AsyncResult]

    def result(self) -> tuple[np.ndarray, list[tuple[int, int] | BadFrame]]:
        """-> (images (n, S, S, 3), per frame its (height, width) or the BadFrame that stopped it)."""
        outcomes: list[tuple[int, int] | BadFrame] = []
        for part in self.parts:
            for kind, a, b in part.get():
                outcomes.append((a, b) if kind == "ok" else BadFrame(a, b))
        return self.images, outcomes


class DecodePool:
    """`processes` decode processes sharing a buffer of `slots` batches of up to `max_batch` frames.

    A job's images stay valid until `slots` more jobs have been submitted: keep fewer jobs than that in hand.
    """

    def __init__(self, processes: int, size: int, max_batch: int, *, max_bytes: int, max_pixels: int,
                 slots: int = 3) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold a CUDA context
        shape = (slots, max_batch, size, size, 3)
        self._buffer = ctx.RawArray(ctypes.c_uint8, int(np.prod(shape)))
        self.images: np.ndarray = np.frombuffer(self._buffer, np.uint8).reshape(shape)  # the whole buffer
        self._pool = ctx.Pool(processes, _attach, (self._buffer, shape, {"max_bytes": max_bytes,
                                                                            "max_pixels": max_pixels}))
        self.processes = processes
        self._slot = 0

    def submit(self, datas: list[bytes]) -> DecodeJob:
        """Start decoding a batch (at most max_batch frames), spread over the processes; returns at once."""
        slots, max_batch = self.images.shape[:2]
        if len(datas) > max_batch:
            raise ValueError(f"batch of {len(datas)} frames > max_batch {max_batch}")
        slot, self._slot = self._slot, (self._slot + 1) % slots
        step = max(1, -(-len(datas) // self.processes))
        parts = [self._pool.apply_async(_decode_into, (slot, start, datas[start:start + step]))
                 for start in range(0, len(datas), step)]
        return DecodeJob(self.images[slot, :len(datas)], parts)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
