"""The producer's one Kafka client and the bounded buffer in front of it.

Publishers hand frames to `FrameSender.submit`, which never blocks: frames wait in a queue whose bytes, together
with those sent but not yet acknowledged, stay within a byte budget; past it the oldest waiting frames are
dropped (and counted by their publisher). A sender thread hands frames to Kafka while the unacknowledged bytes
are under a quarter of the budget, so a broker that goes away fills the queue, not the client's own buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from inspector.errors import TransportError
from inspector.kafka_io import client_config
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingFrame:
    """One record and what to call when the broker acknowledges it, refuses it, or the buffer drops it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    on_ack: Callable[[], None]
    on_error: Callable[[Exception], None]
    on_drop: Callable[[], None]

    @property
    def size(self) -> int:
        return len(self.value or b"") + sum(len(k) + len(v) for k, v in self.headers)


class FrameSender:
    """A KafkaProducer shared by every camera of the process, fed from a byte-budgeted queue."""

    def __init__(self, kafka: KafkaSettings, *, budget_bytes: int, client_id: str,
                 on_buffer_change: Callable[[int], None] | None = None) -> None:
        self.kafka = kafka
        self.budget_bytes = budget_bytes
        self.in_flight_cap = max(budget_bytes // 4, 1)
        self._on_buffer_change = on_buffer_change
        try:
            self._producer = KafkaProducer(
                **client_config(kafka),
                client_id=client_id,
                acks="all",
                enable_idempotence=True,  # retries after a broker hiccup do not duplicate frames
                linger_ms=kafka.linger_ms,
                max_request_size=16 * 1024 * 1024,
                # Room for everything the sender thread lets out, so that send() never waits for memory.
                buffer_memory=max(32 * 1024 * 1024, self.in_flight_cap + 16 * 1024 * 1024),
                delivery_timeout_ms=int(kafka.delivery_timeout_s * 1000),
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from None
        self._queue: deque[OutgoingFrame] = deque()
        self._queued_bytes = 0
        self._in_flight_bytes = 0
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._send_loop, name="kafka-sender", daemon=True)
        self._thread.start()

    @property
    def held_bytes(self) -> int:
        """Bytes waiting in the queue plus bytes sent and not yet acknowledged (never over the budget)."""
        return self._queued_bytes + self._in_flight_bytes

    def connected(self) -> bool:
        return bool(self._producer.bootstrap_connected())

    def submit(self, frame: OutgoingFrame) -> None:
        """Queue a frame for sending; drops the oldest waiting frames if the budget would be exceeded."""
        dropped: list[OutgoingFrame] = []
        with self._changed:
            self._queue.append(frame)
            self._queued_bytes += frame.size
            while self._queue and self.held_bytes > self.budget_bytes:
                oldest = self._queue.popleft()
                self._queued_bytes -= oldest.size
                dropped.append(oldest)
            held = self.held_bytes
            self._changed.notify_all()
        for frame_dropped in dropped:
            frame_dropped.on_drop()
        self._report(held)

    def _report(self, held: int) -> None:
        if self._on_buffer_change is not None:
            self._on_buffer_change(held)

    def _send_loop(self) -> None:
        topic = self.kafka.frames_topic
        while True:
            with self._changed:
                while not self._closing and (not self._queue or self._in_flight_bytes >= self.in_flight_cap):
                    self._changed.wait()
                if not self._queue:
                    return  # closing, and everything queued has been handed over
                frame = self._queue.popleft()
                self._queued_bytes -= frame.size
                self._in_flight_bytes += frame.size
            try:
                future = self._producer.send(topic, key=frame.key, value=frame.value, headers=frame.headers)
            except KafkaError as exc:  # no metadata within max_block_ms: the broker has been away since start-up
                self._settled(frame, exc)
                continue
            future.add_callback(lambda _meta, f=frame: self._settled(f, None))
            future.add_errback(lambda exc, f=frame: self._settled(f, exc))

    def _settled(self, frame: OutgoingFrame, error: Exception | None) -> None:
        with self._changed:
            self._in_flight_bytes -= frame.size
            held = self.held_bytes
            self._changed.notify_all()
        self._report(held)
        if error is None:
            frame.on_ack()
        else:
            frame.on_error(error)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued frame is acknowledged or has failed; TransportError if that takes too long."""
        timeout_s = timeout_s or self.kafka.delivery_timeout_s + 5
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.held_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(f"{self.held_bytes} bytes of frames not delivered within {timeout_s:.0f}s")
                self._changed.wait(timeout=remaining)
        try:
            self._producer.flush(timeout=max(deadline - time.monotonic(), 1))
        except KafkaError as exc:
            raise TransportError(f"flush failed: {exc}") from None

    def close(self) -> None:
        """Stop after handing over what is queued, then close the client (waiting up to 10 s for acks)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout=self.kafka.delivery_timeout_s + 5)
        self._producer.close(timeout=10)
