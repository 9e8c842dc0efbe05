"""Every Prometheus metric of the producer, built into a registry that is passed in (the worker's are in
inspector/stream/metrics.py). Names follow namespace_subsystem_name_unit; the only label is the camera id, from the
cameras file (a small fixed set)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "inspector"
SUBSYSTEM = "producer"
# Capture to broker acknowledgement: a few ms on a healthy line, seconds while the broker is away.
_ACK_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class CameraMetrics:
    """One camera's series (label values bound)."""

    grabbed: Counter
    published: Counter
    skipped: Counter
    dropped: Counter
    delivery_errors: Counter
    reconnects: Counter
    up: Gauge
    capture_fps: Gauge
    target_fps: Gauge
    capture_to_ack: Histogram


@dataclass(frozen=True)
class ProducerMetrics:
    frames_grabbed: Counter
    frames_published: Counter
    frames_skipped: Counter
    frames_dropped: Counter
    delivery_errors: Counter
    reconnects: Counter
    camera_up: Gauge
    capture_fps: Gauge
    target_fps: Gauge
    capture_to_ack_seconds: Histogram
    buffer_bytes: Gauge
    buffer_budget_bytes: Gauge
    ready: Gauge

    def camera(self, camera_id: str) -> CameraMetrics:
        """The series of one camera, exported from the start (counters at 0, camera down until it delivers)."""
        return CameraMetrics(
            grabbed=self.frames_grabbed.labels(camera_id), published=self.frames_published.labels(camera_id),
            skipped=self.frames_skipped.labels(camera_id), dropped=self.frames_dropped.labels(camera_id),
            delivery_errors=self.delivery_errors.labels(camera_id), reconnects=self.reconnects.labels(camera_id),
            up=self.camera_up.labels(camera_id), capture_fps=self.capture_fps.labels(camera_id),
            target_fps=self.target_fps.labels(camera_id),
            capture_to_ack=self.capture_to_ack_seconds.labels(camera_id))


def build_producer_metrics(registry: CollectorRegistry) -> ProducerMetrics:
    """Create the producer's metrics in `registry` (a fresh registry per test)."""
    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, ("camera",), namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ("camera",)) -> Gauge:
        return Gauge(name, doc, labels, namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry)

    return ProducerMetrics(
        frames_grabbed=counter("frames_grabbed", "Frames read from the camera or file."),
        frames_published=counter("frames_published", "Frames acknowledged by the broker."),
        frames_skipped=counter("frames_skipped",
                               "Live frames grabbed but not published: a newer one was there at publication time."),
        frames_dropped=counter("frames_dropped",
                               "Frames dropped, oldest first, from the send buffer when it was over its byte budget."),
        delivery_errors=counter("delivery_errors", "Frames the broker did not acknowledge in time."),
        reconnects=counter("reconnects", "Times a lost camera or stream was opened again."),
        camera_up=gauge("camera_up", "1 while the camera delivers frames, 0 while it is down or reconnecting."),
        capture_fps=gauge("capture_fps", "Frames per second read from the camera, over the last second."),
        target_fps=gauge("target_fps", "Frames per second the camera is published at (0: every frame)."),
        capture_to_ack_seconds=Histogram(
            "capture_to_ack_seconds", "Time from the frame's grab to its acknowledgement by the broker.",
            ("camera",), namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry, buckets=_ACK_BUCKETS),
        buffer_bytes=gauge("buffer_bytes", "Bytes of frames waiting to be sent or acknowledged.", ()),
        buffer_budget_bytes=gauge("buffer_budget_bytes", "The send buffer's byte budget.", ()),
        ready=gauge("ready", "1 when the Kafka producer is connected and at least one camera is up.", ()),
    )


class RateMeter:
    """Sets a frames-per-second gauge from the frames counted over each second or more."""

    def __init__(self, gauge: Gauge | None, window_s: float = 1.0) -> None:
        self.gauge = gauge
        self.window_s = window_s
        self._since = time.monotonic()
        self._count = 0

    def tick(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._since >= self.window_s:
            if self.gauge is not None:
                self.gauge.set(self._count / (now - self._since))
            self._since, self._count = now, 0

    def reset(self) -> None:
        """The source stopped delivering: the rate is 0 until it delivers again."""
        if self.gauge is not None:
            self.gauge.set(0)
        self._since, self._count = time.monotonic(), 0
