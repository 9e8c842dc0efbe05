"""JPEG decode in processes, through shared memory both ways: CPU decode that uses every core.

OpenCV releases the GIL inside imdecode, yet a pool of Python threads still queues on it between calls: on a
16-core GPU host 16 decode threads managed 4-5k frames/s where one core alone does ~4k. Processes have a GIL
each. A batch's JPEG bytes are copied once into a shared input buffer and the decoded images (196 KB each at
256 px) are written into a shared output buffer, so what crosses a pipe is a few offsets per process and a
short outcome per frame. (multiprocessing.Pool pickled the bytes through its pipes and helper threads:
5-9 ms per batch on top of the decode.) Started with spawn, so a caller holding CUDA is never forked.

bench/scoring.py measures it against decode threads and nvJPEG; the worker decodes in threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.connection import Connection

import cv2
import numpy as np

from inspector.decode.jpeg import decode_jpeg
from inspector.errors import BadFrame

_AVG_FRAME_BYTES = 64 << 10  # input room per frame; a batch with bigger frames sends its bytes inline


def _serve(conn: Connection, images_buf: object, images_shape: tuple[int, ...], input_buf: object,
           input_shape: tuple[int, ...], limits: dict) -> None:
    """A decode process: for each (slot, start, offsets, inline) it decodes frames start.. of that slot into
    the shared images and answers, per frame, ("ok", h, w) or ("bad", reason, detail)."""
    cv2.setNumThreads(1)  # one process per core is the parallelism
    images = np.frombuffer(images_buf, np.uint8).reshape(images_shape)  # type: ignore[call-overload]
    inputs = np.frombuffer(input_buf, np.uint8).reshape(input_shape)  # type: ignore[call-overload]
    size = images_shape[2]
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        slot, start, offsets, inline = task
        n = len(inline) if inline is not None else len(offsets) - 1
        out: list[tuple] = []
        for i in range(n):
            data = inline[i] if inline is not None else inputs[slot, offsets[i]:offsets[i + 1]].tobytes()
            try:
                image, (h, w) = decode_jpeg(data, size=size, **limits)
                images[slot, start + i] = image
                out.append(("ok", h, w))
            except BadFrame as bad:  # BadFrame does not survive pickling whole: send its two fields
                out.append(("bad", bad.reason, bad.detail))
            except Exception as exc:  # a frame must never take a decode process down
                out.append(("bad", "undecodable", f"{type(exc).__name__}: {exc}"[:160]))
        conn.send(out)


@dataclass
class DecodeJob:
    """A batch being decoded: `result()` waits, then gives the images and each frame's outcome."""

    images: np.ndarray  # (n, S, S, 3) uint8 RGB, a view of the shared buffer (rows of bad frames are stale)
    conns: list[Connection]

    def result(self) -> tuple[np.ndarray, list[tuple[int, int] | BadFrame]]:
        """-> (images (n, S, S, 3), per frame its (height, width) or the BadFrame that stopped it)."""
        outcomes: list[tuple[int, int] | BadFrame] = []
        for conn in self.conns:  # in submission order: each process answers its tasks in order
            for kind, a, b in conn.recv():
                outcomes.append((a, b) if kind == "ok" else BadFrame(a, b))
        return self.images, outcomes


class DecodePool:
    """`processes` decode processes sharing buffers for `slots` batches of up to `max_batch` frames.

    A job's images stay valid until `slots` more jobs have been submitted. Take results in the order the jobs
    were submitted: each process answers its tasks in order.
    """

    def __init__(self, processes: int, size: int, max_batch: int, *, max_bytes: int, max_pixels: int,
                 slots: int = 3) -> None:
        ctx = mp.get_context("spawn")
        images_shape = (slots, max_batch, size, size, 3)
        input_shape = (slots, max_batch * _AVG_FRAME_BYTES)
        self._images_buf = ctx.RawArray(ctypes.c_uint8, int(np.prod(images_shape)))
        self._input_buf = ctx.RawArray(ctypes.c_uint8, int(np.prod(input_shape)))
        self.images: np.ndarray = np.frombuffer(memoryview(self._images_buf), np.uint8).reshape(images_shape)  # whole buffer
        self._inputs = np.frombuffer(memoryview(self._input_buf), np.uint8).reshape(input_shape)
        limits = {"max_bytes": max_bytes, "max_pixels": max_pixels}
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(processes):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, self._images_buf, images_shape, self._input_buf,
                                                    input_shape, limits), daemon=True, name="jpeg-decode")
            proc.start()
            there.close()
            self._conns.append(here)
            self._procs.append(proc)
        self.processes = processes
        self._slot = 0

    def submit(self, datas: list[bytes]) -> DecodeJob:
        """Start decoding a batch (at most max_batch frames), spread over the processes; returns at once."""
        slots, max_batch = self.images.shape[:2]
        if len(datas) > max_batch:
            raise ValueError(f"batch of {len(datas)} frames > max_batch {max_batch}")
        slot, self._slot = self._slot, (self._slot + 1) % slots
        lengths = np.fromiter((len(d) for d in datas), np.int64, len(datas))
        offsets = np.concatenate([[0], np.cumsum(lengths)])  # (n + 1,) into this slot's input buffer
        fits = offsets[-1] <= self._inputs.shape[1]
        if fits:
            row = self._inputs[slot]
            for d, a, b in zip(datas, offsets[:-1], offsets[1:]):
                row[a:b] = np.frombuffer(d, np.uint8)
        step = max(1, -(-len(datas) // self.processes))
        conns = []
        for k, start in enumerate(range(0, len(datas), step)):
            end = min(start + step, len(datas))
            inline = None if fits else list(datas[start:end])
            self._conns[k].send((slot, start, offsets[start:end + 1].tolist(), inline))
            conns.append(self._conns[k])
        return DecodeJob(self.images[slot, :len(datas)], conns)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
