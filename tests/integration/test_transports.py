"""The producers' and the UI's Kafka side on either client library (`kafka.transport`), against the real broker:
frames published through the FrameSender, one fetched back by its origin, verdicts written and read back to the
topic's end, and the UI's feed delivering what came before it started (its history window) and what came after."""

from __future__ import annotations

import time

import pytest

from inspector.contracts import H_FRAME_ID, Feedback, header_value
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
