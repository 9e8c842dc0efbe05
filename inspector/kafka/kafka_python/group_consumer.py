"""The frames topic consumed in a group with manual commits (`transport.FrameConsumer`), and how the outcome of an
asynchronous commit is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from inspector.errors import TransportError
from inspector.kafka.kafka_python.clients import _consumer, _partitions, _Rebalance, _records
from inspector.kafka.transport import ConsumedRecord, Offsets, Partition
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


# The group has moved on (we were evicted, or it is rebalancing): a refused commit, not a failure.
_GROUP_MOVED_ON = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError,
                   FencedInstanceIdError)


def _log_commit_outcome(failing: bool, outcome: object) -> bool:
    """Log how an asynchronous commit ended: a refusal because the group moved on each time (the partitions' next
    owner reads the records again), another failure once per run of failures, and the first success after them;
    -> whether commits are failing now."""
    if isinstance(outcome, _GROUP_MOVED_ON):
        log.warning("offset commit refused, the group has moved on: %s", outcome)
        return failing
    if isinstance(outcome, Exception):
        if not failing:
            log.warning("offset commit failed (the next commit carries later offsets): %s", outcome)
        return True
    if failing:
        log.info("offset commits succeed again")
    return False


class KafkaPythonFrameConsumer:
    """The frames topic, consumed in a group with manual commits."""

    def __init__(self, settings: KafkaSettings, *, max_poll_records: int, topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.frames_topic  # the sorter reads the alerts topic with the same consumer
        self._consumer = _consumer(
            settings,
            client_id=settings.client_id,
            group_id=settings.group_id,
            enable_auto_commit=False,  # offsets are committed only after results are acknowledged
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(500, settings.session_timeout_ms // 4),
            fetch_max_bytes=settings.fetch_max_bytes,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            fetch_max_wait_ms=settings.fetch_wait_ms(),
            isolation_level="read_committed" if settings.exactly_once else "read_uncommitted",
        )
        self._async_commit_failing = False
        self._poll_failing_since: float | None = None  # time.monotonic() of the first of a run of failed polls
        self._to_resume: set[Partition] = set()  # assigned during the last poll or rewound: read from the committed offset

    def subscribe(self, on_revoked: Callable[[list[Partition]], None],
                  on_assigned: Callable[[list[Partition]], None]) -> None:
        """Subscribe, then (before the first poll, where the group join happens) fetch the topic's metadata.

        The group leader remembers the metadata it assigned from and rejoins when the metadata it learns
        next differs. Joining before the subscription's metadata arrived made that a second rebalance right
        after the first in 3 of 4 starts, and kafka-python sometimes never finished it: a worker stuck
        unassigned, never ready (twice in fresh-clone test runs). Subscribed and with the metadata in hand
        first, the first assignment stands (4 of 4).
        """
        topic = self.topic

        def assigned(partitions: list[Partition]) -> None:
            self._to_resume.update(partitions)
            on_assigned(partitions)

        self._consumer.subscribe([topic], listener=_Rebalance(on_revoked, assigned))
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
        while not (known := self._partitions_known(topic)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not known:
            log.warning("topic %s not found: joined the group anyway; it is read once it exists", topic)

    def _partitions_known(self, topic: str) -> bool:
        try:
            return bool(self._consumer.partitions_for_topic(topic))
        except KafkaError:
            return False

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` (ConsumerRecord list, partition order kept).

        The broker away is no error for kafka.delivery_timeout_s (kafka-python reconnects itself): nothing is read
        meanwhile. The worker polls while its results' acknowledgements are on their way, so an outage meets it
        here as often as in its wait for them, which rides out the same time."""
        batches: dict[TopicPartition, list[ConsumedRecord]] = {}
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
            if self._to_resume:
                resumed = self._resume()
                batches = {tp: records for tp, records in batches.items() if tp not in resumed}
        except KafkaError as exc:
            # Records this poll took and cannot hand out (the seek failed) are read again from the committed offset.
            self._to_resume.update(_partitions(batches))
            now = time.monotonic()
            if not exc.retriable or now - (self._poll_failing_since or now) >= self.settings.delivery_timeout_s:
                raise TransportError(f"poll failed: {exc}") from None
            if self._poll_failing_since is None:
                log.warning("poll failed, retrying for up to %.0fs: %s", self.settings.delivery_timeout_s, exc)
                self._poll_failing_since = now
            time.sleep(min(max(timeout_s, 0.05), 0.5))  # a refused connection fails at once: do not spin
            return []
        self._poll_failing_since = None
        return _records(batches)

    def _resume(self) -> set[TopicPartition]:
        """Seek the partitions assigned during the last poll to their committed offsets (their records of that poll
        are dropped: they are read again from there).

        kafka-python keeps the position of a partition a member keeps across an eager rebalance, past the batch the
        rebalance dropped, and a member may miss a generation in which another member owned (and committed) the
        partition: only the committed offset is right in every case. Here, after the poll: the rebalance listener
        runs inside kafka-python's poll, where its offset requests may not be made."""
        tps = {TopicPartition(*partition) for partition in self._to_resume}
        for tp in tps & self._consumer.assignment():
            # With read_committed the fetch waits for pending transactional offsets (KIP-447's require_stable).
            committed = self._consumer.committed(tp, timeout_ms=self.settings.request_timeout_ms)
            if committed is None:
                self._consumer.seek_to_beginning(tp)  # auto_offset_reset="earliest"
            else:
                self._consumer.seek(tp, committed)
            self._to_resume.discard(Partition(tp.topic, tp.partition))  # a lookup that fails leaves the rest to do
        self._to_resume.clear()  # what is left is no longer assigned
        return tps

    def rewind(self) -> None:
        self._to_resume.update(_partitions(self._consumer.assignment()))

    def commit(self, offsets: Offsets) -> bool:
        """Commit; False when the group has moved on (we were evicted or it is rebalancing): the partitions'
        next owner reads these records again, which at-least-once allows. TransportError for anything else."""
        if not offsets:
            return True
        # kafka-python gives up on a refused connection at once: retry what is retriable (the broker is away)
        # for as long as the results behind these offsets could wait for their acknowledgement.
        deadline, warned = time.monotonic() + self.settings.delivery_timeout_s, False
        while True:
            try:
                self._consumer.commit({TopicPartition(*partition): OffsetAndMetadata(offset, "", -1)
                                       for partition, offset in offsets.items()})
                return True
            except _GROUP_MOVED_ON as exc:
                log.warning("offset commit refused, the group has moved on: %s", exc)
                return False
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() >= deadline:
                    raise TransportError(f"offset commit failed: {exc}") from None
                if not warned:
                    log.warning("offset commit failed, retrying for up to %.0fs: %s",
                                self.settings.delivery_timeout_s, exc)
                    warned = True
                time.sleep(0.5)

    def commit_async(self, offsets: Offsets) -> None:
        """Send a commit without waiting; a failure is logged once per run of failures."""
        if not offsets:
            return

        def done(_offsets: object, response: object) -> None:  # on kafka-python's IO thread
            self._async_commit_failing = _log_commit_outcome(self._async_commit_failing, response)

        try:
            self._consumer.commit_async({TopicPartition(*partition): OffsetAndMetadata(offset, "", -1)
                                         for partition, offset in offsets.items()}, callback=done)
        except KafkaError as exc:
            self._async_commit_failing = _log_commit_outcome(self._async_commit_failing, exc)

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def assignment(self) -> set[Partition]:
        return set(_partitions(self._consumer.assignment()))

    def lag(self) -> dict[Partition, int]:
        """Messages between this consumer's position and the end of each assigned partition (known ones)."""
        lags: dict[Partition, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                lags[Partition(tp.topic, tp.partition)] = max(0, high - self._consumer.position(tp, timeout_ms=100))
            except (KafkaError, AssertionError, TypeError):
                continue
        return lags

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)
