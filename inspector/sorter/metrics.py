"""Every Prometheus metric of `inspector sort`, built into a registry that is passed in.

Label values come from small fixed sets: lanes are the line file's, outcomes the fixed tuple below.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inspector.contracts import EJECTION_OUTCOMES

NAMESPACE = "inspector"
SUBSYSTEM = "sorter"
# What became of each alert: fired (it opened an ejection that fired), merged (another alert of the same object
# opened it), duplicate (the same frame again), late (its fire time had passed on arrival), failed (the actuator
# did not take the command), unconfirmed (its object had fewer alerts than the lane's min_alerts at fire time),
# unknown_camera (no lane in the line file).
OUTCOMES = EJECTION_OUTCOMES
UNKNOWN_LANE = "unknown"
# Margin: fire time minus now when the alert is scheduled; the ejector's distance sets its scale.
_MARGIN_BUCKETS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)
_ERROR_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)
# Decision: alert received -> fire scheduled, resolved around its 2-ms target.
_DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.05)


@dataclass(frozen=True)
class SorterMetrics:
    alerts: Counter  # (lane)
    ejections: Counter  # (lane, outcome): one per alert, by what became of it
    pulses: Counter  # (lane): actuator pulses fired (one per ejected object)
    malformed_alerts: Counter
    margin_seconds: Histogram  # (lane)
    fire_error_seconds: Histogram  # (lane): |pulse start - planned fire time|
    decision_seconds: Histogram  # alert received -> ejection scheduled
    actuator_up: Gauge  # (lane)
    ready: Gauge

    def start_lane(self, lane: str) -> None:
        """Export a lane's series at 0 from the start: rate() sees the first increase, panels show 0."""
        self.alerts.labels(lane)
        self.pulses.labels(lane)
        for outcome in OUTCOMES:
            self.ejections.labels(lane, outcome)


def build_sorter_metrics(registry: CollectorRegistry) -> SorterMetrics:
    """Create the sorter's metrics in `registry` (a fresh registry per test)."""
    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry)

    def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, labels, namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry,
                         buckets=buckets)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=NAMESPACE, subsystem=SUBSYSTEM, registry=registry)

    metrics = SorterMetrics(
        alerts=counter("alerts", "Defect alerts read, per lane.", ("lane",)),
        ejections=counter("ejections", "Alerts by what became of them (outcome).", ("lane", "outcome")),
        pulses=counter("pulses", "Ejector pulses fired, one per ejected object.", ("lane",)),
        malformed_alerts=counter("malformed_alerts", "Alerts that could not be read (sent to the sorter's "
                                 "dead-letter topic)."),
        margin_seconds=histogram("margin_seconds", "Fire time minus now when an ejection is scheduled.", ("lane",),
                                 _MARGIN_BUCKETS),
        fire_error_seconds=histogram("fire_error_seconds", "How far a pulse started from its planned fire time.",
                                     ("lane",), _ERROR_BUCKETS),
        decision_seconds=histogram("decision_seconds", "Alert received to ejection scheduled.", (),
                                   _DECISION_BUCKETS),
        actuator_up=gauge("actuator_up", "1 while the lane's ejector is reachable.", ("lane",)),
        ready=gauge("ready", "1 when the sorter reads alerts and every actuator is up."),
    )
    metrics.ejections.labels(UNKNOWN_LANE, "unknown_camera")
    return metrics
