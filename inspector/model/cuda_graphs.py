"""CUDA graphs for the model runner: the scoring of each padded batch size captured once at warm-up, then replayed.

Eagerly, a batch of 16 frames spends most of its score stage launching a few hundred small kernels from Python;
a replay launches them all at once. A graph works on the addresses it was captured with, so each batch size has a
static input that a batch is copied into, and static outputs that the next replay overwrites (copied out first).
The capture itself is behind a small `GraphBackend` protocol, so tests drive this logic on the CPU with a stand-in.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

Scored = tuple[torch.Tensor, torch.Tensor]  # (scores (B,), maps (B, S, S)) on the device
ScoreFn = Callable[[torch.Tensor], Scored]  # (B, 3, S, S) float in [0, 1] -> Scored


class Graph(Protocol):
    """Captured device work: `replay` runs it again, on the buffers it was captured with."""

    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """Captures `fn`, a call on static buffers -> (the graph, fn's outputs: static too, rewritten by each replay)."""

    def capture(self, fn: Callable[[], Scored]) -> tuple[Graph, Scored]: ...


class CudaGraphBackend:
    """torch.cuda graphs, each warmed up and captured on one side stream of its own, into one shared memory pool."""

    def __init__(self, device: torch.device, warm_up_runs: int = 3) -> None:
        self.device = device
        self.warm_up_runs = warm_up_runs
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable[[], Scored]) -> tuple[torch.cuda.CUDAGraph, Scored]:
        # 1. A few eager runs on the stream the capture uses: cuDNN, cuBLAS and the allocator set up their
        #    per-stream state there now, as a set-up step inside the capture would fail it.
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            for _ in range(self.warm_up_runs):
                fn()
        main.wait_stream(self.stream)
        # 2. Capture. Every graph of this backend allocates from one pool, so the smaller ones reuse the largest's
        #    intermediates: safe because graphs replay one at a time on one stream and `BatchGraphs.score` copies
        #    the outputs out before the next replay. "thread_local": the capture fails on this thread's unsafe calls
        #    only; another thread's CUDA work (nvJPEG during a hot reload) neither fails nor fails it.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            outputs = fn()
        return graph, outputs


@dataclass(frozen=True, slots=True)
class _Captured:
    """One batch size's graph and the buffers it reads and writes."""

    graph: Graph
    x: torch.Tensor  # (B, 3, S, S) channels_last: each batch is copied in here
    scores: torch.Tensor  # (B,) the last replay's scores
    maps: torch.Tensor  # (B, S, S) the last replay's maps


def padded_size(n: int) -> int:
    """The power of two a batch of n frames is padded to."""
    return 1 << (n - 1).bit_length()


class BatchGraphs:
    """One model's graphs, one per padded batch size: `score` copies a batch in, replays, and copies the results
    out. Replay from the thread that captured (the worker's one scoring thread on CUDA)."""

    def __init__(self, captured: dict[int, _Captured]) -> None:
        self._captured = captured

    @classmethod
    def capture(cls, score: ScoreFn, backend: GraphBackend, batch_sizes: Iterable[int], input_shape: tuple[int, ...],
                device: torch.device, dtype: torch.dtype = torch.float32) -> BatchGraphs:
        """Capture `score` at each padded size of `batch_sizes` on static inputs of (B, *input_shape), largest first
        (the smaller graphs then fit in the memory the largest's intermediates left in the shared pool). Each graph
        is replayed once, so that one that cannot replay fails here and not on the first frame. Raises what the
        backend raises."""
        captured: dict[int, _Captured] = {}
        for b in sorted({padded_size(size) for size in batch_sizes}, reverse=True):
            x = torch.zeros((b, *input_shape), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            graph, (scores, maps) = backend.capture(functools.partial(score, x))
            graph.replay()
            captured[b] = _Captured(graph, x, scores, maps)
        return cls(captured)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._captured))

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor] | None:
        """(n, 3, S, S) on the device -> (scores (n,) on the host, maps (n, S, S) on the device) through the graph of
        n's padded size; None where there is no such graph (the caller scores eagerly)."""
        n = x.shape[0]
        captured = self._captured.get(padded_size(n))
        if captured is None or x.shape[1:] != captured.x.shape[1:]:
            return None
        with torch.inference_mode():  # the outputs are inference tensors: their copies are made in the same mode
            captured.x[:n].copy_(x)
            if n < captured.x.shape[0]:
                captured.x[n:].zero_()  # the padding eager scoring adds: scored, then sliced off
            captured.graph.replay()
            # Copies, as the next replay overwrites the outputs. Of the first n alone: the worker reads an alert's
            # map (`BatchScorer._verdicts`) only after this returns, before the next batch.
            return captured.scores[:n].to("cpu", copy=True).numpy(), captured.maps[:n].clone()


def capture_graphs(score: ScoreFn, backend: GraphBackend, batch_sizes: Iterable[int], input_shape: tuple[int, ...],
                   device: torch.device, name: str) -> BatchGraphs | None:
    """`BatchGraphs.capture`, logged with the seconds it took; on any failure (an operation that cannot be captured,
    out of memory) one warning line and None: the model then scores eagerly."""
    t0 = time.perf_counter()
    try:
        graphs = BatchGraphs.capture(score, backend, batch_sizes, input_shape, device)
    except Exception as exc:
        log.warning("%s: CUDA graph capture failed, scoring without graphs: %s", name, _first_cause(exc))
        log.debug("CUDA graph capture failure", exc_info=True)
        return None
    log.info("%s: CUDA graphs captured for batch sizes %s in %.2f s", name,
             ",".join(map(str, graphs.batch_sizes)), time.perf_counter() - t0)
    return graphs


def _first_cause(exc: BaseException) -> str:
    """The first line of the error that started it (a failed capture also fails when the capture ends)."""
    while exc.__context__ is not None:
        exc = exc.__context__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
