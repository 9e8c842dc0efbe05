"""Kafka boundary helpers that need no broker: the offsets a batch commits, the readers written once over
`PartitionReader`, and librdkafka's settings."""

import os
import socket
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from inspector.errors import ConfigError, TransportError
from inspector.kafka.transport import (
    Offsets,
    Partition,
    assign_from_start,
    next_offsets,
    read_record_at,
    read_to_end,
)
from inspector.settings import KafkaSettings


def _records(*spec: tuple[int, int]) -> list:
    return [SimpleNamespace(topic="frames", partition=p, offset=o) for p, o in spec]


def test_a_batch_commits_the_offset_after_its_last_record_per_partition():
    records = _records((0, 7), (1, 3), (0, 5), (0, 6), (1, 4))
    assert next_offsets(records) == {Partition("frames", 0): 8, Partition("frames", 1): 5}


def test_a_partition_is_interchangeable_with_kafka_pythons_topic_partition():
    offsets = {Partition("frames", 1): 5}
    assert offsets[TopicPartition("frames", 1)] == 5
    assert Partition(*TopicPartition("frames", 1)) == Partition("frames", 1)


class FakeReader:
    """A PartitionReader over in-memory partitions: {partition: (first retained offset, records)}."""

    def __init__(self, partitions: dict[Partition, tuple[int, list[int]]], *, gap_at_end: bool = False) -> None:
        self.partitions = partitions
        self.gap_at_end = gap_at_end  # a transaction marker after the last record: no record at end - 1
        self.next: Offsets = {}
        self.closed = False

    def _end(self, partition: Partition) -> int:
        first, offsets = self.partitions[partition]
        return (offsets[-1] + 1 if offsets else first) + self.gap_at_end

    def partitions_of(self, topic: str) -> list[Partition]:
        return sorted(p for p in self.partitions if p.topic == topic)

    def offset_range(self, partitions: Sequence[Partition]) -> dict[Partition, tuple[int, int]]:
        return {p: (self.partitions[p][0], self._end(p)) for p in partitions}

    def assign(self, offsets: Offsets) -> None:
        self.next = dict(offsets)

    def position(self, partition: Partition) -> int:
        return self.next[partition]

    def poll(self, _timeout_s: float, max_records: int | None = None) -> list:
        room, out = max_records or 500, []
        for p, at in self.next.items():
            pending = [offset for offset in self.partitions[p][1] if offset >= at]
            taken = pending[:room - len(out)]
            out += [SimpleNamespace(topic=p.topic, partition=p.partition, offset=o, value=b"v") for o in taken]
            if taken == pending:  # past its last record the position moves over a marker, to the end
                self.next[p] = self._end(p)
            elif taken:
                self.next[p] = taken[-1] + 1
        return out

    def close(self) -> None:
        self.closed = True


FEEDBACK_0, FEEDBACK_1 = Partition("feedback", 0), Partition("feedback", 1)


def test_reading_a_topic_to_its_end_returns_each_partitions_retained_records_even_past_a_final_marker():
    reader = FakeReader({FEEDBACK_0: (2, [2, 3, 5]), FEEDBACK_1: (0, []), Partition("other", 0): (0, [0])},
                        gap_at_end=True)
    records = read_to_end(reader, "feedback", timeout_s=5)
    assert [(r.partition, r.offset) for r in records] == [(0, 2), (0, 3), (0, 5)]
    assert read_to_end(FakeReader({}), "feedback", timeout_s=5) == []


def test_reading_to_the_end_gives_up_with_a_transport_error_past_its_timeout():
    class Stuck(FakeReader):
        def poll(self, _timeout_s: float, _max_records: int | None = None) -> list:
            return []

    with pytest.raises(TransportError, match="took over"):
        read_to_end(Stuck({FEEDBACK_0: (0, [0])}), "feedback", timeout_s=0)


