"""Frame sources and the publisher that puts their frames on Kafka.

A source yields `SourceFrame`s (an OpenCV BGR image and, when known, its ground-truth label); the
publisher paces to the target rate, takes the source's next frame, resizes at the edge, JPEG-encodes and
hands it with FrameMeta headers to the FrameSender (producers/sender.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from inspector.contracts import FrameMeta
from inspector.errors import ConfigError
from inspector.settings import KafkaSettings, ProducerSettings
from producers.metrics import CameraMetrics, RateMeter
from producers.sender import FrameSender, OutgoingFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFrame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    label: str | None = None  # "good", a defect kind, or None when unknown
    jpeg: bytes | None = None  # already-encoded bytes at the target size (skips re-encoding)
    captured_ns: int | None = None  # wall clock at the grab; None: the publisher stamps it when it takes the frame
    skipped: int = 0  # live sources: frames grabbed since the previous one taken and never published
    object_id: str | None = None  # ground truth of a belt source: the object (fruit) the frame shows


class FrameSource:
    """Base of every source: iterate `frames()` until it ends or `stop()` is called."""

    # A live source grabs on its own thread, keeps only its newest frame and reports its own health and counts;
    # the others hand over every frame, read when the publisher asks for it.
    live = False

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def frames(self) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


def encode_jpeg(image: np.ndarray, settings: ProducerSettings) -> bytes:
    """Resize at the edge (less bandwidth) and JPEG-encode."""
    if settings.width and settings.height and image.shape[:2] != (settings.height, settings.width):
        image = cv2.resize(image, (settings.width, settings.height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    if not ok:
        raise ConfigError("OpenCV could not JPEG-encode a frame")
    return buf.tobytes()


@dataclass
class PublishStats:
    sent: int = 0  # handed to the sender
    acked: int = 0
    failed: int = 0  # not acknowledged within the delivery timeout
    dropped: int = 0  # dropped from the send buffer (over its byte budget while the broker was away)
    skipped: int = 0  # live frames that a newer one replaced before publication
    labels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Publisher:
    """Publishes one camera's frames: key = camera id, value = JPEG, headers = FrameMeta.

    Frames go through `sender`, shared by every camera of a process; without one the publisher makes its own
    (and closes it with itself)."""

    def __init__(self, kafka: KafkaSettings, settings: ProducerSettings, *, sender: FrameSender | None = None,
                 metrics: CameraMetrics | None = None) -> None:
        self.kafka = kafka
        self.settings = settings
        self.metrics = metrics
        self._own_sender = sender is None
        self.sender = sender or FrameSender(kafka, budget_bytes=settings.buffer_bytes,
                                            client_id=f"producer-{settings.camera_id}")
        self.stats = PublishStats(labels={})
        self._run_id = uuid.uuid4().hex[:8]
        if metrics is not None:
            metrics.target_fps.set(settings.fps)

    def publish(self, source: FrameSource, *, sequence_start: int = 0) -> PublishStats:
        """Publish until the source ends, `count` frames are sent, or the source is stopped."""
        s = self.settings
        period = 1.0 / s.fps if s.fps > 0 else 0.0
        t_start = time.monotonic()
        next_at = t_start
        seq = sequence_start
        frames = iter(source.frames())
        grabs = RateMeter(self.metrics.capture_fps if self.metrics and not source.live else None)
        if self.metrics is not None and not source.live:
            self.metrics.up.set(1)
        try:
            while not source.stopped and not (s.count and self.stats.sent >= s.count):
                # Wait for the frame's time first, then take the frame: a live source then hands over the
                # newest one, and a file source's frame is read (and stamped) when it is sent.
                if period and (delay := next_at - time.monotonic()) > 0:
                    time.sleep(delay)
                frame = next(frames, None)
                if frame is None or source.stopped:
                    break
                captured = frame.captured_ns or time.time_ns()
                # A steady schedule does not drift; after a gap of more than a period (a camera that was down)
                # it starts again from now instead of catching up in a burst.
                now = time.monotonic()
                next_at = next_at + period if now - next_at < period else now + period
                if not source.live:
                    grabs.tick()
                    if self.metrics is not None:
                        self.metrics.grabbed.inc()
                jpeg = frame.jpeg or encode_jpeg(frame.image, s)
                meta = FrameMeta(
                    frame_id=f"{s.camera_id}-{self._run_id}-{seq}",
                    camera_id=s.camera_id,
                    sequence=seq,
                    captured_ns=captured,
                    deadline_ns=captured + int(s.deadline_ms * 1e6) if s.deadline_ms else None,
                    label=frame.label,
                    object_id=frame.object_id,
                )
                self.send(jpeg, meta, droppable=source.live)
                if frame.skipped:
                    self.stats.skipped += frame.skipped
                    if self.metrics is not None:
                        self.metrics.skipped.inc(frame.skipped)
                if frame.label is not None:
                    self.stats.labels[frame.label] = self.stats.labels.get(frame.label, 0) + 1
                seq += 1
        finally:
            if self.metrics is not None and not source.live:
                self.metrics.up.set(0)
                self.metrics.capture_fps.set(0)
            self.flush()
            self.stats.seconds = time.monotonic() - t_start
        return self.stats

    def send(self, value: bytes, meta: FrameMeta, *, droppable: bool = False) -> None:
        """Queue one frame for sending (acks, failures and drops are counted in `stats` and the metrics); a
        droppable (live) frame may be dropped while the broker is away, any other waits for room."""
        metrics = self.metrics
        captured_ns = meta.captured_ns

        def acked() -> None:
            self.stats.acked += 1
            if metrics is not None:
                metrics.published.inc()
                metrics.capture_to_ack.observe(max(time.time_ns() - captured_ns, 0) / 1e9)

        self._submit(meta.camera_id.encode(), value, meta.to_headers(), acked, droppable)

    def send_raw(self, value: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None = None) -> None:
        """Send arbitrary bytes and headers (tests and fault injection: the worker must survive them)."""
        def acked() -> None:
            self.stats.acked += 1

        self._submit(key, value, headers, acked, droppable=False)

    def _submit(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                acked: Callable[[], None], droppable: bool) -> None:
        self.sender.submit(OutgoingFrame(key, value, headers, on_ack=acked, on_error=self._on_error,
                                         on_drop=self._on_drop, droppable=droppable))
        self.stats.sent += 1

    def _on_error(self, exc: Exception) -> None:
        self.stats.failed += 1
        if self.metrics is not None:
            self.metrics.delivery_errors.inc()
        log.error("frame of %s not delivered: %s", self.settings.camera_id, exc)

    def _on_drop(self) -> None:
        self.stats.dropped += 1
        if self.metrics is not None:
            self.metrics.dropped.inc()

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every frame sent so far is acknowledged or has failed (TransportError past the timeout)."""
        self.sender.flush(timeout_s)

    def close(self) -> None:
        if self._own_sender:
            self.sender.close()
