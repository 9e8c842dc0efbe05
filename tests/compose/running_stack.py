"""The running compose stack as the tests see it from the host: its services, its brokers' records and metadata,
and its Prometheus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from inspector.settings import KafkaSettings
from tests.compose.stack import Compose, wait_until
from tests.deploy_expressions import instant_query

SERVICES = ["kafka", "kafka-init", "inspector", "producer", "standin-plc", "sorter", "prometheus"]
# The cluster variant: docker-compose.cluster.yml's three brokers in place of `kafka`, and its health probe.
BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
CLUSTER_SERVICES = [*BROKERS, *SERVICES[1:], "kafka-health"]


@dataclass
class Stack:
    compose: Compose
    bootstrap: str
    prometheus_url: str
    figures: dict[str, Any] = field(default_factory=dict)
    cluster: bool = False  # three brokers (docker-compose.cluster.yml)

    @property
    def services(self) -> list[str]:
        return CLUSTER_SERVICES if self.cluster else SERVICES

    def query(self, expr: str) -> tuple[list[dict[str, Any]], str]:
        """Prometheus's answer to an instant query: (series, error text or "")."""
        return instant_query(self.prometheus_url, expr)

    def series(self, expr: str) -> list[dict[str, Any]]:
        return self.query(expr)[0]

    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap)

    def lag(self) -> int:
        """Frames not yet committed by the inspector group, over every partition of `frames`."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            committed = admin.list_group_offsets("inspector")["inspector"]
            partitions = [TopicPartition("frames", p) for p in consumer.partitions_for_topic("frames")]
            end = consumer.end_offsets(partitions)
            return sum(end[tp] - (committed[tp].offset if tp in committed else 0) for tp in partitions)
        finally:
            admin.close()
            consumer.close()

    def read_all(self, topic: str) -> list[Any]:
        """Every record of a topic, from the beginning to its end now."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            end = consumer.end_offsets(partitions)
            records: list[Any] = []

            def at_end() -> bool:
                for batch in consumer.poll(timeout_ms=1000, max_records=10_000).values():
                    records.extend(batch)
                return all(consumer.position(tp) >= end[tp] for tp in partitions)

            wait_until(f"the end of {topic}", at_end, timeout_s=300, every_s=0)
            return records
        finally:
            consumer.close()

    def frames_leaders(self) -> dict[int, int]:
        """Partition of `frames` -> the node id of its leader (-1 for none), as the cluster's metadata says."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            (topic,) = admin.describe_topics(["frames"])
            return {p["partition_index"]: p["leader_id"] for p in topic["partitions"]}
        finally:
            admin.close()

    def prometheus_value(self, expr: str) -> float | None:
        series = self.series(expr)
        return float(series[0]["value"][1]) if series else None

    def new_leader(self, partition: int, old: int) -> int | None:
        """The partition's leader once it is another broker than `old`; None while it is not (or the metadata fails)."""
        try:
            leader = self.frames_leaders()[partition]
        except (KafkaError, OSError, AssertionError):
            return None
        return leader if leader not in (old, -1) else None
