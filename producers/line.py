"""The cameras of one producer process: a source and a publishing thread per camera, one FrameSender shared by
all of them, and the metrics endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from inspector.errors import InspectorError
from inspector.http_endpoint import HttpEndpoint
from inspector.settings import Settings
from producers.base import FrameSource, Publisher, PublishStats
from producers.cameras import CameraConfig, open_source
from producers.live import LiveSource
from producers.metrics import ProducerMetrics, build_producer_metrics
from producers.sender import FrameSender

log = logging.getLogger(__name__)


@dataclass
class RunningCamera:
    config: CameraConfig
    source: FrameSource
    publisher: Publisher
    thread: threading.Thread = field(init=False)
    error: InspectorError | None = None

    @property
    def camera_id(self) -> str:
        return self.config.settings.camera_id

    @property
    def up(self) -> bool:
        return self.source.up if isinstance(self.source, LiveSource) else self.thread.is_alive()


class LineProducer:
    """Opens every camera's source (a bad one is a ConfigError before anything starts), then publishes them."""

    def __init__(self, settings: Settings, cameras: list[CameraConfig], registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics: ProducerMetrics = build_producer_metrics(self.registry)
        budget = settings.producer.buffer_bytes
        self.metrics.buffer_budget_bytes.set(budget)
        sources: list[FrameSource] = []
        try:
            for camera in cameras:
                sources.append(open_source(camera, self.metrics.camera(camera.settings.camera_id)))
            self.sender = FrameSender(settings.kafka, budget_bytes=budget, client_id=f"producer-{cameras[0].settings.camera_id}",
                                      on_buffer_change=self.metrics.buffer_bytes.set)
        except BaseException:
            for source in sources:
                source.close()
            raise
        self.cameras: list[RunningCamera] = []
        for camera, source in zip(cameras, sources):
            publisher = Publisher(settings.kafka, camera.settings, sender=self.sender,
                                  metrics=self.metrics.camera(camera.settings.camera_id))
            running = RunningCamera(camera, source, publisher)
            running.thread = threading.Thread(target=self._publish, args=(running,), daemon=True,
                                              name=f"publish-{camera.settings.camera_id}")
            self.cameras.append(running)
        self.endpoint: HttpEndpoint | None = None
        port = settings.producer.metrics_port
        if port is not None:
            self.endpoint = HttpEndpoint(settings.http.host, port, self.registry, self.ready)

    def _publish(self, camera: RunningCamera) -> None:
        try:
            camera.publisher.publish(camera.source)
        except InspectorError as exc:
            camera.error = exc
            log.error("camera %s stopped: %s", camera.camera_id, exc)

    def ready(self) -> bool:
        """Connected to Kafka, and at least one camera delivering."""
        ok = self.sender.connected() and any(camera.up for camera in self.cameras)
        self.metrics.ready.set(1 if ok else 0)
        return ok

    def run(self) -> dict[str, PublishStats]:
        """Publish until every source has ended or `stop()`; then send what is buffered. Stats per camera."""
        if self.endpoint is not None:
            self.endpoint.start()
            log.info("producer metrics on http://%s/metrics", self.endpoint.address)
        for camera in self.cameras:
            camera.thread.start()
        while alive := [camera.thread for camera in self.cameras if camera.thread.is_alive()]:
            self.ready()
            alive[0].join(timeout=1.0)
        return {camera.camera_id: camera.publisher.stats for camera in self.cameras}

    def stop(self) -> None:
        for camera in self.cameras:
            camera.source.stop()

    def close(self) -> None:
        for camera in self.cameras:
            camera.source.close()
        self.sender.close()
        if self.endpoint is not None:
            self.endpoint.close()
