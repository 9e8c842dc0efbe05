"""Every Prometheus metric of the worker, built into a registry that is passed in.

Names follow namespace_subsystem_name_unit; counters end in _total, times are in seconds. Label values come
from small fixed sets: camera ids are capped (`inspector.camera_labels`), frame ids never become labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from inspector.contracts import DLQ_REASONS

if TYPE_CHECKING:  # the artifact module imports torch; the metrics need only its fields
    from inspector.model.artifact import ModelArtifact
    from inspector.settings import ModelSettings

NAMESPACE = "inspector"
STAGES = ("poll", "decode", "score", "publish", "commit")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    2.0, 5.0, 10.0)
_STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Scores spread over decades: an image autoencoder's are reconstruction errors of [0, 1] images (0.001-0.1), the
# feature reconstructor's are in units of good images' level (about 1-3 on good produce).
_SCORE_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5,
                  0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0)


@dataclass(frozen=True)
class WorkerMetrics:
    frames_consumed: Counter
    frames_scored: Counter
    frames_dead_lettered: Counter
    alerts: Counter
    deadline_missed: Counter
    batch_size: Histogram
    stage_seconds: Histogram
    end_to_end_seconds: Histogram
    score: Histogram
    threshold: Gauge
    calibration_good_mean: Gauge
    calibration_good_score: Gauge
    target_false_alarm: Gauge
    score_rolling: Gauge
    consumer_lag: Gauge
    model_info: Gauge
    model_reloads: Counter
    evidence_failed: Counter
    transactions_given_up: Counter
    ready: Gauge
    assigned_partitions: Gauge

    def show_model(self, artifact: ModelArtifact, settings: ModelSettings) -> None:
        """The model in service and the thresholds in force (at start-up and after each hot reload)."""
        self.model_info.clear()
        self.model_info.labels(artifact.model_id, artifact.model_version).set(1)
        self.threshold.clear()
        self.threshold.labels("default").set(settings.threshold_for(None, artifact.threshold))
        cameras = set(settings.camera_thresholds) | set(artifact.calibration.camera_thresholds if artifact.calibration
                                                        else ())
        for camera in sorted(cameras):
            self.threshold.labels(camera).set(settings.threshold_for(camera, artifact.threshold_for(camera)))
        self.calibration_good_score.clear()
        if artifact.calibration is not None:
            self.calibration_good_mean.set(artifact.calibration.good_mean)
            self.target_false_alarm.set(artifact.calibration.target_false_alarm)
            quantiles = artifact.calibration.good_quantiles
            for percentile in ("p50", "p90", "p99", "max"):
                if percentile in quantiles:
                    self.calibration_good_score.labels(percentile).set(quantiles[percentile])

    def start_camera(self, camera: str) -> None:
        """Export a camera's counters at 0 from its first frame: rate() then sees the first increase, and
        a panel shows 0 rather than "No data" for a camera without alerts."""
        for counter in (self.frames_consumed, self.frames_scored, self.alerts, self.deadline_missed):
            counter.labels(camera)


def build_metrics(registry: CollectorRegistry) -> WorkerMetrics:
    """Create the worker's metrics in `registry` (a fresh registry per test)."""
    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=NAMESPACE, registry=registry)

    metrics = WorkerMetrics(
        frames_consumed=counter("frames_consumed", "Frames read from the frames topic.", ("camera",)),
        frames_scored=counter("frames_scored", "Frames scored by the model.", ("camera",)),
        frames_dead_lettered=counter("frames_dead_lettered", "Frames sent to the dead-letter topic.", ("reason",)),
        alerts=counter("alerts", "Defect alerts published.", ("camera",)),
        deadline_missed=counter("deadline_missed", "Frames whose verdict was acknowledged after their deadline.",
                                ("camera",)),
        batch_size=Histogram("batch_size_frames", "Frames per scored micro-batch.", namespace=NAMESPACE,
                             registry=registry, buckets=_BATCH_BUCKETS),
        stage_seconds=Histogram("stage_duration_seconds", "Time per batch spent in each stage of the hot loop.",
                                ("stage",), namespace=NAMESPACE, registry=registry, buckets=_STAGE_BUCKETS),
        end_to_end_seconds=Histogram("end_to_end_latency_seconds",
                                     "Capture time to alert/score acknowledged by the broker.", ("camera",),
                                     namespace=NAMESPACE, registry=registry, buckets=_LATENCY_BUCKETS),
        score=Histogram("anomaly_score", "Anomaly score per frame (reconstruction error).", ("camera",),
                        namespace=NAMESPACE, registry=registry, buckets=_SCORE_BUCKETS),
        threshold=gauge("threshold", "Alert threshold in force per camera.", ("camera",)),
        calibration_good_mean=gauge("calibration_good_score_mean",
                                    "Mean score of good images at calibration (for drift alerts)."),
        calibration_good_score=gauge("calibration_good_score",
                                     "Percentiles of good images' scores at calibration (p50, p90, p99, max).",
                                     ("percentile",)),
        target_false_alarm=gauge("target_false_alarm_ratio",
                                 "The false-alarm rate on good frames that the model's threshold was calibrated for."),
        score_rolling=gauge("anomaly_score_rolling",
                            "Percentiles of each camera's anomaly scores over the last http.score_window_s seconds.",
                            ("camera", "percentile")),
        consumer_lag=gauge("consumer_lag_messages", "Messages behind the end of each assigned partition.",
                           ("topic", "partition")),
        model_info=gauge("model_info", "The model being served (value 1).", ("model_id", "model_version")),
        model_reloads=counter("model_reloads", "Hot reloads of the model file, by result.", ("result",)),
        evidence_failed=counter("evidence_failed", "Alerts whose evidence could not be drawn (the alert went out)."),
        transactions_given_up=counter("transactions_given_up", "Exactly-once transactions that could not commit "
                                      "in time, given up and their frames scored again."),
        ready=gauge("ready", "1 when the model is loaded, partitions are assigned and the producer is connected."),
        assigned_partitions=gauge("assigned_partitions", "Partitions of the frames topic assigned to this worker."),
    )
    # Fixed label sets are exported at 0 from the start, for the same reason as `start_camera`.
    for result in ("ok", "rejected"):
        metrics.model_reloads.labels(result)
    for reason in DLQ_REASONS:
        metrics.frames_dead_lettered.labels(reason)
    return metrics


