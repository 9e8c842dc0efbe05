"""Every Prometheus metric of `inspector kafka-health`, built into a registry that is passed in.

The topic label's values are the cluster's topics, a small set the operator creates (kafka-init, `inspector topics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from inspector.kafka.cluster_health import ClusterHealth

NAMESPACE = "inspector"
SUBSYSTEM = "kafka"


@dataclass(frozen=True)
class KafkaHealthMetrics:
    up: Gauge  # 1 when the last probe read the cluster's metadata
    brokers: Gauge  # brokers registered at the last probe (0 when it failed)
    partitions: Gauge  # (topic)
    under_replicated: Gauge  # (topic)
    offline: Gauge  # (topic)
    under_min_isr: Gauge  # (topic)
    _topics: set[str] = field(default_factory=set)  # the topic label values exported now

    def record(self, health: ClusterHealth) -> None:
        """Export one probe's findings; a topic that is gone loses its series."""
        self.up.set(1)
        self.brokers.set(health.brokers)
        for topic, counts in health.topics.items():
            self.partitions.labels(topic).set(counts.partitions)
            self.under_replicated.labels(topic).set(counts.under_replicated)
            self.offline.labels(topic).set(counts.offline)
            self.under_min_isr.labels(topic).set(counts.under_min_isr)
        self._drop_topics_except(set(health.topics))

    def record_unreachable(self) -> None:
        """The cluster did not answer: up 0, and no per-topic series, since their last values are no longer known."""
        self.up.set(0)
        self.brokers.set(0)
        self._drop_topics_except(set())

    def _drop_topics_except(self, keep: set[str]) -> None:
        for topic in self._topics - keep:
            for gauge in (self.partitions, self.under_replicated, self.offline, self.under_min_isr):
                gauge.remove(topic)
        self._topics.clear()
        self._topics.update(keep)


def build_kafka_health_metrics(registry: CollectorRegistry) -> KafkaHealthMetrics:
    """Create the probe's metrics in `registry` (a fresh registry per test)."""

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry)

    return KafkaHealthMetrics(
        up=gauge("up", "1 when the last probe read the Kafka cluster's metadata, 0 when it could not"),
        brokers=gauge("brokers", "Brokers registered in the cluster at the last probe"),
        partitions=gauge("partitions", "Partitions of the topic", ("topic",)),
        under_replicated=gauge("under_replicated_partitions",
                               "Partitions of the topic with fewer in-sync replicas than replicas", ("topic",)),
        offline=gauge("offline_partitions", "Partitions of the topic without a leader", ("topic",)),
        under_min_isr=gauge("under_min_isr_partitions",
                            "Partitions of the topic with fewer in-sync replicas than its min.insync.replicas",
                            ("topic",)),
    )
