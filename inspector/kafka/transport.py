"""The Kafka boundary the hot loop is typed against: a consumed record, the frames consumer and the results
producer, as protocols. `inspector.kafka.kafka_python` (kafka-python) and `inspector.kafka.confluent` (librdkafka)
implement them; partitions cross the boundary as kafka-python's `TopicPartition` with either library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kafka import TopicPartition

from inspector.contracts import Headers
from inspector.errors import TransportError

Offsets = dict[TopicPartition, int]  # next offset to read, per partition


class ConsumedRecord(Protocol):
    """One record of the frames topic, as the hot loop reads it (kafka-python's ConsumerRecord is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...


class DeliveryReport(Protocol):
    """The outcome of one sent record, known once the producer is flushed (kafka-python's future is one)."""

    @property
    def is_done(self) -> bool: ...
    @property
    def exception(self) -> object: ...
    def failed(self) -> bool: ...


@dataclass
class Pending:
    """A sent record whose acknowledgement we wait for before committing the offsets behind it."""

    future: DeliveryReport
    what: str


def check_acknowledged(pending: Iterable[Pending], timeout_s: float) -> None:
    """After a flush: TransportError naming the first record that was not acknowledged, or failed."""
    for p in pending:
        if not p.future.is_done:
            raise TransportError(f"{p.what} not acknowledged within {timeout_s:.0f}s")
        if p.future.failed():
            raise TransportError(f"{p.what} was not delivered: {p.future.exception}")


def next_offsets(records: Iterable[ConsumedRecord]) -> Offsets:
    """Per partition, the offset after the last record: what the group should read next."""
    offsets: Offsets = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


def offsets_of(positions: dict[tuple[str, int], int]) -> Offsets:
    """{(topic, partition): offset} as the transport's Offsets (callers outside this package need no client type)."""
    return {TopicPartition(topic, partition): offset for (topic, partition), offset in positions.items()}


def first_offsets(records: Iterable[ConsumedRecord]) -> Offsets:
    """Per partition, the offset of the first record: where to read again from if these are dropped."""
    offsets: Offsets = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = min(offsets.get(tp, r.offset), r.offset)
    return offsets


class FrameConsumer(Protocol):
    """The frames topic, consumed in a group with manual commits; Kafka's errors leave as TransportError."""

    def subscribe(self, on_revoked: Callable[[list[TopicPartition]], None],
                  on_assigned: Callable[[list[TopicPartition]], None]) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> Sequence[ConsumedRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` (partition order kept)."""
        ...

    def commit(self, offsets: Offsets) -> bool:
        """Commit; False when the group has moved on (the partitions' next owner reads the records again)."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` from `offset` next (safe inside the assignment callback)."""
        ...

    def group_metadata(self) -> object: ...
    def assignment(self) -> set[TopicPartition]: ...
    def lag(self) -> dict[TopicPartition, int]: ...
    def close(self) -> None: ...


class ResultProducer(Protocol):
    """Alerts, scores and dead letters: acks=all, idempotent, optionally transactional."""

    @property
    def transactional(self) -> bool: ...

    def connected(self) -> bool:
        """True once bootstrapped and as long as the last flush was acknowledged."""
        ...

    def begin(self) -> None: ...
    def send(self, topic: str, key: str, value: bytes, headers: Headers, what: str) -> Pending: ...

    def flush_and_check(self, pending: Iterable[Pending]) -> None:
        """Block until every pending record is acknowledged; TransportError if any was not."""
        ...

    def commit_with_offsets(self, offsets: Offsets, group_metadata: object) -> None:
        """Exactly-once: the consumed offsets become part of the transaction, then it commits."""
        ...

    def abort(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> None: ...


def client_types(transport: str) -> tuple[Callable[..., FrameConsumer], Callable[..., ResultProducer]]:
    """(consumer class, producer class) of the chosen Kafka client library (mypy checks both implement the
    protocols above); imported here, on demand, so that librdkafka is needed only when chosen."""
    if transport == "confluent":
        from inspector.kafka.confluent import ConfluentFrameConsumer, ConfluentResultProducer

        return ConfluentFrameConsumer, ConfluentResultProducer
    from inspector.kafka.kafka_python import KafkaPythonFrameConsumer, KafkaPythonResultProducer

    return KafkaPythonFrameConsumer, KafkaPythonResultProducer
