"""Evidence end to end on a real broker: every alert names its evidence, the evidence record is on its topic by
the time the frame's offset is committed, and turning evidence off leaves alerts as they were."""

from __future__ import annotations

import json

import pytest

from inspector import evidence
from inspector.contracts import Alert, parse_origin
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import committed_offsets, producer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_every_alert_has_its_evidence_on_the_topic_before_its_offset_is_committed(topics, start_worker, reader):
    frames = planned_stream(producer_settings(seed=5), n_frames=40, n_defects=8)
    start_worker(topics)
    stats = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-ev")).publish(ListSource(frames))
    assert stats.acked == 40

    def all_committed() -> bool:
        committed, ends = committed_offsets(topics.bootstrap, topics.group, topics.frames)
        return sum(committed.values()) == sum(ends.values()) == 40

    scores = reader(topics.scores)
    scores.until(lambda _rs: all_committed(), timeout_s=180)
    assert all_committed()
    # Committed: every alert and every evidence record of those frames was acknowledged before.
    alerts = [Alert.model_validate_json(r.value) for r in reader(topics.alerts).until(lambda _rs: False, 2)]
    ev_records = reader(topics.evidence).until(lambda _rs: False, 2)
    assert len(alerts) >= 4  # the planned defects alert (the default model detects most of them)
    by_key = {r.key.decode(): r for r in ev_records}
    for alert in alerts:
        assert alert.evidence is not None and alert.evidence.topic == topics.evidence
        assert alert.origin is not None and parse_origin(alert.origin)[0] == topics.frames
        record = by_key[alert.evidence.key]
        ev = evidence.from_record(record.value, record.headers)
        assert len(ev.jpeg) <= evidence.MAX_JPEG_BYTES and ev.anomaly_map().max() > 0
    assert set(by_key) == {a.frame_id for a in alerts}


def test_evidence_turned_off_publishes_none_and_alerts_carry_no_reference(topics, start_worker, reader):
    frames = planned_stream(producer_settings(seed=6), n_frames=30, n_defects=6)
    start_worker(topics, INSPECTOR_KAFKA__EVIDENCE_TOPIC="")
    Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-off")).publish(ListSource(frames))
    scores = reader(topics.scores)
    scores.until(lambda rs: len(rs) >= 30, timeout_s=180)
    alerts = reader(topics.alerts).until(lambda _rs: False, 2)
    assert alerts and all(json.loads(r.value)["evidence"] is None for r in alerts)
    assert reader(topics.evidence).until(lambda _rs: False, 2) == []
