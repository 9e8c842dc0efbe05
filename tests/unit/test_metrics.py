from prometheus_client import CollectorRegistry

from inspector.metrics import CameraLabels, build_metrics


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
