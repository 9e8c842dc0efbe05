"""`inspector serve`: wires one worker process (model on its device, HTTP endpoint, Kafka clients, signals)
and runs the hot loop of `inspector.stream.worker` until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from inspector.http_endpoint import HttpEndpoint
from inspector.kafka.transport import client_types
from inspector.model import artifact as artifact_io
from inspector.model.null import NullModel
from inspector.model.runtime import ModelRunner, pick_device
from inspector.process import freeze_long_lived_objects, shorten_gil_switch_interval, stop_on_signals
from inspector.settings import Settings
from inspector.stream.metrics import build_metrics
from inspector.stream.worker import Worker

log = logging.getLogger("inspector.stream.worker")


def serve(settings: Settings, registry: CollectorRegistry | None = None,
          on_listening: Callable[[int], None] | None = None) -> int:
    """Load and warm the model, then join the group and run until SIGTERM/SIGINT; returns the exit code.
    `on_listening` is told the HTTP endpoint's port (a supervised worker listens on a free one)."""
    shorten_gil_switch_interval()
    registry = registry or CollectorRegistry()
    metrics = build_metrics(registry)
    device = pick_device(settings.model.device)
    artifact = artifact_io.load(Path(settings.model.path), device)
    artifact.threshold  # noqa: B018 - refuse an uncalibrated model at start-up
    if settings.model.null:
        artifact = replace(artifact, model=NullModel(artifact.config), model_id="null")
    runner = ModelRunner(artifact, device, bf16=settings.model.bf16, compile=settings.model.compile,
                         cpu_streams=settings.model.cpu_streams, cuda_graphs=settings.model.cuda_graphs)

    worker_box: list[Worker] = []
    endpoint = HttpEndpoint(settings.http.host, settings.http.port, registry,
                            ready=lambda: bool(worker_box) and worker_box[0].ready()).start()
    log.info("metrics and health on http://%s/metrics", endpoint.address)
    if on_listening is not None:
        on_listening(endpoint.port)
    max_request = settings.limits.max_frame_bytes + 64 * 1024  # a dead letter carries the original frame
    consumer_type, producer_type = client_types(settings.kafka.transport)
    consumer = consumer_type(settings.kafka, max_poll_records=settings.batch.max_size)
    try:
        producer = producer_type(settings.kafka, max_request_bytes=max_request)
    except Exception:
        consumer.close()
        raise
    worker = Worker(settings, runner, consumer, producer, metrics)
    worker_box.append(worker)

    stop_on_signals(worker.stop, "finishing the batch in hand, then stopping")
    try:
        # Warm up (and compile) before joining the group: a slow first batch would trigger a rebalance.
        warm_s = worker.warm_up()
        log.info("model %s:%s on %s, warmed up in %.1fs", artifact.model_id, artifact.model_version, device, warm_s)
        freeze_long_lived_objects()
        worker.run()
    finally:
        gc.unfreeze()  # see freeze_long_lived_objects
        producer.close()
        consumer.close()
        endpoint.close()
    log.info("stopped cleanly")
    return 0
