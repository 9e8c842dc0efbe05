"""The frames topic consumed in a group with manual commits (`transport.FrameConsumer`), and how the outcome of an
asynchronous commit is logged (librdkafka)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import cast

from inspector.kafka.confluent.clients import FrameRecord, _close, _consumer, _poll, _transport_error, ck
from inspector.kafka.transport import Offsets, Partition
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)

# The group has moved on (we were evicted, or it is rebalancing): a refused commit, not a failure.
_GROUP_MOVED_ON = {"REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "_ASSIGNMENT_LOST",
                   "FENCED_INSTANCE_ID"}


def _partitions(topic_partitions: Iterable[ck.TopicPartition]) -> list[Partition]:
    return [Partition(tp.topic, tp.partition) for tp in topic_partitions]


class ConfluentFrameConsumer:
    """The frames topic, consumed in a group with manual commits (librdkafka)."""

    def __init__(self, settings: KafkaSettings, *, max_poll_records: int, topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.frames_topic  # the sorter reads the alerts topic with the same consumer
        self._max_records = max_poll_records
        self._async_commit_failing = False
        self._committing_synchronously = False  # its report reaches on_commit too: logged where it raises instead
        self._revocations: list[frozenset[tuple[str, int]]] = []  # partitions the group took back during a poll
        self._consumer = _consumer(settings, {
            "client.id": settings.client_id,
            "group.id": settings.group_id,
            "enable.auto.commit": False,  # offsets are committed only after results are acknowledged
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 4),
            "fetch.max.bytes": settings.fetch_max_bytes,
            "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
            "fetch.wait.max.ms": settings.fetch_wait_ms(),
            "isolation.level": "read_committed" if settings.exactly_once else "read_uncommitted",
            "on_commit": self._on_commit,  # served in poll(): how an asynchronous commit ended
        })

    def subscribe(self, on_revoked: Callable[[list[Partition]], None],
                  on_assigned: Callable[[list[Partition]], None]) -> None:
        def assign(_consumer: object, partitions: list[ck.TopicPartition]) -> None:
            self._consumer.assign(partitions)  # no offsets given: each starts at its committed offset
            on_assigned(_partitions(partitions))

        def revoke(_consumer: object, partitions: list[ck.TopicPartition]) -> None:
            self._revocations.append(frozenset((p.topic, p.partition) for p in partitions))
            on_revoked(_partitions(partitions))
            self._consumer.unassign()

        self._consumer.subscribe([self.topic], on_assign=assign, on_revoke=revoke)

    def poll(self, timeout_s: float, max_records: int) -> list[FrameRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` (partition order kept)."""
        self._revocations.clear()  # only those made during this call matter
        return _poll(self._consumer, timeout_s, min(max_records, self._max_records), self._revocations)

    def rewind(self) -> None:
        try:
            assigned = self._consumer.assignment()
            # With read_committed the lookup waits for pending transactional offsets (KIP-447's require_stable).
            for tp in self._consumer.committed(assigned, timeout=self.settings.request_timeout_ms / 1000):
                # A partition with no commit yet starts over from its first record (auto.offset.reset=earliest).
                self._consumer.seek(ck.TopicPartition(tp.topic, tp.partition,
                                                      tp.offset if tp.offset >= 0 else ck.OFFSET_BEGINNING))
        except ck.KafkaException as exc:
            raise _transport_error("rewind to the committed offsets", exc) from None

    def commit(self, offsets: Offsets) -> bool:
        """Commit; False when the group has moved on. TransportError for anything not retriable in time."""
        if not offsets:
            return True
        tps = [ck.TopicPartition(partition.topic, partition.partition, offset) for partition, offset in offsets.items()]
        deadline, warned = time.monotonic() + self.settings.delivery_timeout_s, False
        while True:
            try:
                self._committing_synchronously = True
                self._consumer.commit(offsets=tps, asynchronous=False)
                return True
            except ck.KafkaException as exc:
                err = exc.args[0]
                if err.name() in _GROUP_MOVED_ON:
                    log.warning("offset commit refused, the group has moved on: %s", err.str())
                    return False
                if not err.retriable() or time.monotonic() >= deadline:
                    raise _transport_error("offset commit", exc) from None
                if not warned:
                    log.warning("offset commit failed, retrying for up to %.0fs: %s",
                                self.settings.delivery_timeout_s, err.str())
                    warned = True
                time.sleep(0.5)
            finally:
                self._committing_synchronously = False

    def commit_async(self, offsets: Offsets) -> None:
        """Send a commit without waiting; a failure is logged once per run of failures."""
        if not offsets:
            return
        tps = [ck.TopicPartition(partition.topic, partition.partition, offset) for partition, offset in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except ck.KafkaException as exc:
            self._on_commit(exc.args[0], tps)

    def _on_commit(self, err: object, _partitions: object) -> None:
        """librdkafka's report of how a commit ended, served in poll(); a synchronous commit's failure raises and is
        logged where it is made. A refusal because the group moved on is logged each time, another failure once per
        run of failures, and the first success after them."""
        if self._committing_synchronously:
            return
        if err is None:
            if self._async_commit_failing:
                log.info("offset commits succeed again")
                self._async_commit_failing = False
        elif cast("ck.KafkaError", err).name() in _GROUP_MOVED_ON:
            log.warning("offset commit refused, the group has moved on: %s", cast("ck.KafkaError", err).str())
        elif not self._async_commit_failing:
            log.warning("offset commit failed (the next commit carries later offsets): %s", err)
            self._async_commit_failing = True

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def assignment(self) -> set[Partition]:
        return set(_partitions(self._consumer.assignment()))

    def lag(self) -> dict[Partition, int]:
        """Messages between this consumer's position and the end of each assigned partition (known ones)."""
        lags: dict[Partition, int] = {}
        try:
            for p in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(p, cached=True)
                if p.offset >= 0 and high >= 0:
                    lags[Partition(p.topic, p.partition)] = max(0, high - p.offset)
        except ck.KafkaException:
            pass
        return lags

    def close(self) -> None:
        _close(self._consumer)
