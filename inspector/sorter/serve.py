"""`inspector sort`: wires one sorter process (line file, actuators, Kafka clients, HTTP endpoint, signals) and
runs the loop of `inspector.sorter.service` until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging

from prometheus_client import CollectorRegistry

from inspector.errors import ConfigError
from inspector.http_endpoint import HttpEndpoint
from inspector.kafka.transport import client_types
from inspector.process import (
    freeze_long_lived_objects,
    raise_scheduling_priority,
    shorten_gil_switch_interval,
    stop_on_signals,
)
from inspector.settings import Settings
from inspector.sorter.actuators import Actuator, build_actuator
from inspector.sorter.line_file import load_line
from inspector.sorter.metrics import build_sorter_metrics
from inspector.sorter.service import Sorter

log = logging.getLogger("inspector.sorter")


def serve_sorter(settings: Settings, registry: CollectorRegistry | None = None) -> int:
    """Read the line file, connect the actuators (in the background) and Kafka, then sort until a signal."""
    # As the worker does: a lane's thread that wakes to fire waits for the GIL behind the Kafka client's Python.
    shorten_gil_switch_interval()
    nice = raise_scheduling_priority(settings.sorter.nice, "the sorter")  # first: its threads inherit it
    if settings.sorter.line_file is None:
        raise ConfigError("the sorter needs a line file: --line FILE or INSPECTOR_SORTER__LINE_FILE")
    line = load_line(settings.sorter.line_file)
    registry = registry or CollectorRegistry()
    metrics = build_sorter_metrics(registry)
    actuators: dict[str, Actuator] = {lane.lane_id: build_actuator(lane.lane_id, lane.actuator, settings.sorter)
                                      for lane in line.lanes}
    sorter_box: list[Sorter] = []
    endpoint = HttpEndpoint(settings.sorter.host, settings.sorter.port, registry,
                            ready=lambda: bool(sorter_box) and sorter_box[0].ready()).start()
    log.info("sorter metrics and health on http://%s/metrics (nice %d)", endpoint.address, nice)
    kafka = settings.kafka.model_copy(update={"group_id": settings.sorter.group_id,
                                              "client_id": f"{settings.kafka.client_id}-sorter"})
    consumer_type, producer_type = client_types(kafka.transport)
    try:
        consumer = consumer_type(kafka, max_poll_records=500, topic=kafka.alerts_topic)
    except Exception:
        endpoint.close()
        raise
    try:
        producer = producer_type(kafka.model_copy(update={"exactly_once": False}), max_request_bytes=2 * 1024 * 1024)
    except Exception:
        consumer.close()
        endpoint.close()
        raise
    sorter = Sorter(settings, line, consumer, producer, actuators, metrics)
    sorter_box.append(sorter)

    stop_on_signals(sorter.stop, "firing what is due, then stopping")
    for lane in line.lanes:
        log.info("lane %s: cameras %s -> %s", lane.lane_id, ", ".join(c.camera_id for c in lane.cameras),
                 actuators[lane.lane_id].describe())
    try:
        freeze_long_lived_objects()  # a full collection's pause would land between an alert and its decision
        sorter.run()
    finally:
        gc.unfreeze()  # see freeze_long_lived_objects
        producer.close()
        consumer.close()
        endpoint.close()
    log.info("stopped cleanly")
    return 0
