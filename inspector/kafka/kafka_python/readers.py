"""The readers of the UI and the tools: topics followed in a group from a while back (`transport.HistoryFeed`), and
partitions read with no group from chosen offsets (`transport.PartitionReader`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from kafka import TopicPartition
from kafka.errors import KafkaError

from inspector.kafka.kafka_python.clients import _consumer, _reading, _Rebalance, _records
from inspector.kafka.transport import ConsumedRecord, Offsets, Partition
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


class KafkaPythonHistoryFeed:
    """Topics followed in a group, each newly assigned partition rewound `history_s` (`transport.HistoryFeed`)."""

    def __init__(self, settings: KafkaSettings, *, topics: Sequence[str], group_id: str, history_s: float,
                 client_id: str) -> None:
        self._topics = list(topics)
        self._history_ms = int(history_s * 1000)
        self._to_rewind: set[Partition] = set()  # assigned since the last poll: start them in the past
        self._consumer = _consumer(settings, client_id=client_id, group_id=group_id, enable_auto_commit=True,
                                   auto_offset_reset="latest",
                                   max_partition_fetch_bytes=settings.max_partition_fetch_bytes)
        self._consumer.subscribe(self._topics, listener=_Rebalance(lambda _revoked: None, self._to_rewind.update))

    def poll(self, timeout_s: float) -> list[ConsumedRecord]:
        with _reading(f"reading {self._topics}"):  # the broker away: kafka-python reconnects itself
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
            if self._to_rewind:
                rewound = self._rewind()
                batches = {tp: records for tp, records in batches.items() if tp not in rewound}
        return _records(batches)

    def _rewind(self) -> set[TopicPartition]:
        """Seek the newly assigned partitions to the first record of the history window (their records of this
        poll are dropped: they are read again from there). Here, after the poll: the rebalance listener runs
        inside kafka-python's poll, where its offset requests may not be made."""
        tps = {TopicPartition(*partition) for partition in self._to_rewind}
        self._to_rewind.clear()
        since_ms = int(time.time() * 1000) - self._history_ms
        found = self._consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = self._consumer.end_offsets(list(tps))
        for tp in tps:
            at = found.get(tp)
            self._consumer.seek(tp, at.offset if at is not None else ends[tp])
        return tps

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)


class KafkaPythonPartitionReader:
    """Partitions read with no group from offsets of our choosing (`transport.PartitionReader`)."""

    def __init__(self, settings: KafkaSettings, *, client_id: str, read_committed: bool = False) -> None:
        self._consumer = _consumer(settings, client_id=client_id, group_id=None, enable_auto_commit=False,
                                   auto_offset_reset="earliest",
                                   isolation_level="read_committed" if read_committed else "read_uncommitted")

    def partitions_of(self, topic: str) -> list[Partition]:
        with _reading(f"the partitions of {topic}"):
            return [Partition(topic, number) for number in sorted(self._consumer.partitions_for_topic(topic) or ())]

    def offset_range(self, partitions: Sequence[Partition]) -> dict[Partition, tuple[int, int]]:
        tps = [TopicPartition(*partition) for partition in partitions]
        with _reading(f"the offsets of {sorted(partitions)}"):
            firsts, ends = self._consumer.beginning_offsets(tps), self._consumer.end_offsets(tps)
        return {Partition(*tp): (firsts[tp], ends[tp]) for tp in tps}

    def offsets_at(self, partitions: Sequence[Partition], time_ms: int) -> dict[Partition, int]:
        tps = [TopicPartition(*partition) for partition in partitions]
        with _reading(f"the offsets at {time_ms} ms of {sorted(partitions)}"):
            found, ends = self._consumer.offsets_for_times(dict.fromkeys(tps, time_ms)), self._consumer.end_offsets(tps)
        return {Partition(*tp): found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}

    def assign(self, offsets: Offsets) -> None:
        with _reading("assign"):
            self._consumer.assign([TopicPartition(*partition) for partition in offsets])
            for partition, offset in offsets.items():
                self._consumer.seek(TopicPartition(*partition), offset)

    def position(self, partition: Partition) -> int:
        with _reading(f"the position in {partition.topic}/{partition.partition}"):
            position: int = self._consumer.position(TopicPartition(*partition))
        return position

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[ConsumedRecord]:
        with _reading(f"reading {sorted(self._consumer.assignment())}"):
            return _records(self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records))

    def close(self) -> None:
        self._consumer.close()
