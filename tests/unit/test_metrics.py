from prometheus_client import CollectorRegistry

from inspector.camera_labels import CameraLabels
from inspector.stream.metrics import build_metrics


def test_metrics_start_at_zero_and_camera_labels_are_capped():
    registry = CollectorRegistry()
    m = build_metrics(registry)
    assert registry.get_sample_value("inspector_model_reloads_total", {"result": "rejected"}) == 0
    assert registry.get_sample_value("inspector_frames_dead_lettered_total", {"reason": "truncated"}) == 0
    cameras = CameraLabels(2, m)
    assert [cameras(c) for c in ("a", "b", "c", "d", "a")] == ["a", "b", "other", "other", "a"]
    for camera in ("a", "b", "other"):
        assert registry.get_sample_value("inspector_alerts_total", {"camera": camera}) == 0
    assert registry.get_sample_value("inspector_alerts_total", {"camera": "c"}) is None
    assert CameraLabels(5, m)("only-bad-frames", start=False) == "only-bad-frames"
    assert registry.get_sample_value("inspector_alerts_total", {"camera": "only-bad-frames"}) is None
    m.alerts.labels(cameras("a")).inc()
    assert registry.get_sample_value("inspector_alerts_total", {"camera": "a"}) == 1


def test_threshold_in_force_prefers_the_camera_then_the_global_override_then_the_model_file():
    from inspector.settings import ModelSettings

    plain = ModelSettings()
    assert plain.threshold_for("cam-1", 2.5) == 2.5 and plain.threshold_for(None, 2.5) == 2.5
    overridden = ModelSettings(threshold=3.0, camera_thresholds={"cam-2": 1.5})
    assert overridden.threshold_for("cam-1", 2.5) == 3.0
    assert overridden.threshold_for("cam-2", 2.5) == 1.5
    assert overridden.threshold_for(None, 2.5) == 3.0  # the "default" label of the threshold gauge
