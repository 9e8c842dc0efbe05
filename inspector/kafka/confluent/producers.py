"""The worker's result producer (acks=all, idempotent, optionally transactional) and the producers' frame producer
(`transport.ResultProducer`, `transport.FrameProducer`) on librdkafka."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from inspector.contracts import Headers
from inspector.errors import TransportError
from inspector.kafka.confluent.clients import _producer, _transport_error, ck
from inspector.kafka.transport import Offsets, Pending, check_acknowledged
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


def _librdkafka_headers(headers: Headers) -> list[tuple[str, str | bytes | None]] | None:
    """Ours as produce() takes them: None for none, else the same list (its type is wider than ours)."""
    return cast("list[tuple[str, str | bytes | None]]", headers) or None


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
            config["transactional.id"] = settings.effective_transactional_id()
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
