"""The Kafka health probe's counting and its gauges, on metadata written by hand (no broker)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from inspector.errors import TransportError
from inspector.kafka.cluster_health import ClusterHealth, TopicHealth, cluster_health, topic_health
from inspector.kafka_health.metrics import build_kafka_health_metrics
from inspector.kafka_health.serve import probe_once


def partition(index: int, leader: int, replicas: list[int], isr: list[int]) -> dict[str, Any]:
    """One partition as kafka-python's describe_topics reports it."""
    return {"partition_index": index, "leader_id": leader, "replica_nodes": replicas, "isr_nodes": isr,
            "error_code": 0, "offline_replicas": [r for r in replicas if r not in isr]}


def test_a_healthy_three_broker_topic_counts_nothing() -> None:
    parts = [partition(i, 1 + i % 3, [1, 2, 3], [1, 2, 3]) for i in range(6)]
    assert topic_health(parts, min_insync_replicas=2) == TopicHealth(6, 0, 0, 0)


def test_a_lost_broker_under_replicates_its_partitions_and_a_leaderless_one_is_offline() -> None:
    parts = [
        partition(0, 1, [1, 2, 3], [1, 2]),  # broker 3 gone: under-replicated, still at min ISR 2
        partition(1, 2, [2, 3, 1], [2]),  # two gone: under min ISR too
        partition(2, -1, [3, 1, 2], [3]),  # no leader: offline (and under min ISR)
        partition(3, 1, [1, 2, 3], [1, 2, 3]),
    ]
    assert topic_health(parts, min_insync_replicas=2) == TopicHealth(
        partitions=4, under_replicated=3, offline=1, under_min_isr=2)
    # With min.insync.replicas 1, a single in-sync replica is enough.
    assert topic_health(parts, min_insync_replicas=1).under_min_isr == 0


def test_cluster_health_counts_unfenced_brokers_and_skips_topics_reported_with_an_error() -> None:
    topics = [
        {"name": "frames", "error_code": 0, "partitions": [partition(0, 1, [1, 2], [1])]},
        {"name": "gone", "error_code": 3, "partitions": []},  # UNKNOWN_TOPIC_OR_PARTITION
        {"name": "alerts", "error_code": 0, "partitions": [partition(0, 2, [2, 1], [2, 1])]},
    ]
    brokers = [{"broker_id": 1, "is_fenced": False}, {"broker_id": 2, "is_fenced": False},
               {"broker_id": 3, "is_fenced": True}]  # killed: still registered until the controller drops it
    health = cluster_health(brokers, topics, {"frames": 2})
    assert health.brokers == 2
    assert health.topics == {"frames": TopicHealth(1, 1, 0, 1), "alerts": TopicHealth(1, 0, 0, 0)}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"inspector_kafka_{name}", labels)


class _Probe:
    """Answers each read() with the next of `answers` (a ClusterHealth, or a TransportError to raise)."""

    def __init__(self, *answers: ClusterHealth | TransportError) -> None:
        self.answers = list(answers)

    def read(self) -> ClusterHealth:
        answer = self.answers.pop(0)
        if isinstance(answer, TransportError):
            raise answer
        return answer


def test_gauges_follow_the_probe_and_drop_topics_it_no_longer_knows() -> None:
    registry = CollectorRegistry()
    metrics = build_kafka_health_metrics(registry)
    probe = _Probe(
        ClusterHealth(3, {"frames": TopicHealth(12, 4, 1, 2), "old": TopicHealth(1, 0, 0, 0)}),
        ClusterHealth(3, {"frames": TopicHealth(12, 0, 0, 0)}),
        TransportError("cannot reach Kafka"),
    )
    assert probe_once(probe.read, metrics) is not None
    assert sample(registry, "up") == 1 and sample(registry, "brokers") == 3
    assert sample(registry, "under_replicated_partitions", topic="frames") == 4
    assert sample(registry, "offline_partitions", topic="frames") == 1
    assert sample(registry, "under_min_isr_partitions", topic="frames") == 2
    assert sample(registry, "partitions", topic="old") == 1

    assert probe_once(probe.read, metrics) is not None
    assert sample(registry, "under_replicated_partitions", topic="frames") == 0
    assert sample(registry, "partitions", topic="old") is None

    # Unreachable: up 0, and no per-topic value that would claim to know the partitions' state.
    assert probe_once(probe.read, metrics) is None
    assert sample(registry, "up") == 0 and sample(registry, "brokers") == 0
    assert sample(registry, "under_replicated_partitions", topic="frames") is None
