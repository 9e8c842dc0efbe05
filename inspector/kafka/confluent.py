"""The optional confluent-kafka (librdkafka) transport, implementing the protocols of `inspector.kafka.transport`.

kafka-python parses every record in Python, and on a GPU that caps one worker near 3,400 frames/s of 20 KB
JPEGs (bench/RESULTS.md). librdkafka fetches and parses in C threads. Select it with
`INSPECTOR_KAFKA__TRANSPORT=confluent`; kafka-python stays the default. Records, partitions and offsets
cross this boundary as the project's types (`FrameRecord`, `transport.Partition`), and every librdkafka error
leaves as `TransportError` or `ConfigError`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from inspector.contracts import Headers
from inspector.errors import ConfigError, TransportError
from inspector.kafka.transport import ConsumedRecord, Offsets, Partition, Pending, check_acknowledged
from inspector.settings import KafkaSettings

try:
    import confluent_kafka as ck
except ImportError:  # pragma: no cover - depends on the install
    ck = None  # type: ignore[assignment]  # _require() then names the missing package

log = logging.getLogger(__name__)

# The group has moved on (we were evicted, or it is rebalancing): a refused commit, not a failure.
_GROUP_MOVED_ON = {"REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "_ASSIGNMENT_LOST",
                   "FENCED_INSTANCE_ID"}


def _require() -> None:
    if ck is None:
        raise ConfigError("kafka.transport=confluent needs the confluent-kafka package: "
                          "pip install 'produce-inspector[confluent]'")


def librdkafka_config(settings: KafkaSettings) -> dict[str, object]:
    """The connection settings every client of ours shares, in librdkafka's names."""
    try:
        kp = settings.client_config()  # validates SASL/SSL settings and files once, for both transports
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg: dict[str, object] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "socket.timeout.ms": settings.request_timeout_ms,
        "reconnect.backoff.max.ms": 1000,
        "error_cb": _log_client_error,
    }
    if "sasl_mechanism" in kp:
        cfg.update({"sasl.mechanisms": kp["sasl_mechanism"], "sasl.username": kp["sasl_plain_username"],
                    "sasl.password": kp["sasl_plain_password"]})
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if ours in kp:
            cfg[theirs] = kp[ours]
    return cfg


def _log_client_error(err: object) -> None:
    # librdkafka retries connection problems itself; they are worth a line, not an exception.
    log.warning("kafka client: %s", err)


def _librdkafka_headers(headers: Headers) -> list[tuple[str, str | bytes | None]] | None:
    """Ours as produce() takes them: None for none, else the same list (its type is wider than ours)."""
    return cast("list[tuple[str, str | bytes | None]]", headers) or None


def _transport_error(what: str, exc: Exception) -> TransportError:
    err = exc.args[0] if exc.args else exc
    name = err.name() if hasattr(err, "name") else type(exc).__name__
    text = err.str() if hasattr(err, "str") else str(exc)
    return TransportError(f"{what} failed: {name}: {text}")


def _consumer(settings: KafkaSettings, config: dict[str, object]) -> ck.Consumer:
    """A Consumer on our connection settings plus `config`, which has reached the broker once (so that an
    unreachable one fails at start, in one line)."""
    _require()
    try:
        consumer = ck.Consumer({**librdkafka_config(settings), **config})
        consumer.list_topics(timeout=settings.request_timeout_ms / 1000)
    except ck.KafkaException as exc:
        raise TransportError(f"cannot reach Kafka at {settings.bootstrap_servers}: "
                             f"{_transport_error('connect', exc)}") from None
    return consumer


def _producer(settings: KafkaSettings, config: dict[str, object]) -> ck.Producer:
    """An acks=all, idempotent Producer on our connection settings plus `config`, which has reached the broker once."""
    _require()
    try:
        producer = ck.Producer({
            **librdkafka_config(settings),
            "acks": "all",
            "enable.idempotence": True,  # broker de-duplicates retries: no doubles from our own resends
            "linger.ms": settings.linger_ms,
            "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
            **config,
        })
        producer.list_topics(timeout=settings.request_timeout_ms / 1000)
    except ck.KafkaException as exc:
        raise TransportError(f"cannot reach Kafka at {settings.bootstrap_servers}: "
                             f"{_transport_error('connect', exc)}") from None
    return producer


