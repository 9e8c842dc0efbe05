"""Frame sources and the publisher that puts their frames on Kafka.

A source yields `SourceFrame`s (an OpenCV BGR image and, when known, its ground-truth label); the
publisher resizes at the edge, JPEG-encodes, paces to the target rate and sends with FrameMeta headers.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from inspector.contracts import FrameMeta
from inspector.errors import ConfigError, TransportError
from inspector.kafka.kafka_python import client_config
from inspector.settings import KafkaSettings, ProducerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFrame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    label: str | None = None  # "good", a defect kind, or None when unknown
    jpeg: bytes | None = None  # already-encoded bytes at the target size (skips re-encoding)


class FrameSource:
    """Base of every source: iterate `frames()` until it ends or `stop()` is called."""

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
    sent: int = 0
    acked: int = 0
    failed: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Publisher:
    """Sends a source's frames to the frames topic: key = camera id, value = JPEG, headers = FrameMeta."""

    def __init__(self, kafka: KafkaSettings, settings: ProducerSettings) -> None:
        self.kafka = kafka
        self.settings = settings
        try:
            self._producer = KafkaProducer(
                **client_config(kafka),
                client_id=f"producer-{settings.camera_id}",
                acks="all",
                enable_idempotence=True,  # retries after a broker hiccup do not duplicate frames
                linger_ms=kafka.linger_ms,
                max_request_size=16 * 1024 * 1024,
                delivery_timeout_ms=int(kafka.delivery_timeout_s * 1000),
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from None
        self.stats = PublishStats(labels={})
        self._run_id = uuid.uuid4().hex[:8]

    def _on_ack(self, _meta: object) -> None:
        self.stats.acked += 1

    def _on_error(self, exc: Exception) -> None:
        self.stats.failed += 1
        log.error("frame not delivered: %s", exc)

    def publish(self, source: FrameSource, *, sequence_start: int = 0) -> PublishStats:
        """Publish until the source ends, `count` frames are sent, or the source is stopped."""
        s = self.settings
        period = 1.0 / s.fps if s.fps > 0 else 0.0
        t_start = time.monotonic()
        seq = sequence_start
        try:
            for frame in source.frames():
                if source.stopped or (s.count and self.stats.sent >= s.count):
                    break
                if period:
                    # Pace against the start time, not the previous frame: no drift at a steady rate.
                    delay = t_start + (self.stats.sent * period) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                jpeg = frame.jpeg or encode_jpeg(frame.image, s)
                captured = time.time_ns()
                meta = FrameMeta(
                    frame_id=f"{s.camera_id}-{self._run_id}-{seq}",
                    camera_id=s.camera_id,
                    sequence=seq,
                    captured_ns=captured,
                    deadline_ns=captured + int(s.deadline_ms * 1e6) if s.deadline_ms else None,
                    label=frame.label,
                )
                self.send(jpeg, meta)
                if frame.label is not None:
                    self.stats.labels[frame.label] = self.stats.labels.get(frame.label, 0) + 1
                seq += 1
        finally:
            self.flush()
            self.stats.seconds = time.monotonic() - t_start
        return self.stats

    def send(self, value: bytes, meta: FrameMeta) -> None:
        """Send one frame asynchronously (acks are counted in `stats`)."""
        try:
            future = self._producer.send(self.kafka.frames_topic, key=meta.camera_id.encode(), value=value,
                                         headers=meta.to_headers())
        except KafkaError as exc:
            raise TransportError(f"send failed: {exc}") from None
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)
        self.stats.sent += 1

    def send_raw(self, value: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None = None) -> None:
        """Send arbitrary bytes and headers (tests and fault injection: the worker must survive them)."""
        future = self._producer.send(self.kafka.frames_topic, key=key, value=value, headers=headers)
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)
        self.stats.sent += 1

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s or self.kafka.delivery_timeout_s + 5)
        except KafkaError as exc:
            raise TransportError(f"flush failed: {exc}") from None

    def close(self) -> None:
        self._producer.close(timeout=10)
