"""The worker's result producer (acks=all, idempotent, optionally transactional) and the producers' frame producer
(`transport.ResultProducer`, `transport.FrameProducer`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from kafka import KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from inspector.contracts import Headers
from inspector.errors import TransportError
from inspector.kafka.kafka_python.clients import _producer, unreachable_error
from inspector.kafka.transport import Offsets, Pending, check_acknowledged
from inspector.settings import KafkaSettings

log = logging.getLogger(__name__)


class KafkaPythonResultProducer:
    """Alerts, scores and dead letters: acks=all, idempotent, optionally transactional."""

    def __init__(self, settings: KafkaSettings, *, max_request_bytes: int) -> None:
        self.settings = settings
        self.transactional = settings.exactly_once
        extra: dict[str, object] = {}
        if self.transactional:
            extra["transactional_id"] = settings.effective_transactional_id()
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
