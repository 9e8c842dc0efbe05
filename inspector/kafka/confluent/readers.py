"""The readers of the UI and the tools on librdkafka: topics followed in a group from a while back
(`transport.HistoryFeed`), and partitions read with no group from chosen offsets (`transport.PartitionReader`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from inspector.kafka.confluent.clients import _close, _consumer, _poll, _transport_error, ck
from inspector.kafka.transport import ConsumedRecord, Offsets, Partition
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


class ConfluentHistoryFeed:
    """Topics followed in a group, each newly assigned partition rewound `history_s` (`transport.HistoryFeed`)."""

    def __init__(self, settings: KafkaSettings, *, topics: Sequence[str], group_id: str, history_s: float,
                 client_id: str) -> None:
        self._history_ms = int(history_s * 1000)
        self._timeout_s = settings.request_timeout_ms / 1000
        self._consumer = _consumer(settings, {
            "client.id": client_id, "group.id": group_id, "enable.auto.commit": True,
            "auto.offset.reset": "latest", "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
        })
        self._consumer.subscribe(list(topics), on_assign=self._rewind)

    def _rewind(self, _consumer: object, partitions: list[ck.TopicPartition]) -> None:
        """Start the assigned partitions at the first record of the history window (librdkafka lets the
        assignment callback choose the starting offsets)."""
        since_ms = int(time.time() * 1000) - self._history_ms
        try:
            found = self._consumer.offsets_for_times(
                [ck.TopicPartition(p.topic, p.partition, since_ms) for p in partitions], timeout=self._timeout_s)
            for p, at in zip(partitions, found, strict=True):
                # No record since then: the partition's end.
                p.offset = at.offset if at.offset >= 0 else self._consumer.get_watermark_offsets(
                    p, timeout=self._timeout_s)[1]
        except ck.KafkaException as exc:
            log.warning("could not find where the history window starts, reading on from now: %s", exc)
        self._consumer.assign(partitions)

    def poll(self, timeout_s: float) -> list[ConsumedRecord]:
        return list(_poll(self._consumer, timeout_s, 500))

    def close(self) -> None:
        _close(self._consumer)


class ConfluentPartitionReader:
    """Partitions read with no group from offsets of our choosing (`transport.PartitionReader`)."""

    def __init__(self, settings: KafkaSettings, *, client_id: str, read_committed: bool = False) -> None:
        self._timeout_s = settings.request_timeout_ms / 1000
        self._starts: Offsets = {}
        # librdkafka wants a group id even for a consumer that only assigns; this one never joins or commits.
        self._consumer = _consumer(settings, {
            "client.id": client_id, "group.id": f"{client_id}-unused", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        })

    def partitions_of(self, topic: str) -> list[Partition]:
        try:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        except ck.KafkaException as exc:
            raise _transport_error(f"the partitions of {topic}", exc) from None
        if metadata is None or metadata.error is not None:
            return []  # an unknown topic comes back with an error, not an exception
        return [Partition(topic, number) for number in sorted(metadata.partitions)]

    def offset_range(self, partitions: Sequence[Partition]) -> dict[Partition, tuple[int, int]]:
        ranges = {}
        try:
            for partition in partitions:
                first, end = self._consumer.get_watermark_offsets(
                    ck.TopicPartition(partition.topic, partition.partition), timeout=self._timeout_s)
                ranges[partition] = (first, end)
        except ck.KafkaException as exc:
            raise _transport_error(f"the offsets of {sorted(partitions)}", exc) from None
        return ranges

    def offsets_at(self, partitions: Sequence[Partition], time_ms: int) -> dict[Partition, int]:
        try:
            found = self._consumer.offsets_for_times(
                [ck.TopicPartition(partition.topic, partition.partition, time_ms) for partition in partitions],
                timeout=self._timeout_s)
        except ck.KafkaException as exc:
            raise _transport_error(f"the offsets at {time_ms} ms of {sorted(partitions)}", exc) from None
        ends = self.offset_range(partitions)
        # librdkafka answers -1 (OFFSET_END) for a partition without a record that late.
        return {Partition(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else ends[Partition(tp.topic, tp.partition)][1]
                for tp in found}

    def assign(self, offsets: Offsets) -> None:
        try:
            self._consumer.assign([ck.TopicPartition(partition.topic, partition.partition, offset)
                                   for partition, offset in offsets.items()])
        except ck.KafkaException as exc:
            raise _transport_error("assign", exc) from None
        self._starts = dict(offsets)

    def position(self, partition: Partition) -> int:
        try:
            [at] = self._consumer.position([ck.TopicPartition(partition.topic, partition.partition)])
        except ck.KafkaException as exc:
            raise _transport_error(f"the position in {partition.topic}/{partition.partition}", exc) from None
        # Nothing read yet: librdkafka has no position, the next record comes from where it was assigned.
        return int(at.offset) if at.offset >= 0 else self._starts[partition]

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[ConsumedRecord]:
        return list(_poll(self._consumer, timeout_s, max_records or 500))

    def close(self) -> None:
        _close(self._consumer)
