"""Per-camera thresholds from the line's published scores (`inspector calibrate --from-line`), without a broker."""

import numpy as np
import pytest

from inspector.contracts import FrameScore
from inspector.training.line_calibration import propose_thresholds


def _scores(camera: str, values: np.ndarray, *, version: str = "3", label: str | None = None,
            start: int = 0) -> list[FrameScore]:
    return [FrameScore(frame_id=f"{camera}-{start + i}", camera_id=camera, seq=start + i, score=float(v), thr=1.0,
                       alert=bool(v > 1.0), captured_ns=i, scored_ns=i, model_version=version, label=label)
            for i, v in enumerate(values)]


def test_a_brighter_camera_gets_a_higher_threshold_and_defects_are_left_out() -> None:
    rng = np.random.default_rng(0)
    normal = _scores("cam-normal", rng.normal(0.8, 0.05, 2000))
    bright = _scores("cam-bright", rng.normal(1.1, 0.05, 2000))  # its light: every score 0.3 higher
    # Defects far above: a labelled one and operator-confirmed ones must not lift the good frames' quantile.
    defects = _scores("cam-normal", np.full(100, 5.0), label="bruise", start=5000)
    confirmed = _scores("cam-normal", np.full(100, 5.0), start=6000)
    other_version = _scores("cam-normal", np.full(500, 9.0), version="2", start=7000)
    proposals = propose_thresholds(normal + bright + defects + confirmed + other_version, model_version="3",
                                   target_false_alarm=0.01, current=lambda _camera: 1.0,
                                   confirmed_defects={s.frame_id for s in confirmed})
    by_camera = {p.camera_id: p for p in proposals}
    assert list(by_camera) == ["cam-bright", "cam-normal"]
    normal_p, bright_p = by_camera["cam-normal"], by_camera["cam-bright"]
    assert normal_p.frames == 2200 and normal_p.left_out == 200 and normal_p.good == 2000
    assert normal_p.proposed is not None and 0.88 < normal_p.proposed < 0.96  # mean + 2.33 sd = 0.916
    assert bright_p.proposed is not None and 1.18 < bright_p.proposed < 1.26
    assert bright_p.alert_rate_current > 0.9  # at the old threshold nearly every frame of the bright camera alerts
    assert bright_p.alert_rate_proposed is not None and bright_p.alert_rate_proposed <= 0.015
    assert bright_p.false_alarm_bound is not None and 0.01 < bright_p.false_alarm_bound < 0.02


def test_too_few_good_frames_propose_nothing() -> None:
    proposals = propose_thresholds(_scores("cam-1", np.linspace(0, 1, 200)), model_version="3",
                                   target_false_alarm=0.01, current=lambda _camera: 0.5)
    assert proposals[0].proposed is None and proposals[0].alert_rate_proposed is None
    assert proposals[0].alert_rate_current == pytest.approx(0.5, abs=0.01)


def test_propose_from_line_uses_the_threshold_in_force_and_names_the_overridden_cameras(monkeypatch) -> None:
    from types import SimpleNamespace

    from inspector.settings import ModelSettings, Settings
    from inspector.training import line_calibration

    rng = np.random.default_rng(1)
    scores = _scores("cam-a", rng.normal(0.8, 0.05, 400)) + _scores("cam-b", rng.normal(0.8, 0.05, 400))
    monkeypatch.setattr(line_calibration, "read_line", lambda _kafka, _window_s: (scores, {"x", "y"}))
    artifact = SimpleNamespace(model_id="m", model_version="3",
                               threshold_for=lambda camera: {"cam-a": 0.7}.get(camera, 0.9))
    settings = Settings(model=ModelSettings(camera_thresholds={"cam-b": 2.0}))
    line = line_calibration.propose_from_line(settings, artifact, 600, 0.01)
    assert (line.model_version, line.scores, line.confirmed_defects, line.window_s) == ("3", 800, 2, 600)
    assert [p.current for p in line.cameras] == [0.7, 2.0]  # the file's camera threshold; the settings' override
    assert line.any_proposed and line.overridden == ("cam-b",)
    assert "cam-b" in (line.override_note() or "")
