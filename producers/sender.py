"""The producer's one Kafka client (a `FrameProducer` of `inspector.kafka`, on the library `kafka.transport`
chooses) and the bounded buffer in front of it.

Publishers hand frames to `FrameSender.submit`: frames wait in a `SendBuffer` whose bytes, together with those
sent but not yet acknowledged, stay within a byte budget. Past it, a live camera's oldest waiting frames are
dropped (and counted by their publisher), so its capture never waits; a file's frames wait for room instead. A sender thread hands frames to Kafka while the unacknowledged
bytes are under a quarter of the budget, so a broker that goes away fills the buffer, not the Kafka client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from inspector.errors import TransportError
from inspector.kafka.transport import frame_producer
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
    droppable: bool = True  # a live camera's frame; a file's frames wait for room instead, and are never dropped

    @property
    def size(self) -> int:
        return len(self.value or b"") + sum(len(k) + len(v) for k, v in self.headers)


class SendBuffer:
    """Frames waiting to be sent plus frames sent and not yet settled, within `budget_bytes` together."""

    def __init__(self, budget_bytes: int, in_flight_cap: int) -> None:
        self.budget_bytes = budget_bytes
        self.in_flight_cap = in_flight_cap
        self._queue: deque[OutgoingFrame] = deque()
        self.queued_bytes = 0
        self.in_flight_bytes = 0
        self.changed = threading.Condition()
        self.closing = False

    @property
    def held_bytes(self) -> int:
        return self.queued_bytes + self.in_flight_bytes

    def put(self, frame: OutgoingFrame) -> list[OutgoingFrame]:
        """Queue a frame; returns the oldest droppable frames dropped to stay within the budget (the caller
        calls their on_drop outside the lock). A droppable frame never waits; another waits for room."""
        dropped = []
        with self.changed:
            while not frame.droppable and self.held_bytes and self.held_bytes + frame.size > self.budget_bytes:
                self.changed.wait()
            self._queue.append(frame)
            self.queued_bytes += frame.size
            # Only a file's frame bigger than the whole budget can leave nothing droppable while over it.
            while self.held_bytes > self.budget_bytes and (
                    oldest := next((f for f in self._queue if f.droppable), None)) is not None:
                self._queue.remove(oldest)
                self.queued_bytes -= oldest.size
                dropped.append(oldest)
            self.changed.notify_all()
        return dropped

    def take(self) -> OutgoingFrame | None:
        """The oldest waiting frame, once the unacknowledged bytes are under the cap; None once closing and empty."""
        with self.changed:
            while not self.closing and (not self._queue or self.in_flight_bytes >= self.in_flight_cap):
                self.changed.wait()
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self.queued_bytes -= frame.size
            self.in_flight_bytes += frame.size
            return frame

    def settled(self, frame: OutgoingFrame) -> None:
        """A frame taken earlier is acknowledged or has failed: its bytes leave the budget."""
        with self.changed:
            self.in_flight_bytes -= frame.size
            self.changed.notify_all()

    def wait_empty(self, deadline: float) -> bool:
        """Wait until nothing is held (True) or the monotonic deadline passes (False)."""
        with self.changed:
            while self.held_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(timeout=remaining)
            return True

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()


class FrameSender:
    """A Kafka producer shared by every camera of the process, fed from a SendBuffer by its own thread."""

    def __init__(self, kafka: KafkaSettings, *, budget_bytes: int, client_id: str,
                 on_buffer_change: Callable[[int], None] | None = None) -> None:
        self.kafka = kafka
        self.buffer = SendBuffer(budget_bytes, in_flight_cap=max(budget_bytes // 4, 1))
        self._on_buffer_change = on_buffer_change
        self._last_ack = 0.0
        self._producer = frame_producer(kafka, client_id=client_id)  # idempotent: retries duplicate no frame
        self._thread = threading.Thread(target=self._send_loop, name="kafka-sender", daemon=True)
        self._thread.start()

    def connected(self) -> bool:
        """The broker takes our frames: none is waiting, or one was acknowledged within the last 10 s."""
        return self.buffer.held_bytes == 0 or time.monotonic() - self._last_ack < 10.0

    def submit(self, frame: OutgoingFrame) -> None:
        """Queue a frame for sending (see SendBuffer.put: a droppable frame never waits)."""
        for dropped in self.buffer.put(frame):
            dropped.on_drop()
        self._report()

    def _report(self) -> None:
        if self._on_buffer_change is not None:
            self._on_buffer_change(self.buffer.held_bytes)

    def _send_loop(self) -> None:
        topic = self.kafka.frames_topic
        while (frame := self.buffer.take()) is not None:
            self._producer.send(topic, frame.key, frame.value, frame.headers, on_done=partial(self._settled, frame))

    def _settled(self, frame: OutgoingFrame, error: TransportError | None) -> None:
        self.buffer.settled(frame)
        self._report()
        if error is None:
            self._last_ack = time.monotonic()
            frame.on_ack()
        else:
            frame.on_error(error)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued frame is acknowledged or has failed; TransportError if that takes too long."""
        timeout_s = timeout_s or self.kafka.delivery_timeout_s + 5
        deadline = time.monotonic() + timeout_s
        if not self.buffer.wait_empty(deadline):
            raise TransportError(f"{self.buffer.held_bytes} bytes of frames not delivered within {timeout_s:.0f}s")
        self._producer.flush(max(deadline - time.monotonic(), 1))

    def close(self) -> None:
        """Stop after handing over what is queued, then close the client (waiting up to 10 s for acks)."""
        self.buffer.close()
        self._thread.join(timeout=self.kafka.delivery_timeout_s + 5)
        self._producer.close(10)
