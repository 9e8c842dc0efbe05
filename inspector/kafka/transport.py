"""The Kafka boundary everything else is typed against: a partition, a consumed record, and as protocols the frames
consumer and the results producer (the hot loop), the producers' frame producer, and the readers of the UI and the
tools (a history feed; partitions read from chosen offsets). `inspector.kafka.kafka_python` (kafka-python) and
`inspector.kafka.confluent` (librdkafka) implement them; `kafka.transport` chooses one, and only this package
imports a Kafka client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from inspector.contracts import Headers
from inspector.errors import TransportError
from inspector.settings import KafkaSettings


class Partition(NamedTuple):
    """One partition of a topic (equal to, and hashed as, kafka-python's `TopicPartition` of the same pair)."""

    topic: str
    partition: int


Offsets = dict[Partition, int]  # next offset to read, per partition


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
    for record in records:
        partition = Partition(record.topic, record.partition)
        offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
    return offsets


def offsets_of(positions: dict[tuple[str, int], int]) -> Offsets:
    """{(topic, partition): offset} as the transport's Offsets."""
    return {Partition(topic, partition): offset for (topic, partition), offset in positions.items()}


class FrameConsumer(Protocol):
    """The frames topic, consumed in a group with manual commits; Kafka's errors leave as TransportError. Every
    assigned partition is read from its committed offset, also one this member kept across the rebalance."""

    def subscribe(self, on_revoked: Callable[[list[Partition]], None],
                  on_assigned: Callable[[list[Partition]], None]) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> Sequence[ConsumedRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` (partition order kept)."""
        ...

    def commit(self, offsets: Offsets) -> bool:
        """Commit; False when the group has moved on (the partitions' next owner reads the records again)."""
        ...

    def commit_async(self, offsets: Offsets) -> None:
        """Send a commit without waiting for it; a failure is logged (the next commit carries later offsets, and
        the records behind a lost one are read again, which at-least-once allows)."""
        ...

    def rewind(self) -> None:
        """From the next poll on, read every assigned partition again from its committed offset (records fetched
        and not yet returned are dropped)."""
        ...

    def group_metadata(self) -> object: ...
    def assignment(self) -> set[Partition]: ...
    def lag(self) -> dict[Partition, int]: ...
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

    def acknowledged(self, pending: Sequence[Pending]) -> bool:
        """Without blocking: whether the broker has answered for every one of these records (delivered or not)."""
        ...

    def wait_acknowledged(self, pending: Sequence[Pending]) -> None:
        """Block until every one of these records is acknowledged, without flushing the ones sent after them;
        TransportError if one was not delivered within kafka.delivery_timeout_s."""
        ...

    def commit_with_offsets(self, offsets: Offsets, group_metadata: object) -> None:
        """Exactly-once: the consumed offsets become part of the transaction, then it commits."""
        ...

    def renew(self) -> None:
        """Exactly-once: give up the open transaction for a new client under the same transactional id, whose
        registration fences the old one and has the coordinator abort its transaction. TransportError if the new
        one cannot register."""
        ...

    def abort(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> None: ...


class FrameProducer(Protocol):
    """The producers' frames topic writer: acks=all, idempotent; each record's outcome goes to its callback, None
    once acknowledged, else a TransportError (called from the client's own thread)."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
             on_done: Callable[[TransportError | None], None]) -> None: ...

    def flush(self, timeout_s: float) -> None:
        """Block until every record sent is settled; TransportError if that takes over `timeout_s`."""
        ...

    def close(self, timeout_s: float) -> None: ...


class HistoryFeed(Protocol):
    """Topics followed in a consumer group, each newly assigned partition read again from its first record of the
    last `history_s` seconds (so a record may come twice: a reader skips it by its offset); errors leave as
    TransportError, and the next poll tries again."""

    def poll(self, timeout_s: float) -> list[ConsumedRecord]: ...
    def close(self) -> None: ...


class PartitionReader(Protocol):
    """Partitions read with no group from offsets of our choosing; errors leave as TransportError."""

    def partitions_of(self, topic: str) -> list[Partition]:
        """The topic's partitions (none when it does not exist)."""
        ...

    def offset_range(self, partitions: Sequence[Partition]) -> dict[Partition, tuple[int, int]]:
        """Per partition, (first retained offset, end offset): the records it holds now lie in between."""
        ...

    def offsets_at(self, partitions: Sequence[Partition], time_ms: int) -> dict[Partition, int]:
        """Per partition, the first offset whose record's timestamp is at or after `time_ms` (ms since the
        epoch); the end offset where none is."""
        ...

    def assign(self, offsets: Offsets) -> None:
        """Read exactly these partitions next, each from its offset."""
        ...

    def position(self, partition: Partition) -> int:
        """The offset the next record read from `partition` will have at the earliest."""
        ...

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[ConsumedRecord]: ...
    def close(self) -> None: ...


def assign_from_start(reader: PartitionReader, topics: Iterable[str]) -> dict[Partition, int]:
    """Read every partition the topics have now from its first retained record; returns each one's end offset."""
    ranges = {partition: first_and_end for topic in topics if topic
              for partition, first_and_end in reader.offset_range(reader.partitions_of(topic)).items()}
    reader.assign({partition: first for partition, (first, _end) in ranges.items()})
    return {partition: end for partition, (_first, end) in ranges.items()}


def read_to_end(reader: PartitionReader, topic: str, timeout_s: float, *,
                since_ms: int | None = None) -> list[ConsumedRecord]:
    """Every record of `topic` from its start (or from the first written at or after `since_ms`) to its end now, in
    partition order; TransportError past `timeout_s`."""
    if since_ms is None:
        ends = assign_from_start(reader, [topic])
    else:
        partitions = reader.partitions_of(topic)
        ends = {partition: end for partition, (_first, end) in reader.offset_range(partitions).items()}
        reader.assign(reader.offsets_at(partitions, since_ms))
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while any(reader.position(partition) < end for partition, end in ends.items()):
        if time.monotonic() > deadline:
            raise TransportError(f"reading {topic} took over {timeout_s:.0f}s")
        records += reader.poll(0.5)
    return records


def read_record_at(reader: PartitionReader, partition: Partition, offset: int,
                   timeout_s: float) -> ConsumedRecord | None:
    """The record at `offset` of `partition`; None when the partition does not exist, the offset is past retention
    or not written yet, or holds no record (compacted, or a transaction marker), or nothing came within `timeout_s`."""
    if partition not in reader.partitions_of(partition.topic):
        return None
    first, end = reader.offset_range([partition])[partition]
    if not first <= offset < end:
        return None
    reader.assign({partition: offset})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in reader.poll(0.5, max_records=1):
            return record if record.offset == offset else None  # a compacted or aborted offset: the next one
    return None


def client_types(transport: str) -> tuple[Callable[..., FrameConsumer], Callable[..., ResultProducer]]:
    """(consumer class, producer class) of the chosen Kafka client library (mypy checks both implement the
    protocols above); imported here, on demand, so that librdkafka is needed only when chosen."""
    if transport == "confluent":
        from inspector.kafka.confluent.group_consumer import ConfluentFrameConsumer
        from inspector.kafka.confluent.producers import ConfluentResultProducer

        return ConfluentFrameConsumer, ConfluentResultProducer
    from inspector.kafka.kafka_python.group_consumer import KafkaPythonFrameConsumer
    from inspector.kafka.kafka_python.producers import KafkaPythonResultProducer

    return KafkaPythonFrameConsumer, KafkaPythonResultProducer


def frame_producer(settings: KafkaSettings, *, client_id: str) -> FrameProducer:
    """The producers' frames topic writer, on the client library `settings.transport` names."""
    if settings.transport == "confluent":
        from inspector.kafka.confluent.producers import ConfluentFrameProducer

        return ConfluentFrameProducer(settings, client_id=client_id)
    from inspector.kafka.kafka_python.producers import KafkaPythonFrameProducer

    return KafkaPythonFrameProducer(settings, client_id=client_id)


def history_feed(settings: KafkaSettings, *, topics: Sequence[str], group_id: str, history_s: float,
                 client_id: str) -> HistoryFeed:
    """A follower of `topics` in group `group_id` that starts each partition `history_s` back (the UI's feed)."""
    if settings.transport == "confluent":
        from inspector.kafka.confluent.readers import ConfluentHistoryFeed

        return ConfluentHistoryFeed(settings, topics=topics, group_id=group_id, history_s=history_s,
                                    client_id=client_id)
    from inspector.kafka.kafka_python.readers import KafkaPythonHistoryFeed

    return KafkaPythonHistoryFeed(settings, topics=topics, group_id=group_id, history_s=history_s,
                                  client_id=client_id)


def partition_reader(settings: KafkaSettings, *, client_id: str, read_committed: bool = False) -> PartitionReader:
    """A reader with no group (records of aborted transactions skipped when `read_committed`)."""
    if settings.transport == "confluent":
        from inspector.kafka.confluent.readers import ConfluentPartitionReader

        return ConfluentPartitionReader(settings, client_id=client_id, read_committed=read_committed)
    from inspector.kafka.kafka_python.readers import KafkaPythonPartitionReader

    return KafkaPythonPartitionReader(settings, client_id=client_id, read_committed=read_committed)
