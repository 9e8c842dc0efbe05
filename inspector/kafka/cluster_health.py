"""The Kafka cluster's health from its metadata: brokers registered and, per topic, the partitions that are
under-replicated, offline or under their minimum in-sync replicas (what `inspector kafka-health` exports).

Read with kafka-python's admin client; anything Kafka raises leaves this module as TransportError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from inspector.errors import TransportError
from inspector.kafka.kafka_python.clients import client_config, unreachable_error
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)

MIN_ISR_CONFIG = "min.insync.replicas"
NO_LEADER = -1  # the metadata's leader id of a partition no broker leads
# A probe that waits the clients' 30 s for an answer would report a lost cluster late and stop slowly.
PROBE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class TopicHealth:
    """One topic's partitions by state (a partition may count in several)."""

    partitions: int
    under_replicated: int  # in-sync replicas fewer than the assigned replicas
    offline: int  # no leader: neither readable nor writable
    under_min_isr: int  # in-sync replicas fewer than min.insync.replicas: acks=all producers are refused


@dataclass(frozen=True)
class ClusterHealth:
    """What one look at the cluster's metadata found."""

    brokers: int  # brokers registered in the cluster and not fenced
    topics: dict[str, TopicHealth]


def topic_health(partitions: Iterable[Mapping[str, Any]], min_insync_replicas: int) -> TopicHealth:
    """Count a topic's partitions by state from their metadata (kafka-python's `describe_topics` partitions:
    leader_id, replica_nodes, isr_nodes)."""
    found = list(partitions)
    return TopicHealth(
        partitions=len(found),
        under_replicated=sum(len(p["isr_nodes"]) < len(p["replica_nodes"]) for p in found),
        offline=sum(p["leader_id"] == NO_LEADER for p in found),
        under_min_isr=sum(len(p["isr_nodes"]) < min_insync_replicas for p in found),
    )


def cluster_health(brokers: Iterable[Mapping[str, Any]], topics: Iterable[Mapping[str, Any]],
                   min_insync_replicas: Mapping[str, int]) -> ClusterHealth:
    """The cluster's health from its brokers (`describe_cluster`), its topics' metadata and each topic's
    min.insync.replicas (1, the broker's default, for a topic not in the map). A fenced broker (registered, but
    its heartbeats have stopped) does not count, nor does a topic the metadata reports with an error."""
    return ClusterHealth(
        brokers=sum(not b.get("is_fenced", False) for b in brokers),
        topics={t["name"]: topic_health(t["partitions"], min_insync_replicas.get(t["name"], 1))
                for t in topics if t.get("error_code", 0) == 0},
    )


class ClusterHealthProbe:
    """Reads the cluster's health on demand over one admin connection, opened (again) when needed."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings.model_copy(
            update={"request_timeout_ms": min(settings.request_timeout_ms, PROBE_TIMEOUT_MS)})
        self._admin: KafkaAdminClient | None = None

    def read(self) -> ClusterHealth:
        """One look at the cluster; TransportError when it cannot be reached or does not answer."""
        admin = self._connect()
        try:
            brokers = admin.describe_cluster()["brokers"]
            topics = admin.describe_topics()
            min_isr = self._min_insync_replicas(admin, [t["name"] for t in topics if t.get("error_code", 0) == 0])
        except (KafkaError, AssertionError, OSError) as exc:
            # A fresh connection next time: a client that lost its broker mid-request (kafka-python may assert then)
            # does not always recover by itself.
            self.close()
            raise TransportError(f"reading the metadata of Kafka at {self._settings.bootstrap_servers} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
        return cluster_health(brokers, topics, min_isr)

    def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            try:
                admin.close()
            except (KafkaError, OSError) as exc:
                log.debug("closing the admin client: %s", exc)

    def _connect(self) -> KafkaAdminClient:
        if self._admin is None:
            try:
                self._admin = KafkaAdminClient(**client_config(self._settings),
                                               client_id=f"{self._settings.client_id}-health")
            except (KafkaError, OSError) as exc:
                raise unreachable_error(self._settings, exc) from None
        return self._admin

    @staticmethod
    def _min_insync_replicas(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
        """Each topic's min.insync.replicas, in one request ("all": a topic left at the broker's default too)."""
        if not topics:
            return {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, [MIN_ISR_CONFIG]) for name in topics]
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
        return {name: int(configs[MIN_ISR_CONFIG]["value"]) for name, configs in described.items()
                if configs.get(MIN_ISR_CONFIG, {}).get("value") is not None}
