"""The metrics of `inspector ui`, built into a registry that is passed in: the operators' verdicts, for the
dashboard's confirmed precision."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from inspector.contracts import FEEDBACK_VERDICTS

NAMESPACE = "inspector"


@dataclass(frozen=True)
class UiMetrics:
    """The operators' verdicts per camera label (capped like the worker's, `inspector.camera_labels`)."""

    feedback: Counter

    def start_camera(self, camera: str) -> None:
        for verdict in FEEDBACK_VERDICTS:
            self.feedback.labels(verdict, camera)


def build_ui_metrics(registry: CollectorRegistry) -> UiMetrics:
    """Create the UI's metrics in `registry`."""
    return UiMetrics(feedback=Counter("feedback", "Operator verdicts on alerts, written to the feedback topic.",
                                      ("verdict", "camera"), namespace=NAMESPACE, registry=registry))