def test_a_record_is_read_at_its_offset_and_nothing_outside_what_the_partition_holds():
    reader = FakeReader({FEEDBACK_0: (2, [2, 3, 5])})
    record = read_record_at(reader, FEEDBACK_0, 3, timeout_s=5)
    assert record is not None and record.offset == 3
    assert read_record_at(reader, FEEDBACK_0, 4, timeout_s=5) is None  # compacted away: 5 comes instead
    assert read_record_at(reader, FEEDBACK_0, 1, timeout_s=5) is None  # past retention
    assert read_record_at(reader, FEEDBACK_0, 6, timeout_s=5) is None  # not written
    assert read_record_at(reader, FEEDBACK_1, 0, timeout_s=5) is None  # no such partition


def test_a_tail_starts_every_partition_of_its_topics_at_its_first_retained_record():
    reader = FakeReader({FEEDBACK_0: (2, [2, 3]), FEEDBACK_1: (0, [0]), Partition("alerts", 0): (7, [7])})
    ends = assign_from_start(reader, ["feedback", "", "alerts"])
    assert reader.next == {FEEDBACK_0: 2, FEEDBACK_1: 0, Partition("alerts", 0): 7}
    assert ends == {FEEDBACK_0: 4, FEEDBACK_1: 1, Partition("alerts", 0): 8}


