"""librdkafka clients built from our settings (the one import of confluent-kafka, optional), and what the group
consumer, the producers and the readers share: error translation, and polling into `FrameRecord`s."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from inspector.contracts import Headers
from inspector.errors import ConfigError, TransportError
from inspector.settings import KafkaSettings

try:
    import confluent_kafka as ck
except ImportError:  # pragma: no cover - depends on the install
    ck = None  # type: ignore[assignment]  # _require() then names the missing package

log = logging.getLogger(__name__)


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
