"""`inspector kafka-health`: probe the cluster every few seconds and serve the result on /metrics until
SIGTERM/SIGINT; /readyz answers 200 while the last probe reached the cluster."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from inspector.errors import ConfigError, TransportError
from inspector.http_endpoint import HttpEndpoint
from inspector.kafka.cluster_health import ClusterHealth, ClusterHealthProbe
from inspector.kafka_health.metrics import KafkaHealthMetrics, build_kafka_health_metrics
from inspector.process import stop_on_signals
from inspector.settings import Settings

log = logging.getLogger("inspector.kafka_health")


def probe_once(read: Callable[[], ClusterHealth], metrics: KafkaHealthMetrics) -> ClusterHealth | None:
    """One probe (`read`, e.g. ClusterHealthProbe.read) into the metrics; None (and up 0) when the cluster could
    not be read."""
    try:
        health = read()
    except TransportError as exc:
        metrics.record_unreachable()
        log.warning("%s", exc)
        return None
    metrics.record(health)
    return health


def serve_kafka_health(settings: Settings, interval_s: float, registry: CollectorRegistry | None = None) -> int:
    """Probe every `interval_s` seconds until a signal; a cluster that cannot be reached is reported, not fatal."""
    if not interval_s > 0:
        raise ConfigError(f"--interval must be a positive number of seconds, not {interval_s}")
    registry = registry or CollectorRegistry()
    metrics = build_kafka_health_metrics(registry)
    stop = threading.Event()
    reached = threading.Event()
    endpoint = HttpEndpoint(settings.http.host, settings.http.port, registry, ready=reached.is_set).start()
    log.info("Kafka health of %s on http://%s/metrics, every %g s", settings.kafka.bootstrap_servers,
             endpoint.address, interval_s)

    stop_on_signals(stop.set, "stopping")
    probe = ClusterHealthProbe(settings.kafka)
    last: tuple[int, int, int] | None = None
    try:
        while not stop.is_set():
            health = probe_once(probe.read, metrics)
            if health is None:
                reached.clear()
                last = None
            else:
                reached.set()
                # Logged when it changes, so the log tells when a broker left and when its partitions caught up.
                now = (health.brokers, sum(t.under_replicated for t in health.topics.values()),
                       sum(t.offline for t in health.topics.values()))
                if now != last:
                    log.info("%d brokers; %d under-replicated and %d offline partitions", *now)
                last = now
            stop.wait(interval_s)
    finally:
        probe.close()
        endpoint.close()
    log.info("stopped cleanly")
    return 0