def _close(consumer: ck.Consumer) -> None:
    """Leave the group (if any) and release the consumer; a failure to do so is logged, never raised."""
    try:
        consumer.close()
    except (ck.KafkaException, RuntimeError) as exc:
        log.warning("consumer close: %s", exc)


def _poll(consumer: ck.Consumer, timeout_s: float, max_records: int,
          revocations: Sequence[frozenset[tuple[str, int]]] = ()) -> list[FrameRecord]:
    """Up to `max_records` records, waiting at most `timeout_s` for the first (partition order kept).
    `revocations`: the partitions the group took back from this consumer, one set per revocation, appended to by
    its revoke callback."""
    # consume(n, timeout) waits until it has n messages or the timeout passes; kafka-python's poll returns as
    # soon as there are any. The caller decides how long to wait, so: block for the first message only, then
    # take what is already fetched.
    try:
        first = consumer.poll(max(0.0, timeout_s))
        messages = [] if first is None else [first]
        if first is not None and max_records > 1:
            seen = len(revocations)
            messages += consumer.consume(num_messages=max_records - 1, timeout=0)
            if len(revocations) != seen:
                # The group took partitions back inside consume(): their records fetched before are no longer ours
                # (scored, the first record would be scored again by the partition's next owner, which starts at
                # the committed offset).
                gone = frozenset().union(*revocations[seen:])
                messages = [m for m in messages if (m.topic(), m.partition()) not in gone]
    except ck.KafkaException as exc:
        raise _transport_error("poll", exc) from None
    records = []
    for message in messages:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise TransportError(f"poll failed: {error.name()}: {error.str()}")
            log.warning("consumer: %s", error.str())  # e.g. a partition's leader moved: librdkafka retries
            continue
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None  # set on a consumed message
        # librdkafka hands a consumed record's headers as a list of (str, bytes) pairs.
        headers = cast(Headers, list(message.headers() or []))
        records.append(FrameRecord(topic, partition, offset, message.key(), message.value(), headers,
                                   message.timestamp()[1]))
    return records


def _partitions(topic_partitions: Iterable[ck.TopicPartition]) -> list[Partition]:
    return [Partition(tp.topic, tp.partition) for tp in topic_partitions]


