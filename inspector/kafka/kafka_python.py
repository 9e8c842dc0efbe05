"""The kafka-python transport (the default): client construction from settings, and error translation.

Its clients implement the protocols of `inspector.kafka.transport`; partitions leave as `transport.Partition`.
Everything Kafka raises leaves this module as `TransportError` (or `ConfigError` for bad settings), so the rest of
the code deals with our own two exception types only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
)
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.producer.future import FutureRecordMetadata

from inspector.contracts import Headers
from inspector.errors import ConfigError, TransportError
from inspector.kafka.transport import ConsumedRecord, Offsets, Partition, Pending, check_acknowledged
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


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


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, on_revoked: Callable[[list[Partition]], None],
                 on_assigned: Callable[[list[Partition]], None]) -> None:
        self._on_revoked, self._on_assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._on_revoked(_partitions(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._on_assigned(_partitions(assigned))


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


class KafkaPythonResultProducer:
    """Alerts, scores and dead letters: acks=all, idempotent, optionally transactional."""

    def __init__(self, settings: KafkaSettings, *, max_request_bytes: int) -> None:
        self.settings = settings
        self.transactional = settings.exactly_once
        extra: dict[str, object] = {}
        if self.transactional:
            extra["transactional_id"] = settings.transactional_id or (
                f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}")
        self._options: dict[str, object] = {"client_id": f"{settings.client_id}-results",
                                            "max_request_size": max_request_bytes, **extra}
        self._producer = self._registered()
        self._healthy = True

    def _registered(self) -> KafkaProducer:
        """A new client; with exactly-once, registered under the transactional id (which fences any earlier one)."""
        producer = _producer(self.settings, **self._options)
        if self.transactional:
            try:
                producer.init_transactions()
            except (KafkaError, OSError) as exc:
                raise unreachable_error(self.settings, exc) from None
        return producer

    def renew(self) -> None:
        old, self._producer = self._producer, self._registered()
        # The old client may be stuck on the request it lost: closed in the background, not waited for.
        threading.Thread(target=_close_quietly, args=(old,), name="kafka-close-fenced", daemon=True).start()
        self._healthy = True

    def connected(self) -> bool:
        """True once bootstrapped and as long as the last flush was acknowledged."""
        return self._healthy

    def begin(self) -> None:
        if self.transactional:
            self._wrap(self._producer.begin_transaction, "begin transaction")

    def send(self, topic: str, key: str, value: bytes, headers: Headers, what: str) -> Pending:
        try:
            future = self._producer.send(topic, key=key.encode(), value=value, headers=headers)
        except KafkaError as exc:
            raise TransportError(f"send {what} to {topic} failed: {exc}") from None
        return Pending(future, what)

    def flush_and_check(self, pending: Iterable[Pending]) -> None:
        """Block until every pending record is acknowledged; TransportError if any was not."""
        self._healthy = False
        self._wrap(lambda: self._producer.flush(timeout=self.settings.delivery_timeout_s + 5), "flush")
        check_acknowledged(pending, self.settings.delivery_timeout_s)
        self._healthy = True

    def acknowledged(self, pending: Sequence[Pending]) -> bool:
        """Without blocking: whether the broker has answered for every one of these records."""
        return all(p.future.is_done for p in pending)

    def wait_acknowledged(self, pending: Sequence[Pending]) -> None:
        """Block until every one of these records is acknowledged (later sends keep lingering); TransportError if
        one was not delivered within kafka.delivery_timeout_s."""
        self._healthy = False
        deadline = time.monotonic() + self.settings.delivery_timeout_s
        for p in pending:
            try:
                cast(FutureRecordMetadata, p.future).get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError:
                break  # check_acknowledged names the record and why
        check_acknowledged(pending, self.settings.delivery_timeout_s)
        self._healthy = True

    def commit_with_offsets(self, offsets: Offsets, group_metadata: object) -> None:
        """Exactly-once: the consumed offsets become part of the transaction, then it commits."""
        meta = {TopicPartition(*partition): OffsetAndMetadata(offset, "", -1) for partition, offset in offsets.items()}
        self._within_delivery_timeout(lambda: self._producer.send_offsets_to_transaction(meta, group_metadata),
                                      "send offsets")
        self._within_delivery_timeout(self._producer.commit_transaction, "commit transaction")

    def abort(self) -> None:
        if self.transactional:
            try:
                self._producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort transaction: %s", exc)

    def _wrap(self, call: Callable[[], object], what: str) -> None:
        try:
            call()
        except KafkaError as exc:
            raise TransportError(f"{what} failed: {type(exc).__name__}: {exc}") from None

    def _within_delivery_timeout(self, call: Callable[[], object], what: str) -> None:
        """`_wrap`, given up after kafka.delivery_timeout_s: kafka-python waits for a transaction's requests without
        a limit, and 3.0.12 drops one for good when the transaction coordinator's broker dies as it is sent (its
        Sender does not re-queue it). A worker stuck there forever would hold its partitions and score nothing;
        a TransportError stops it with one line, and its successor's producer fences the open transaction."""
        failure: list[TransportError] = []
        done = threading.Event()

        def run() -> None:
            try:
                self._wrap(call, what)
            except TransportError as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name=f"kafka-{what.replace(' ', '-')}", daemon=True).start()
        if not done.wait(self.settings.delivery_timeout_s):
            self._healthy = False
            raise TransportError(f"{what} did not finish in {self.settings.delivery_timeout_s:.0f}s")
        if failure:
            raise failure[0]

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("producer close: %s", exc)


def _close_quietly(producer: KafkaProducer) -> None:
    try:
        producer.close(timeout=1.0)
    except Exception as exc:  # a fenced client may fail its close in many ways; nothing depends on it
        log.debug("closing a fenced producer: %s", exc)


class KafkaPythonFrameProducer:
    """The producers' frames topic writer (`transport.FrameProducer`)."""

    def __init__(self, settings: KafkaSettings, *, client_id: str) -> None:
        self._producer = _producer(settings, client_id=client_id, max_request_size=16 * 1024 * 1024)

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
             on_done: Callable[[TransportError | None], None]) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:  # no metadata within max_block_ms: the broker has been away since start-up
            on_done(TransportError(f"send to {topic} failed: {type(exc).__name__}: {exc}"))
            return
        future.add_callback(lambda _metadata: on_done(None))
        future.add_errback(lambda exc: on_done(TransportError(f"{type(exc).__name__}: {exc}")))

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise TransportError(f"flush failed: {exc}") from None

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)


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
