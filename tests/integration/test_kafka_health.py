"""The Kafka health probe against the real broker: what it counts on a healthy single broker, a topic that asks for
more in-sync replicas than it has, and a broker that is not there."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from inspector.errors import TransportError
from inspector.kafka.cluster_health import ClusterHealth, ClusterHealthProbe, TopicHealth
from inspector.kafka.local_broker import free_port
from inspector.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def read_when_listed(settings: KafkaSettings, *topics: str, timeout_s: float = 15) -> ClusterHealth:
    """The probe's reading once the metadata lists every one of `topics` (a topic just created may be missing)."""
    probe = ClusterHealthProbe(settings)
    deadline = time.monotonic() + timeout_s
    try:
        health = probe.read()
        while not set(topics) <= set(health.topics) and time.monotonic() < deadline:
            time.sleep(0.2)
            health = probe.read()
        return health
    finally:
        probe.close()


def test_a_healthy_single_broker_has_one_broker_and_no_partition_in_trouble(topics) -> None:
    health = read_when_listed(topics.kafka_settings(), topics.frames, topics.alerts)
    assert health.brokers == 1
    assert health.topics[topics.frames] == TopicHealth(partitions=2, under_replicated=0, offline=0, under_min_isr=0)
    assert health.topics[topics.alerts] == TopicHealth(partitions=1, under_replicated=0, offline=0, under_min_isr=0)
    assert all(t.under_replicated == 0 and t.offline == 0 for t in health.topics.values()), health.topics


def test_a_topic_asking_for_two_in_sync_replicas_of_one_is_under_min_isr(topics) -> None:
    """min.insync.replicas is read per topic: 2 on a one-replica topic refuses acks=all writes on every partition
    (our settings refuse to create such a topic, so the admin client makes it here)."""
    strict = f"{topics.frames}-strict"
    admin = KafkaAdminClient(bootstrap_servers=topics.bootstrap)
    try:
        admin.create_topics([NewTopic(strict, 3, 1, topic_configs={"min.insync.replicas": "2"})])
    finally:
        admin.close()
    health = read_when_listed(topics.kafka_settings(), strict, topics.frames)
    assert health.topics[strict] == TopicHealth(partitions=3, under_replicated=0, offline=0, under_min_isr=3)
    assert health.topics[topics.frames].under_min_isr == 0


def test_no_broker_is_a_transport_error_within_the_timeout() -> None:
    probe = ClusterHealthProbe(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000))
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot reach Kafka"):
        probe.read()
    assert time.monotonic() - started < 10
    probe.close()
