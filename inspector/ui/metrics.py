"""The metrics of `inspector ui`, built into a registry that is passed in: the operators' verdicts, for the
dashboard's confirmed precision, and the line calibrations shown and applied."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from inspector.contracts import FEEDBACK_VERDICTS

NAMESPACE = "inspector"


@dataclass(frozen=True)
class UiMetrics:
    """The operators' verdicts per camera label (capped like the worker's, `inspector.camera_labels`), and the
    calibration page's proposals."""

    feedback: Counter
    line_calibration_proposals: Counter
    line_calibration_applied: Counter

    def start_camera(self, camera: str) -> None:
        for verdict in FEEDBACK_VERDICTS:
            self.feedback.labels(verdict, camera)


def build_ui_metrics(registry: CollectorRegistry) -> UiMetrics:
    """Create the UI's metrics in `registry`."""
    return UiMetrics(
        feedback=Counter("feedback", "Operator verdicts on alerts, written to the feedback topic.",
                         ("verdict", "camera"), namespace=NAMESPACE, registry=registry),
        line_calibration_proposals=Counter("line_calibration_proposals", "Threshold proposals from the line "
                                           "computed and shown on the calibration page.", namespace=NAMESPACE,
                                           registry=registry),
        line_calibration_applied=Counter("line_calibration_applied", "Threshold proposals applied from the "
                                         "calibration page (a new model version written).", namespace=NAMESPACE,
                                         registry=registry))