def test_librdkafka_settings_carry_sasl_and_tls_under_their_own_names(tmp_path):
    clients = pytest.importorskip("inspector.kafka.confluent.clients")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = clients.librdkafka_config(KafkaSettings(
        bootstrap_servers="a:9093,b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="line-7", sasl_password="s3cret", ssl_cafile=ca))
    assert cfg["bootstrap.servers"] == "a:9093,b:9093"
    assert (cfg["security.protocol"], cfg["sasl.mechanisms"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (cfg["sasl.username"], cfg["sasl.password"]) == ("line-7", "s3cret")
    assert cfg["ssl.ca.location"] == str(ca)
    assert not any(k.startswith("sasl") for k in clients.librdkafka_config(KafkaSettings()))


def test_librdkafka_settings_refuse_what_kafka_python_refuses(tmp_path):
    clients = pytest.importorskip("inspector.kafka.confluent.clients")
    with pytest.raises(ConfigError, match="SASL needs"):
        clients.librdkafka_config(KafkaSettings(security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(ConfigError, match="does not exist"):
        clients.librdkafka_config(KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"))


def test_a_delivery_report_reads_like_a_kafka_python_future():
    producers = pytest.importorskip("inspector.kafka.confluent.producers")
    ok, bad = producers._Delivery(), producers._Delivery()
    assert not ok.is_done
    ok(None, object())
    bad("MSG_TIMED_OUT", None)
    assert ok.is_done and not ok.failed()
    assert bad.is_done and bad.failed() and bad.exception == "MSG_TIMED_OUT"


def test_the_fetch_wait_defaults_to_what_each_transport_was_measured_best_with():
    # kafka-python: a fetch for idle partitions alone holds back the busy ones for the whole wait (RESULTS, run E).
    assert KafkaSettings().fetch_wait_ms() == 5
    assert KafkaSettings(transport="confluent").fetch_wait_ms() == 50
    assert KafkaSettings(transport="confluent", fetch_max_wait_ms=0).fetch_wait_ms() == 0
    with pytest.raises(ValueError):
        KafkaSettings(fetch_max_wait_ms=60_000)


def test_the_transactional_id_is_the_one_set_or_the_groups_on_this_host_and_process():
    host = socket.gethostname()
    assert KafkaSettings(transactional_id="line-3").effective_transactional_id() == "line-3"
    assert KafkaSettings(group_id="g").effective_transactional_id() == f"g-{host}-{os.getpid()}"
    assert KafkaSettings(group_id="g").effective_transactional_id(pid=77) == f"g-{host}-77"


def test_a_transaction_request_that_never_ends_stops_the_worker_after_the_delivery_timeout():
    from kafka.errors import KafkaTimeoutError

    from inspector.kafka.kafka_python.producers import KafkaPythonResultProducer

    producer = object.__new__(KafkaPythonResultProducer)  # no broker: only the bounded wait is under test
    producer.settings, producer._healthy = KafkaSettings.model_construct(delivery_timeout_s=0.3), True
    never = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="commit transaction did not finish in 0s"):
        producer._within_delivery_timeout(never.wait, "commit transaction")
    assert 0.25 < time.monotonic() - t0 < 5 and not producer.connected()
    never.set()

    def refused() -> None:
        raise KafkaTimeoutError("coordinator gone")

    with pytest.raises(TransportError, match="send offsets failed: KafkaTimeoutError"):
        producer._within_delivery_timeout(refused, "send offsets")


def test_kafka_pythons_partitioner_remembering_key_hashes_partitions_as_the_default_one():
    from kafka.partitioner.default import DefaultPartitioner

    from inspector.kafka.kafka_python.clients import _KeyHashingPartitioner

    cluster = SimpleNamespace(topics=lambda: {"t"}, partitions_for_topic=lambda _t: {3, 0, 2, 1, 4, 5, 6},
                              available_partitions_for_topic=lambda _t: {0, 1})
    ours, default = _KeyHashingPartitioner(), DefaultPartitioner()
    keys = [f"cam-{i}".encode() for i in range(300)] * 2
    assert [ours.partition("t", None, k, None, None, cluster) for k in keys] == [
        default.partition("t", None, k, None, None, cluster) for k in keys]
    assert ours.partition("t", None, None, None, None, cluster) in {0, 1}  # no key: an available partition


def test_an_asynchronous_commit_refused_by_a_moved_group_is_logged_each_time_other_failures_once(caplog):
    from kafka.errors import CommitFailedError, KafkaConnectionError

    from inspector.kafka.kafka_python.group_consumer import _log_commit_outcome

    caplog.set_level("INFO", logger="inspector.kafka.kafka_python.group_consumer")
    failing = False
    for outcome in (CommitFailedError("evicted"), CommitFailedError("again"), KafkaConnectionError("away"),
                    KafkaConnectionError("still away"), object()):
        failing = _log_commit_outcome(failing, outcome)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("offset commit refused" in m for m in messages) == 2  # what the eviction tests count
    assert sum("offset commit failed" in m for m in messages) == 1
    assert messages[-1] == "offset commits succeed again" and not failing


class _Message:
    """A consumed librdkafka message, as `_poll` reads it."""

    def __init__(self, offset: int, partition: int = 0) -> None:
        self._offset, self._partition = offset, partition

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "frames"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"cam-1"

    def value(self) -> bytes:
        return b""

    def headers(self) -> list:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class _RevokingConsumer:
    """librdkafka's consumer where the group takes partition 0 back inside `consume`, after `poll` handed out a
    record of it: what the rebalance test with exactly-once caught as one frame scored twice."""

    def __init__(self, revoke_in_consume: bool) -> None:
        self.revoke_in_consume = revoke_in_consume
        self.revocations: list[frozenset[tuple[str, int]]] = []

    def poll(self, _timeout: float) -> _Message:
        return _Message(7)

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        assert timeout == 0 and num_messages == 9
        if self.revoke_in_consume:
            self.revocations.append(frozenset({("frames", 0)}))  # the revoke callback runs here
        return [_Message(8), _Message(3, partition=1)]


def test_records_fetched_before_the_group_took_their_partition_back_are_not_handed_out():
    clients = pytest.importorskip("inspector.kafka.confluent.clients")
    for revoked, kept in ((False, [(0, 7), (0, 8), (1, 3)]), (True, [(1, 3)])):
        consumer = _RevokingConsumer(revoked)
        records = clients._poll(consumer, 0.1, 10, consumer.revocations)
        assert [(r.partition, r.offset) for r in records] == kept  # the next owner reads them from the committed offset
