"""The producers' and the UI's Kafka side on either client library (`kafka.transport`), against the real broker:
frames published through the FrameSender, one fetched back by its origin, verdicts written and read back to the
topic's end, the UI's feed delivering what came before it started (its history window) and what came after, and
the workers' consumer reading every assigned partition from its committed offset."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from inspector.contracts import H_FRAME_ID, Feedback, header_value
from inspector.kafka.transport import Partition, client_types
from inspector.settings import Settings, UiSettings
from inspector.ui.feed import FeedbackWriter, TopicFeed
from inspector.ui.feedback import FrameFetcher, read_feedback
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import producer_settings

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("transport", ["kafka-python", "confluent"])
def test_the_producers_and_the_ui_work_on_either_client_library(topics, reader, transport):
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    kafka = topics.kafka_settings(transport=transport)
    settings = Settings(kafka=kafka, ui=UiSettings(group_id=f"ui-{topics.group}"))

    publisher = Publisher(kafka, producer_settings(camera_id="cam-t"))
    stats = publisher.publish(ListSource(planned_stream(producer_settings(seed=5), n_frames=4, n_defects=0)))
    publisher.close()
    assert stats.acked == 4 and stats.failed == 0
    first = reader(topics.frames).until(lambda records: len(records) >= 4, timeout_s=60)[0]
    frame_id = header_value(first.headers, H_FRAME_ID)
    origin = f"{first.topic}/{first.partition}/{first.offset}"

    fetcher = FrameFetcher(kafka, settings.limits)
    try:
        assert fetcher.fetch(origin, frame_id) == first.value
        assert fetcher.fetch(origin, "another-frame") is None  # the headers must name the frame asked for
        assert fetcher.fetch(f"{first.topic}/{first.partition}/999999", frame_id) is None
    finally:
        fetcher.close()

    def verdict(word: str) -> Feedback:
        return Feedback(frame_id=frame_id, camera_id="cam-t", verdict=word, at_ns=time.time_ns(), origin=origin)

    delivered: list = []
    writer = FeedbackWriter(settings)
    try:
        writer.write(verdict("false_alarm"))  # before the feed starts: it comes from the history window
        feed = TopicFeed(settings, delivered.append).start()
        try:
            deadline = time.monotonic() + 60
            while not feed.connected and time.monotonic() < deadline:
                time.sleep(0.2)
            writer.write(verdict("confirmed_defect"))
            while len(delivered) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            feed.close()
    finally:
        writer.close()
    assert [Feedback.model_validate_json(r.value).verdict for r in delivered] == ["false_alarm", "confirmed_defect"]
    assert [f.verdict for f in read_feedback(kafka)] == ["false_alarm", "confirmed_defect"]


@pytest.mark.parametrize("transport", ["kafka-python", "confluent"])
def test_a_partition_kept_across_a_rebalance_is_read_again_from_its_committed_offset(topics, transport):
    """A rebalance drops what a member polled but had not committed. kafka-python keeps the position of a partition
    the member keeps (and a member can miss a generation in which another one owned and committed it): each
    assignment must start at the committed offset, or the next commit skips the dropped records."""
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    kafka = topics.kafka_settings(transport=transport)
    _fill_both_partitions(topics, 12)
    consumer_type, _ = client_types(transport)
    first, second = (consumer_type(kafka, max_poll_records=50) for _ in range(2))
    try:
        first.subscribe(on_revoked=lambda _p: None, on_assigned=lambda _p: None)
        deadline = time.monotonic() + 60
        assert len(_poll_until(first, 24, deadline)) == 24
        # Only the first four of each partition were published and committed; the rest is still in hand.
        assert first.commit({Partition(topics.frames, 0): 4, Partition(topics.frames, 1): 4})
        second.subscribe(on_revoked=lambda _p: None, on_assigned=lambda _p: None)
        after: dict[int, list] = {0: [], 1: []}
        while time.monotonic() < deadline and not all(len(a) == 8 for a in after.values()):
            for k, member in enumerate((first, second)):
                after[k].extend(member.poll(0.2, 50))
        (kept,), (moved,) = first.assignment(), second.assignment()
        assert [(r.partition, r.offset) for r in after[0]] == [(kept.partition, o) for o in range(4, 12)]
        assert [(r.partition, r.offset) for r in after[1]] == [(moved.partition, o) for o in range(4, 12)]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("transport", ["kafka-python", "confluent"])
def test_a_transaction_given_up_is_aborted_by_the_renewed_producer_and_the_consumer_reads_again(topics, transport):
    """What the worker does with an exactly-once transaction that cannot commit: renew() registers a new client
    under the transactional id, whose coordinator aborts what the old one left open, and rewind() reads every
    assigned partition again from its committed offset."""
    if transport == "confluent":
        pytest.importorskip("confluent_kafka")
    kafka = topics.kafka_settings(transport=transport, exactly_once=True, transactional_id=f"{topics.group}-renew")
    _fill_both_partitions(topics, 6)
    consumer_type, producer_type = client_types(transport)
    consumer = consumer_type(kafka, max_poll_records=50)
    results = producer_type(kafka, max_request_bytes=1_000_000)
    committed_reader = KafkaConsumer(topics.scores, bootstrap_servers=topics.bootstrap, auto_offset_reset="earliest",
                                     isolation_level="read_committed", consumer_timeout_ms=3000)
    try:
        consumer.subscribe(on_revoked=lambda _p: None, on_assigned=lambda _p: None)
        deadline = time.monotonic() + 60
        assert len(_poll_until(consumer, 12, deadline)) == 12

        results.begin()
        results.wait_acknowledged([results.send(topics.scores, "k", b"given up", [], "given up")])
        results.renew()  # the transaction above stays open on the old client: the new one's registration aborts it
        results.begin()
        results.wait_acknowledged([results.send(topics.scores, "k", b"committed", [], "committed")])
        results.commit_with_offsets({Partition(topics.frames, 0): 2, Partition(topics.frames, 1): 5},
                                    consumer.group_metadata())

        consumer.rewind()
        again = _poll_until(consumer, 5, deadline)
        assert sorted((r.partition, r.offset) for r in again) == [(0, 2), (0, 3), (0, 4), (0, 5), (1, 5)]
        assert [record.value for record in committed_reader] == [b"committed"]
    finally:
        committed_reader.close()
        results.close()
        consumer.close()


def _fill_both_partitions(topics, per_partition: int) -> None:
    """`per_partition` records into each of the frames topic's two partitions."""
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap)
    for partition in (0, 1):
        for i in range(per_partition):
            producer.send(topics.frames, key=b"k", value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()


def _poll_until(consumer, count: int, deadline: float) -> list:
    polled: list = []
    while len(polled) < count and time.monotonic() < deadline:
        polled.extend(consumer.poll(0.5, 50))
    return polled
