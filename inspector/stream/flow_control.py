"""How much the worker takes from the frames topic, no I/O: the batch size that keeps a batch inside the group's
poll interval. The caller supplies the timings, so tests need neither a broker nor a clock."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class BatchSizeGovernor:
    """Keeps a batch well inside kafka.max_poll_interval_ms, past which the group evicts this worker and the batch
    is scored again: a batch over half of it halves the batch size, a full one under 1/8 doubles it back, up to
    batch.max_size.

    Batches over 1/8 of it also turn the overlap off (scoring the next batches while this one is published): after
    an eviction the next batch, already being scored, would be dropped, and its scoring would delay the one after
    it by as long again. The overlap starts off, and comes on once a batch has been quick."""

    def __init__(self, max_poll_interval_s: float, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._limit_s = max_poll_interval_s
        self._ceiling = max_size
        self._max_size = max_size
        self._overlap = False

    @property
    def max_size(self) -> int:
        """The most records the next batch may hold."""
        return self._max_size

    @property
    def overlap(self) -> bool:
        """Whether the next batches may be scored while the current one is published."""
        return self._overlap

    def shares(self, idle_threads: int) -> int:
        """Into how many batches to split the records just taken, given the scoring threads now idle: one each, so
        that they finish together. Given whole to one thread, a backlog is scored by it alone while the others wait
        behind it in publish order, the batches grow as the worker falls behind, and it falls behind faster (on 2
        cores the demo's worker scored 32-frame batches at 20 frames/s of the 30 sent, its second thread idle)."""
        return max(1, idle_threads) if self._overlap else 1

    def observe(self, size: int, seconds: float) -> None:
        """A batch of `size` records took `seconds` from its scoring to its commit."""
        self._overlap = seconds < self._limit_s / 8
        if seconds > self._limit_s / 2 and max(1, size // 2) < self._max_size:
            self._max_size = max(1, size // 2)
            log.warning("a batch of %d took %.1fs of the %.1fs max poll interval: batch size lowered to %d", size,
                        seconds, self._limit_s, self._max_size)
        elif seconds < self._limit_s / 8 and size >= self._max_size < self._ceiling:
            self._max_size = min(self._ceiling, self._max_size * 2)