@dataclass(frozen=True)
class SupervisorMetrics:
    """The supervisor's own metrics (`inspector serve --processes N`); its workers' come through `WorkerScrapes`."""

    restarts: Counter
    alive: Gauge
    pid: Gauge


def build_supervisor_metrics(registry: CollectorRegistry, processes: int) -> SupervisorMetrics:
    """Create the supervisor's metrics in `registry`, every worker's series exported from the start."""
    metrics = SupervisorMetrics(
        restarts=Counter("worker_restarts", "Worker processes restarted after they exited or were killed.",
                         ("worker",), namespace=NAMESPACE, registry=registry),
        alive=Gauge("worker_processes_alive", "Worker processes running.", namespace=NAMESPACE, registry=registry),
        pid=Gauge("worker_pid", "Process id of each worker process (0 while it is down).", ("worker",),
                  namespace=NAMESPACE, registry=registry),
    )
    for index in range(processes):
        metrics.restarts.labels(str(index))
        metrics.pid.labels(str(index))
    return metrics


def relabelled_families(scrapes: Mapping[str, str], label: str) -> list[Metric]:
    """Metric families from several processes' /metrics texts, each sample labelled `label`=<its key>; families of
    one name are merged (an exposition may name a family once). A text that does not parse is left out."""
    families: dict[str, Metric] = {}
    for value, text in scrapes.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in parsed:
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, label: value}, sample.value, sample.timestamp,
                                  sample.exemplar)
    return list(families.values())


class WorkerScrapes(Collector):
    """The worker processes' metrics on the supervisor's /metrics, each labelled worker="<index>": one scrape
    target per host. `scrape` returns index -> /metrics text of the workers that answered."""

    def __init__(self, scrape: Callable[[], Mapping[str, str]]) -> None:
        self._scrape = scrape

    def collect(self) -> Iterable[Metric]:
        return relabelled_families(self._scrape(), "worker")
