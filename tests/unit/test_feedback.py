"""Operator feedback without a broker: the verdict that counts per frame, the false-alarm frames saved for
training, the threshold re-set with confirmed false alarms, and the UI's in-memory wall."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from inspector.camera_labels import OTHER_CAMERAS
from inspector.contracts import Alert, Feedback, FrameScore, parse_origin
from inspector.model.threshold import calibrate, realised_false_alarm
from inspector.ui.feedback import FalseAlarms, latest_verdicts
from inspector.ui.state import WallState


def _feedback(frame_id: str, verdict: str, at_ns: int) -> Feedback:
    return Feedback(frame_id=frame_id, camera_id="cam-1", verdict=verdict, at_ns=at_ns,  # type: ignore[arg-type]
                    origin=f"frames/0/{at_ns}")


def test_the_latest_verdict_per_frame_wins():
    given = [_feedback("a", "false_alarm", 1), _feedback("b", "false_alarm", 2), _feedback("a", "confirmed_defect", 3),
             _feedback("b", "confirmed_defect", 1)]  # b's second record is older: a late duplicate
    latest = latest_verdicts(given)
    assert {k: v.verdict for k, v in latest.items()} == {"a": "confirmed_defect", "b": "false_alarm"}


def test_feedback_refuses_unknown_verdicts_and_origins_parse_strictly():
    with pytest.raises(pydantic.ValidationError):
        Feedback(frame_id="a", camera_id="c", verdict="maybe", at_ns=0)  # type: ignore[arg-type]
    assert parse_origin("frames-x/1/22") == ("frames-x", 1, 22)
    assert parse_origin("a/b/3/4") == ("a/b", 3, 4)  # the topic is everything before the last two parts
    for bad in ("frames/1", "frames/x/2", "/1/2", "frames/-1/2"):
        with pytest.raises(ValueError):
            parse_origin(bad)


def test_false_alarm_frames_are_saved_under_safe_names(tmp_path):
    found = FalseAlarms({"../../etc/passwd": b"\xff\xd8one", "cam 1/frame<2>": b"\xff\xd8two"}, missing=["gone"])
    paths = found.save(tmp_path / "fa")
    assert len(paths) == 2 and all(p.parent == tmp_path / "fa" and p.suffix == ".jpg" for p in paths)
    assert all("/" not in p.name and "<" not in p.name for p in paths)
    assert sorted(p.read_bytes() for p in paths) == [b"\xff\xd8one", b"\xff\xd8two"]


def test_confirmed_false_alarms_raise_the_threshold_above_them():
    rng = np.random.default_rng(7)
    good = rng.lognormal(-5, 0.3, 400)
    before = calibrate(good, good, 0.01)
    # The line's good frames that the model flags: a lighting change the held-out set never showed.
    false_alarms = before.threshold * rng.uniform(1.05, 1.3, 12)
    after = calibrate(np.r_[good, false_alarms], good, 0.01)
    assert after.threshold > before.threshold
    assert realised_false_alarm(false_alarms, after.threshold) < realised_false_alarm(false_alarms, before.threshold)
    assert realised_false_alarm(np.r_[good, false_alarms], after.threshold) <= 0.01 + 1e-9


def _alert(frame_id: str, camera: str = "cam-1", captured_ns: int = 0) -> Alert:
    return Alert(frame_id=frame_id, camera_id=camera, sequence=0, captured_ns=captured_ns, scored_ns=captured_ns,
                 published_ns=captured_ns + 40_000_000, score=0.3, threshold=0.1, model_id="m", model_version="1")


def test_the_wall_keeps_the_last_alerts_once_each_and_pairs_evidence_in_either_order():
    wall = WallState(max_alerts=3, window_minutes=5)
    assert wall.add_evidence("f1", b"jpeg-1") is None  # evidence before its alert waits for it
    assert wall.add_alert(_alert("f1")) is not None and wall.alerts["f1"].evidence_jpeg == b"jpeg-1"
    assert wall.add_alert(_alert("f1")) is None  # read again after a rebalance: not shown twice
    for i in range(2, 6):
        wall.add_alert(_alert(f"f{i}"))
    assert list(wall.alerts) == ["f3", "f4", "f5"]
    view = wall.add_evidence("f4", b"jpeg-4")
    assert view is not None and view.to_json()["evidence"] is True and view.to_json()["latency_ms"] == 40.0


def test_verdicts_read_back_mark_their_alert_whichever_comes_first_and_the_latest_wins():
    wall = WallState(max_alerts=2, window_minutes=5)
    assert wall.add_verdict("f1", "false_alarm") is None  # read back before its alert (after a restart)
    assert wall.add_alert(_alert("f1")).to_json()["verdict"] == "false_alarm"  # type: ignore[union-attr]
    wall.add_alert(_alert("f2"))
    view = wall.add_verdict("f2", "confirmed_defect")
    assert view is not None and view.verdict == "confirmed_defect"
    assert wall.add_verdict("f2", "false_alarm") is view and view.verdict == "false_alarm"  # another operator
    for i in range(3, 7):  # verdicts for alerts never seen are forgotten past the wall's size
        wall.add_verdict(f"f{i}", "false_alarm")
    assert wall.add_alert(_alert("f3")).verdict is None  # type: ignore[union-attr]
    assert wall.add_alert(_alert("f6")).verdict == "false_alarm"  # type: ignore[union-attr]


def test_counts_cover_the_window_and_cap_the_cameras():
    now_s = 1_000_000 * 60.0
    wall = WallState(max_alerts=10, window_minutes=5, max_cameras=2)

    def score(camera: str, minutes_ago: float, alert: bool) -> FrameScore:
        ns = int((now_s - minutes_ago * 60) * 1e9)
        return FrameScore(frame_id="x", camera_id=camera, seq=0, score=0.1, thr=0.2, alert=alert, captured_ns=ns,
                          scored_ns=ns, model_version="1")

    wall.add_score(score("a", 0.5, True))
    wall.add_score(score("a", 3.5, False))
    wall.add_score(score("a", 7.0, True))  # outside the window
    wall.add_score(score("b", 1.0, False))
    wall.add_score(score("<c>", 1.0, True))  # a third camera: counted as "other"
    assert wall.counts(now_s) == {"a": {"frames": 2, "alerts": 1}, "b": {"frames": 1, "alerts": 0},
                                  OTHER_CAMERAS: {"frames": 1, "alerts": 1}}
    assert wall.counts(now_s + 3600) == {}  # an hour later everything has aged out


def test_without_scores_the_alerts_themselves_are_counted():
    wall = WallState(max_alerts=10, window_minutes=10)
    wall.add_alert(_alert("f1", "cam-x", captured_ns=int(59.5 * 60e9)))
    assert wall.counts(60 * 60.0) == {"cam-x": {"frames": 0, "alerts": 1}}
