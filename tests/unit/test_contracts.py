import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inspector.contracts import DLQ_REASONS, Alert, Box, FrameMeta, FrameScore, frame_score_json
from inspector.errors import BadFrame

ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40)


@given(frame_id=ids, camera_id=ids, seq=st.integers(0, 2**62), captured=st.integers(0, 2**63 - 1),
       deadline=st.none() | st.integers(0, 2**63 - 1), label=st.none() | st.sampled_from(["good", "rotten"]))
def test_frame_meta_round_trips_through_headers(frame_id, camera_id, seq, captured, deadline, label):
    meta = FrameMeta(frame_id=frame_id, camera_id=camera_id, sequence=seq, captured_ns=captured,
                     deadline_ns=deadline, label=label)
    assert FrameMeta.from_headers(meta.to_headers()) == meta


def _headers(**overrides):
    base = dict(FrameMeta(frame_id="f", camera_id="c", sequence=1, captured_ns=2).to_headers())
    base.update(overrides)
    return [(k, v) for k, v in base.items() if v is not None]


@pytest.mark.parametrize("headers, reason", [
    (None, "missing_header"),
    ([], "missing_header"),
    (_headers(**{"frame-id": None}), "missing_header"),
    (_headers(**{"schema-version": b"2"}), "unknown_schema"),
    (_headers(**{"schema-version": b"one"}), "malformed_header"),
    (_headers(**{"sequence": b"-3"}), "malformed_header"),
    (_headers(**{"captured-ns": b"\xff\xfe"}), "malformed_header"),
    (_headers(**{"content-type": b"image/png"}), "unsupported_content_type"),
])
def test_bad_headers_are_refused_with_a_reason(headers, reason):
    with pytest.raises(BadFrame) as info:
        FrameMeta.from_headers(headers)
    assert info.value.reason == reason
    assert reason in DLQ_REASONS


def test_alert_and_score_are_plain_json():
    alert = Alert(frame_id="f", camera_id="c", sequence=3, captured_ns=1, scored_ns=2, published_ns=3,
                  score=0.5, threshold=0.1, model_id="m", model_version="1",
                  box=Box(x0=1, y0=2, x1=3, y1=4, area_fraction=0.01))
    data = json.loads(alert.to_json())
    assert data["kind"] == "defect-alert" and data["box"]["x1"] == 3 and data["schema_version"] == 1
    assert Alert.model_validate_json(alert.to_json()) == alert
    score = json.loads(FrameScore(frame_id="f", camera_id="c", seq=1, score=0.1, thr=0.2, alert=False,
                                  captured_ns=1, scored_ns=2, model_version="1").to_json())
    assert "label" not in score and score["v"] == 1


scores = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6) | st.floats(1e-4, 1e16)
texts = st.text(min_size=1, max_size=40) | st.sampled_from(["cam-1", "f-0001", 'a"b', "back\\slash", "tab\t"])


@given(frame_id=texts, camera_id=texts, seq=st.integers(0, 2**62), captured=st.integers(0, 2**63 - 1),
       label=st.none() | texts, object_id=st.none() | texts, score=scores, threshold=scores, alert=st.booleans(),
       scored=st.integers(0, 2**63 - 1), version=texts)
def test_the_hot_loops_score_record_is_the_models_json_byte_for_byte(frame_id, camera_id, seq, captured, label,
                                                                     object_id, score, threshold, alert, scored,
                                                                     version):
    meta = FrameMeta(frame_id=frame_id[:128], camera_id=camera_id[:128], sequence=seq, captured_ns=captured,
                     label=None if label is None else label[:64], object_id=object_id)
    fields = dict(score=score, threshold=threshold, alert=alert, scored_ns=scored, model_version=version)
    assert frame_score_json(meta, **fields) == FrameScore.for_frame(meta, **fields).to_json()
