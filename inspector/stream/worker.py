"""The inspector's hot loop: poll -> decode -> batch -> score -> publish -> flush -> commit.

Delivery guarantee (at-least-once): a frame's offset is committed only after its alert, its score and any
dead letter are acknowledged by the broker. A crash between publish and commit repeats the results of the
batch being published (duplicates bounded by one batch per partition); nothing is ever skipped. With
`kafka.exactly_once` the results and the offsets go into one transaction instead.

Pipelining: while the main thread publishes batch N, waits for its acknowledgements and commits it, the next
batches are decoded and scored in the threads of `inspector.stream.batch_scoring`. A crash then loses the work on those
too, but none of their results were published, so the duplicates are still bounded by one batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from inspector import evidence
from inspector.camera_labels import CameraLabels
from inspector.contracts import (
    H_CAMERA_ID,
    Alert,
    EvidenceRef,
    FrameScore,
    dead_letter,
    format_origin,
    header_value,
)
from inspector.kafka.transport import ConsumedRecord, FrameConsumer, Partition, Pending, ResultProducer, next_offsets
from inspector.model.artifact import ModelArtifact
from inspector.model.runtime import ModelRunner
from inspector.settings import Settings
from inspector.stream.batch_scoring import Batch, BatchScorer, ScoredBatch, ScoredFrame
from inspector.stream.batcher import MicroBatcher
from inspector.stream.flow_control import BatchSizeGovernor
from inspector.stream.frame_decode import Rejected
from inspector.stream.metrics import WorkerMetrics
from inspector.stream.model_reload import ModelFileWatch
from inspector.stream.score_window import RollingScoreQuantiles

log = logging.getLogger(__name__)


class Worker:
    """One inspector process: a group member on the frames topic with one model on one device."""

    def __init__(self, settings: Settings, runner: ModelRunner, consumer: FrameConsumer,
                 producer: ResultProducer, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.runner = runner
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.cameras = CameraLabels(settings.limits.max_cameras, metrics)
        self._recent_scores = RollingScoreQuantiles(metrics.score_rolling, settings.http.score_window_s)
        self.scorer = BatchScorer(settings, runner, metrics)  # decode and score, in threads of its own
        # The batch size, and whether the next batches are scored while one is published, follow how long the
        # last batch took: an eviction would drop the batches in flight, scored or not.
        self._batch_size = BatchSizeGovernor(settings.kafka.max_poll_interval_ms / 1000, settings.batch.max_size)
        self._stop = threading.Event()
        self._in_flight: deque[Batch] = deque()  # polled, not yet published; the oldest is published next
        self._batcher = MicroBatcher[ConsumedRecord](settings.batch.max_size, 0)  # the batch being collected
        self._assigned = False
        self._model_file = ModelFileWatch(settings.model, metrics, lambda: runner.artifact, self._install_model)
        self._next_lag_update = 0.0
        metrics.show_model(runner.artifact, settings.model)

    # ---- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batches in flight, commit, and return (signal-safe)."""
        self._stop.set()

    def ready(self) -> bool:
        return self._assigned and not self._stop.is_set() and self.producer.connected()

    def warm_up(self) -> float:
        """Run the model on every batch shape it will see; call before run(), as a slow first batch would cost a
        rebalance. Seconds."""
        return self.scorer.warm_up()

    def run(self) -> None:
        """Serve until stop(); returns after the last batch is acknowledged and committed."""
        self.consumer.subscribe(on_revoked=self._on_revoked, on_assigned=self._on_assigned)
        try:
            while not self._stop.is_set():
                records = self._collect()
                # Start decoding (and scoring) the new batch in threads, then finish the oldest one meanwhile:
                # once every scoring thread has a batch, when nothing new came in, or as soon as it is scored.
                if records:
                    batch = self.scorer.start(records)
                    if self._batch_size.overlap:
                        self.scorer.score_ahead(batch)
                    self._in_flight.append(batch)
                depth = self.runner.streams if self._batch_size.overlap else 0
                if self._in_flight and (len(self._in_flight) > depth or not records or self._in_flight[0].is_scored()):
                    self._finish(self._in_flight.popleft())
                if self._model_file.poll():
                    self.metrics.show_model(self.runner.artifact, self.settings.model)
                self._update_lag()
            while self._in_flight:
                self._finish(self._in_flight.popleft())
        finally:
            # After a failure nothing more may be published: consumer.close() calls _on_revoked.
            self._in_flight.clear()
            self._batcher.take()
            self.metrics.ready.set(0)
            self.scorer.shutdown()

    # ---- 1. poll and batch ------------------------------------------------------------------------

    def _collect(self) -> list[ConsumedRecord]:
        """Records for the next batch: up to max_size, waiting at most max_wait after the first arrives.

        While batches are in flight we only take what is already fetched, so that they are not delayed.
        """
        t0 = time.perf_counter()
        max_size, max_wait_s = self._batch_size.max_size, self.settings.batch.max_wait_ms / 1000
        self._batcher = batcher = MicroBatcher[ConsumedRecord](max_size, max_wait_s)
        if self._in_flight:
            for record in self.consumer.poll(0, batcher.room()):
                batcher.add(record, time.monotonic())
        else:
            idle_until = time.monotonic() + 0.2  # come back to check stop/reload even when idle
            while not self._stop.is_set():
                now = time.monotonic()
                if batcher.ready(now) or (not len(batcher) and now >= idle_until):
                    break
                wait = batcher.time_left(now) if len(batcher) else idle_until - now
                for record in self.consumer.poll(wait, batcher.room()):
                    batcher.add(record, time.monotonic())
        records = batcher.take()
        if records:
            self.metrics.stage_seconds.labels("poll").observe(time.perf_counter() - t0)
        return records

    # ---- 2..3. decode and score run in self.scorer; 4..7. publish, acknowledge then commit, metrics ------

    def _finish(self, batch: Batch) -> None:
        """Publish the oldest batch's results, commit its offsets once the broker acknowledged them, fit the batch
        size to how long that took, and record its metrics."""
        t0 = time.perf_counter()
        scored = self.scorer.scored(batch)
        t_scored = time.perf_counter()
        pending = self._publish(scored)
        acked_ns, t_acked = self._acknowledge_then_commit(batch.records, pending)
        t_committed = time.perf_counter()
        self._batch_size.observe(len(batch.records), t_committed - t0)
        self._record_metrics(scored, acked_ns)
        self.metrics.stage_seconds.labels("publish").observe(t_acked - t_scored)
        self.metrics.stage_seconds.labels("commit").observe(t_committed - t_acked)

    def _publish(self, scored: ScoredBatch) -> list[Pending]:
        """4. Send the batch's alerts, scores and dead letters, then the alerts' evidence (drawn meanwhile in a
        thread of its own); the sends are asynchronous, nothing is acknowledged yet."""
        self.producer.begin()
        pending: list[Pending] = []
        for frame in scored.frames:
            self._publish_verdict(frame, scored, pending)
        pending.extend(self._dead_letter(rejected) for rejected in scored.rejected)
        pending.extend(self._publish_evidence(scored))
        return pending

    def _publish_verdict(self, frame: ScoredFrame, scored: ScoredBatch, pending: list[Pending]) -> None:
        """4a. A frame's alert, if it is one, and its score record."""
        kafka, meta, artifact = self.settings.kafka, frame.meta, scored.artifact
        if frame.alert:
            record = frame.record
            alert = Alert.for_frame(
                meta, score=frame.score, threshold=frame.threshold, box=frame.box, model_id=artifact.model_id,
                model_version=artifact.model_version, scored_ns=scored.scored_ns, published_ns=time.time_ns(),
                origin=format_origin(record.topic, record.partition, record.offset),
                evidence=None if frame.evidence is None else EvidenceRef(topic=kafka.evidence_topic, key=meta.frame_id))
            pending.append(self.producer.send(kafka.alerts_topic, meta.camera_id, alert.to_json(), [],
                                              f"alert for frame {meta.frame_id}"))
        if kafka.scores_topic:
            score = FrameScore.for_frame(meta, score=frame.score, threshold=frame.threshold, alert=frame.alert,
                                         scored_ns=scored.scored_ns, model_version=artifact.model_version)
            pending.append(self.producer.send(kafka.scores_topic, meta.camera_id, score.to_json(), [],
                                              f"score for frame {meta.frame_id}"))

    def _publish_evidence(self, scored: ScoredBatch) -> list[Pending]:
        """4b. After every alert of the batch is on its way: their evidence, as it is drawn. One that cannot be
        drawn is logged and counted; its alert has gone out already."""
        pending: list[Pending] = []
        for frame in scored.frames:
            if frame.evidence is None:
                continue
            meta = frame.meta
            try:
                drawn = frame.evidence.result()
            except Exception as exc:  # evidence must never take the worker down
                log.warning("no evidence for frame %s: %s: %s", meta.frame_id, type(exc).__name__, exc)
                self.metrics.evidence_failed.inc()
                continue
            key, value, headers = evidence.to_record(drawn, meta.frame_id, meta.camera_id)
            pending.append(self.producer.send(self.settings.kafka.evidence_topic, key, value, headers,
                                              f"evidence for frame {meta.frame_id}"))
        return pending

    def _acknowledge_then_commit(self, records: list[ConsumedRecord], pending: list[Pending]) -> tuple[int, float]:
        """5-6. The offsets of a batch's records, good and bad, are committed only after the broker acknowledged
        every message published for them (with exactly-once they commit in the same transaction instead).

        Raises TransportError when a message was not acknowledged. A refused commit (the group evicted us) is not
        fatal: the partitions' next owner scores these records again. -> the acknowledgement's time.time_ns()
        and time.perf_counter()."""
        offsets = next_offsets(records)
        self.producer.flush_and_check(pending)
        if self.producer.transactional:
            self.producer.commit_with_offsets(offsets, self.consumer.group_metadata())
        acked = time.time_ns(), time.perf_counter()
        if not self.producer.transactional:
            self.consumer.commit(offsets)
        return acked

    def _record_metrics(self, scored: ScoredBatch, acked_ns: int) -> None:
        """7. Per-frame metrics, after the fact: they must never delay an alert."""
        metrics, now = self.metrics, time.monotonic()
        for frame in scored.frames:
            meta = frame.meta
            camera = self.cameras(meta.camera_id)
            self._recent_scores.add(camera, frame.score, now)
            metrics.frames_consumed.labels(camera).inc()
            metrics.frames_scored.labels(camera).inc()
            metrics.score.labels(camera).observe(frame.score)
            metrics.end_to_end_seconds.labels(camera).observe(max(0.0, (acked_ns - meta.captured_ns) / 1e9))
            if meta.deadline_ns is not None and acked_ns > meta.deadline_ns:
                metrics.deadline_missed.labels(camera).inc()
            if frame.alert:
                metrics.alerts.labels(camera).inc()
        for rejected in scored.rejected:  # a rejected frame's camera gets no scored or alert series
            camera = header_value(rejected.record.headers, H_CAMERA_ID) or "unknown"
            metrics.frames_consumed.labels(self.cameras(camera, start=False)).inc()

    def _install_model(self, new: ModelArtifact) -> None:
        """Hot reload, between two batches: the batches in flight finish with the model that scored them, then
        the new one is warmed up on a scoring thread and swapped in."""
        while self._in_flight:
            self._finish(self._in_flight.popleft())
        self.scorer.load(new)

    def _dead_letter(self, rejected: Rejected) -> Pending:
        record, error = rejected
        origin = format_origin(record.topic, record.partition, record.offset)
        key, value, headers = dead_letter(record.key, record.value, record.headers, origin, error,
                                          self.settings.limits.max_frame_bytes)
        log.warning("dead-lettered %s: %s", origin, error)
        self.metrics.frames_dead_lettered.labels(error.reason).inc()
        return self.producer.send(self.settings.kafka.dlq_topic, key, value, headers, f"dead letter {origin}")

    # ---- group membership -------------------------------------------------------------------------

    def _on_revoked(self, _revoked: list[Partition]) -> None:
        # Called inside our poll(), on kafka-python's IO thread, where a blocking client call (commit) raises.
        # What we hold here was polled but not yet published: every published batch was committed before this
        # poll. We drop it; whoever owns each partition next reads it again from the committed offset.
        self._batcher.take()
        for batch in self._in_flight:
            batch.dropped.set()
        self._in_flight.clear()
        self._assigned = False
        self.metrics.ready.set(0)

    def _on_assigned(self, assigned: list[Partition]) -> None:
        # The consumer reads every assigned partition from its committed offset, also one we kept (FrameConsumer).
        self._assigned = True
        self.metrics.assigned_partitions.set(len(self.consumer.assignment()))
        self.metrics.ready.set(1 if self.ready() else 0)
        log.info("assigned %d partition(s): %s", len(assigned), sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    # ---- housekeeping -----------------------------------------------------------------------------

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_update:
            return
        self._next_lag_update = now + 1.0
        self._recent_scores.export(now)
        self.metrics.consumer_lag.clear()
        for tp, lag in self.consumer.lag().items():
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.metrics.assigned_partitions.set(len(self.consumer.assignment()))
        self.metrics.ready.set(1 if self.ready() else 0)
