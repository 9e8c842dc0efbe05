"""The cap on distinct camera label values, shared by the worker's metrics and the operator's page: a flood of
made-up camera ids must not explode the metric series or the page's table."""

from __future__ import annotations

from typing import Protocol

OTHER_CAMERAS = "other"  # the label of every camera past the cap


class CameraSeries(Protocol):
    """Metrics with per-camera series, exported at 0 from a camera's first frame."""

    def start_camera(self, camera: str) -> None: ...


class CameraLabels:
    """The first `limit` camera ids keep their own label; later ones are `OTHER_CAMERAS`.

    With `metrics`, a camera's series start at 0 on its first `start=True` call (`start_camera`): a camera seen
    only on dead-lettered frames gets no alert or scored series, so per-camera ratios have no 0/0."""

    def __init__(self, limit: int, metrics: CameraSeries | None = None) -> None:
        self.limit = limit
        self.metrics = metrics
        self._seen: set[str] = set()
        self._started: set[str] = set()

    def __call__(self, camera_id: str, *, start: bool = True) -> str:
        label = camera_id if camera_id in self._seen or len(self._seen) < self.limit else OTHER_CAMERAS
        self._seen.add(label)
        if start and self.metrics is not None and label not in self._started:
            self._started.add(label)
            self.metrics.start_camera(label)
        return label
