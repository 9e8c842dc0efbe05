"""kafka-python clients built from our settings (connection arguments, the partitioner, topic creation), and the
helpers the group consumer, the producers and the readers share."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from inspector.errors import ConfigError, TransportError
from inspector.kafka.transport import ConsumedRecord, Partition
from inspector.settings import KafkaSettings


def client_config(settings: KafkaSettings) -> dict[str, object]:
    """kafka-python connection arguments for every client of ours (producers, consumers, admin)."""
    try:
        config = settings.client_config()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {
        **config,
        # kafka-python waits bootstrap_timeout_ms (30 s) for a first broker, apart from request_timeout_ms: one bound.
        "bootstrap_timeout_ms": settings.request_timeout_ms,
        # Its reconnect backoff grows to 30 s while a broker is down, so a worker sat idle up to 30 s after the
        # broker was back (RELIABILITY.md, broker outage); 1 s is the Java client's default.
        "reconnect_backoff_max_ms": 1000,
    }


def _accepts_connections(bootstrap_servers: str) -> bool:
    """True when some bootstrap server accepts a TCP connection (the broker is there, whatever it says next)."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=2).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def unreachable_error(settings: KafkaSettings, exc: Exception) -> TransportError:
    # kafka-python retries a refused SASL login until its bootstrap times out and then reports only the timeout;
    # a broker that accepts the connection but never lets us bootstrap is, with SASL, almost always the login.
    if settings.security_protocol.startswith("SASL") and _accepts_connections(settings.bootstrap_servers):
        return TransportError(f"Kafka at {settings.bootstrap_servers} accepts connections but not the "
                              f"{settings.sasl_mechanism} login of user {settings.sasl_username!r}: check "
                              f"kafka.sasl_username and kafka.sasl_password")
    return TransportError(f"cannot reach Kafka at {settings.bootstrap_servers}: {type(exc).__name__}: {exc}")


def _consumer(settings: KafkaSettings, **options: object) -> KafkaConsumer:
    """A KafkaConsumer on our connection settings; TransportError when the broker cannot be reached."""
    try:
        return KafkaConsumer(**client_config(settings), **options)
    except (KafkaError, OSError) as exc:
        raise unreachable_error(settings, exc) from None


class _KeyHashingPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, as the Java client), each key's hash remembered:
    the keys are camera ids, a few hundred at most, and hashing one in pure Python for every record was a tenth
    of the time of a send."""

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(self, topic: str, key: object, serialized_key: bytes | None, value: object,
                  serialized_value: object, cluster: object) -> int:
        if serialized_key is None:
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        known = cluster.partitions_for_topic(topic)  # type: ignore[attr-defined]
        if not known:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        hashed = self._hashes.get(serialized_key)
        if hashed is None:
            if len(self._hashes) >= 4096:
                self._hashes.clear()
            hashed = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        partitions = sorted(known)
        return int(partitions[hashed % len(partitions)])


def _producer(settings: KafkaSettings, **options: object) -> KafkaProducer:
    """An acks=all, idempotent KafkaProducer on our connection settings; TransportError when the broker cannot be
    reached."""
    try:
        return KafkaProducer(
            **client_config(settings),
            acks="all",
            enable_idempotence=True,  # broker de-duplicates retries: no doubles from our own resends
            linger_ms=settings.linger_ms,
            delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
            partitioner=_KeyHashingPartitioner(),
            **options,
        )
    except (KafkaError, OSError) as exc:
        raise unreachable_error(settings, exc) from None


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """TransportError for what a read raises (kafka-python also asserts on a connection lost mid-request)."""
    try:
        yield
    except (KafkaError, AssertionError, OSError) as exc:
        raise TransportError(f"{what} failed: {type(exc).__name__}: {exc}") from None


def _partitions(topic_partitions: Iterable[TopicPartition]) -> list[Partition]:
    return [Partition(tp.topic, tp.partition) for tp in topic_partitions]


def _records(batches: dict[TopicPartition, list[ConsumedRecord]]) -> list[ConsumedRecord]:
    """A poll's records, partition by partition (kafka-python's ConsumerRecord is a `transport.ConsumedRecord`)."""
    return [record for records in batches.values() for record in records]


def create_topics(settings: KafkaSettings, partitions: dict[str, int]) -> None:
    """Create topics that do not exist yet (idempotent), with the settings' replication factor and minimum in-sync
    replicas, and never an out-of-sync replica elected leader (it would drop acknowledged records)."""
    try:
        admin = KafkaAdminClient(**client_config(settings), client_id=f"{settings.client_id}-admin")
    except (KafkaError, OSError) as exc:
        raise unreachable_error(settings, exc) from None
    try:
        existing = set(admin.list_topics())
        config = {"min.insync.replicas": str(settings.min_insync_replicas), "unclean.leader.election.enable": "false"}
        new = [NewTopic(name, n, settings.replication_factor, topic_configs=config)
               for name, n in partitions.items() if name and name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    except KafkaError as exc:
        raise TransportError(f"could not create topics {sorted(partitions)}: {exc}") from None
    finally:
        admin.close()


class _Rebalance(ConsumerRebalanceListener):
    """Our callbacks as a kafka-python rebalance listener, given `transport.Partition`s (the group consumer's and the
    history feed's)."""

    def __init__(self, on_revoked: Callable[[list[Partition]], None],
                 on_assigned: Callable[[list[Partition]], None]) -> None:
        self._on_revoked, self._on_assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._on_revoked(_partitions(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._on_assigned(_partitions(assigned))
