"""Timing helpers of the scoring benchmark (`bench/scoring.py`): repeated calls for a number of seconds, the worker's
decode/score overlap, per-call times, and the machine they ran on. Free of Kafka and pydantic, as that script is."""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import threading
import time
from contextlib import nullcontext

import numpy as np
import torch


def pin_host_buffer(array: np.ndarray, device: torch.device) -> bool:
    """Page-lock a host buffer in place (cudaHostRegister), so copies to the GPU read it by DMA directly
    instead of first being copied into pinned memory. False (and nothing done) where that is refused."""
    if device.type != "cuda":
        return False
    try:
        status = torch.cuda.cudart().cudaHostRegister(array.ctypes.data, array.nbytes, 0)
    except Exception:  # an older torch without the binding: copies go through pinned staging
        return False
    return int(status) == 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n_frames_per_call: int, seconds: float, device: torch.device) -> dict:
    """Call fn repeatedly for about `seconds` after two warm-up calls; frames/s and ms per call."""
    for _ in range(2):
        fn()
    sync(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() - t0 >= seconds:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {"frames_per_s": round(calls * n_frames_per_call / dt, 1), "ms_per_call": round(1000 * dt / calls, 3),
            "calls": calls}


def timed_pipelined(decode, score, chunk: list[bytes], seconds: float, device: torch.device) -> dict:
    """The worker's overlap: a feeder thread decodes batch i+1 (on its own CUDA stream) while the caller's
    thread scores batch i. frames/s over about `seconds`, after two warm-up batches."""
    side = torch.cuda.Stream() if device.type == "cuda" else None
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def feeder() -> None:
        try:
            while not stop.is_set():
                with torch.cuda.stream(side) if side is not None else nullcontext():
                    x = decode(chunk)
                    done = torch.cuda.Event() if side is not None else None
                    if done is not None:
                        done.record(side)
                ready.put((x, done))
        except BaseException as exc:  # surfaced in the caller's thread
            ready.put((exc, None))

    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()

    def next_scored() -> None:
        x, done = ready.get()
        if isinstance(x, BaseException):
            raise x
        if done is not None:
            torch.cuda.current_stream().wait_event(done)
            x.record_stream(torch.cuda.current_stream())  # the allocator must not reuse it mid-model
        score(x)

    try:
        for _ in range(2):
            next_scored()
        sync(device)
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            next_scored()
            calls += 1
        sync(device)
        dt = time.perf_counter() - t0
    finally:
        stop.set()
        while thread.is_alive():  # unblock a feeder waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get_nowait()
            thread.join(0.05)
    n = len(chunk)
    return {"frames_per_s": round(calls * n / dt, 1), "ms_per_call": round(1000 * dt / calls, 3), "calls": calls}


def machine(device: torch.device) -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads()}


def call_times(fn, seconds: float, min_calls: int = 5) -> np.ndarray:
    """Seconds per call of fn, each call timed alone, for about `seconds` (at least min_calls) after two warm-up
    calls. fn must end synchronised with the device, as the score stage does when its scores reach the host."""
    for _ in range(2):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.array(times)