@dataclass(slots=True)
class FrameRecord:
    """One consumed record: a `transport.ConsumedRecord`, as kafka-python's ConsumerRecord is."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp: int = -1


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


class _Delivery:
    """librdkafka's delivery report for one record, shaped like kafka-python's future (is_done, failed())."""

    __slots__ = ("is_done", "exception")

    def __init__(self) -> None:
        self.is_done = False
        self.exception: object = None

    def __call__(self, err: object, _msg: object) -> None:
        self.is_done, self.exception = True, err

    def failed(self) -> bool:
        return self.exception is not None


def _discard(producer: ck.Producer) -> None:
    try:
        producer.purge()
        producer.flush(1.0)
    except Exception as exc:  # a fenced client may fail in many ways; nothing depends on it
        log.debug("discarding a fenced producer: %s", exc)


class ConfluentResultProducer:
    """Alerts, scores and dead letters: acks=all, idempotent, optionally transactional (librdkafka)."""

    def __init__(self, settings: KafkaSettings, *, max_request_bytes: int) -> None:
        self.settings = settings
        self.transactional = settings.exactly_once
        self._timeout_s = settings.request_timeout_ms / 1000
        config: dict[str, object] = {"client.id": f"{settings.client_id}-results", "message.max.bytes": max_request_bytes}
        if self.transactional:
            config["transactional.id"] = settings.transactional_id or (
                f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}")
        self._config = config
        self._producer = self._registered()
        self._healthy = True

    def _registered(self) -> ck.Producer:
        """A new client; with exactly-once, registered under the transactional id (which fences any earlier one)."""
        producer = _producer(self.settings, self._config)
        if self.transactional:
            try:
                producer.init_transactions(self._timeout_s)
            except ck.KafkaException as exc:
                raise TransportError(f"cannot reach Kafka at {self.settings.bootstrap_servers}: "
                                     f"{_transport_error('connect', exc)}") from None
        return producer

    def renew(self) -> None:
        old, self._producer = self._producer, self._registered()
        # What the old client still holds belongs to the transaction given up: purged, and the client destroyed,
        # in the background (librdkafka's destroy may wait for its brokers).
        threading.Thread(target=_discard, args=(old,), name="kafka-close-fenced", daemon=True).start()
        self._healthy = True

    def connected(self) -> bool:
        """True once bootstrapped and as long as the last flush was acknowledged."""
        return self._healthy

    def begin(self) -> None:
        if self.transactional:
            self._wrap(self._producer.begin_transaction, "begin transaction")

    def send(self, topic: str, key: str, value: bytes, headers: Headers, what: str) -> Pending:
        delivery = _Delivery()
        while True:
            try:
                self._producer.produce(topic, value=value, key=key.encode(), headers=_librdkafka_headers(headers),
                                       on_delivery=delivery)
                return Pending(delivery, what)
            except BufferError:  # the local queue is full: serve delivery reports, then try again
                self._producer.poll(0.05)
            except ck.KafkaException as exc:
                raise _transport_error(f"send {what} to {topic}", exc) from None

    def flush_and_check(self, pending: Iterable[Pending]) -> None:
        """Block until every pending record is acknowledged; TransportError if any was not."""
        self._healthy = False
        self._wrap(lambda: self._producer.flush(self.settings.delivery_timeout_s + 5), "flush")
        check_acknowledged(pending, self.settings.delivery_timeout_s)
        self._healthy = True

    def acknowledged(self, pending: Sequence[Pending]) -> bool:
        """Without blocking: whether the broker has answered for every one of these records."""
        self._producer.poll(0)  # delivery reports arrive as callbacks served by poll
        return all(p.future.is_done for p in pending)

    def wait_acknowledged(self, pending: Sequence[Pending]) -> None:
        """Block until every one of these records is acknowledged (later sends keep lingering); TransportError if
        one was not delivered within kafka.delivery_timeout_s."""
        self._healthy = False
        deadline = time.monotonic() + self.settings.delivery_timeout_s + 5
        while not all(p.future.is_done for p in pending) and time.monotonic() < deadline:
            self._producer.poll(0.01)
        check_acknowledged(pending, self.settings.delivery_timeout_s)
        self._healthy = True

    def commit_with_offsets(self, offsets: Offsets, group_metadata: object) -> None:
        """Exactly-once: the consumed offsets become part of the transaction, then it commits."""
        tps = [ck.TopicPartition(partition.topic, partition.partition, offset) for partition, offset in offsets.items()]
        self._wrap(lambda: self._producer.send_offsets_to_transaction(tps, group_metadata, self._timeout_s),
                   "send offsets")
        self._wrap(lambda: self._producer.commit_transaction(self._timeout_s), "commit transaction")

    def abort(self) -> None:
        if self.transactional:
            try:
                self._producer.abort_transaction(self._timeout_s)
            except ck.KafkaException as exc:
                log.warning("abort transaction: %s", exc)

    def _wrap(self, call: Callable[[], object], what: str) -> None:
        try:
            call()
        except ck.KafkaException as exc:
            raise _transport_error(what, exc) from None

    def close(self, timeout_s: float = 10.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("producer close: %d records not delivered", remaining)


class ConfluentFrameProducer:
    """The producers' frames topic writer (`transport.FrameProducer`); a thread of its own serves librdkafka's
    delivery reports, which arrive only while someone polls."""

    def __init__(self, settings: KafkaSettings, *, client_id: str) -> None:
        self._producer = _producer(settings, {"client.id": client_id, "message.max.bytes": 16 * 1024 * 1024})
        self._closing = threading.Event()
        self._reports = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._reports.start()

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
             on_done: Callable[[TransportError | None], None]) -> None:
        def report(err: ck.KafkaError | None, _msg: object) -> None:
            on_done(None if err is None else TransportError(f"{err.name()}: {err.str()}"))

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=_librdkafka_headers(headers),
                                       on_delivery=report)
                return
            except BufferError:  # the local queue is full: the report thread makes room
                time.sleep(0.05)
            except ck.KafkaException as exc:
                on_done(_transport_error(f"send to {topic}", exc))
                return

    def flush(self, timeout_s: float) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise TransportError(f"flush failed: {remaining} records not delivered within {timeout_s:.0f}s")

    def close(self, timeout_s: float) -> None:
        remaining = self._producer.flush(timeout_s)
        self._closing.set()
        self._reports.join(timeout=5)
        if remaining:
            log.warning("producer close: %d records not delivered", remaining)


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
