"""The inspector's hot loop: poll -> decode -> batch -> score -> publish -> flush -> commit.

Delivery guarantee (at-least-once): a frame's offset is committed only after its alert, its score and any
dead letter are acknowledged by the broker. A crash between publish and commit repeats the results of the
batches published and not yet committed (up to MAX_UNACKNOWLEDGED + 1 awaiting acknowledgement and those whose
commit was sent and not yet stored, see below); nothing is ever skipped. With
`kafka.exactly_once` the results and the offsets go into one transaction per batch instead.

Pipelining: while the main thread publishes batch N, the next batches are decoded and scored in the threads of
`inspector.stream.batch_scoring`, and batch N-1's acknowledgements are on their way: its offsets are committed
(without waiting for the commit) once they are in, and the main thread waits for them only before publishing
N+1, or when it has nothing else to do. Waiting for each batch's acknowledgement and then its commit took half of
the main thread's time on a backlog. A crash loses the work on the batches not yet published too, but none of
their results went out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from inspector import evidence
from inspector.camera_labels import CameraLabels
from inspector.contracts import (
    H_CAMERA_ID,
    Alert,
    EvidenceRef,
    dead_letter,
    format_origin,
    frame_score_json,
    header_value,
)
from inspector.errors import TransportError
from inspector.kafka.transport import (
    ConsumedRecord,
    FrameConsumer,
    Offsets,
    Partition,
    Pending,
    ResultProducer,
    next_offsets,
)
from inspector.model.artifact import ModelArtifact
from inspector.model.runtime import ModelRunner
from inspector.settings import Settings
from inspector.stream.batch_scoring import Batch, BatchScorer, ScoredBatch, ScoredFrame
from inspector.stream.batcher import MicroBatcher
from inspector.stream.flow_control import BatchSizeGovernor
from inspector.stream.frame_decode import Rejected, split_among
from inspector.stream.metrics import WorkerMetrics
from inspector.stream.model_reload import ModelFileWatch
from inspector.stream.score_window import RollingScoreQuantiles

log = logging.getLogger(__name__)

MAX_UNACKNOWLEDGED = 2  # published batches awaiting the broker: the one just published and the one before it
MAX_TRANSACTIONS_GIVEN_UP = 3  # in a row (no commit between them); the next failure stops the worker
IDLE_THREAD_POLL_S = 0.005  # how long a poll waits for frames while a scoring thread idles and others still score


@dataclass(slots=True)
class Published:
    """A batch whose results were sent: its offsets are committed once the broker acknowledged all of them."""

    scored: ScoredBatch
    pending: list[Pending]
    offsets: Offsets  # next offset per partition; a partition revoked meanwhile is left out
    taken: float  # time.perf_counter() when the main thread took the batch to publish it
    sent: float  # ... once it was scored and every result sent: the publish stage runs from here to the acks


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
        self._unacknowledged: deque[Published] = deque()  # published, not yet committed; the oldest first
        self._committed: Offsets = {}  # per partition still ours, the offset last sent for commit
        self._batcher = MicroBatcher[ConsumedRecord](settings.batch.max_size, 0)  # the batch being collected
        self._assigned = False
        self._given_up_in_a_row = 0  # exactly-once transactions given up since the last one committed
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
                # Start decoding (and scoring) the new records in threads, a share for each idle scoring thread, then
                # publish the oldest batch as soon as it is scored. With every scoring thread busy, wait until one is
                # through (not for the oldest: a thread done first would idle while frames queue).
                if records:
                    overlap = self._batch_size.overlap
                    for share in split_among(records, self._batch_size.shares(self._idle_scoring_threads())):
                        batch = self.scorer.start(share)
                        if overlap:
                            self.scorer.score_ahead(batch)
                        self._in_flight.append(batch)
                if self._in_flight:
                    if not self._batch_size.overlap or self._in_flight[0].is_scored():
                        self._publish(self._in_flight.popleft())
                    elif not self._idle_scoring_threads() and (not records or len(self._in_flight) > self.runner.streams):
                        self.scorer.wait_for_any(self._in_flight)
                # With nothing left in flight the next poll may wait for frames: settle every published batch first.
                self._settle(wait=not self._in_flight)
                if self._model_file.poll():
                    self.metrics.show_model(self.runner.artifact, self.settings.model)
                self._update_lag()
            self._finish_in_flight()
            if self._committed:  # the commits were not waited for: the last ones once more, waited for, before close
                self.consumer.commit(self._committed)
        finally:
            # After a failure nothing more may be published: consumer.close() calls _on_revoked.
            self._in_flight.clear()
            self._unacknowledged.clear()
            self._batcher.take()
            self.metrics.ready.set(0)
            self.scorer.shutdown()

    def _idle_scoring_threads(self) -> int:
        """Scoring threads with no batch of ours to score (every batch in flight is scored ahead when overlapping)."""
        return max(0, self.runner.streams - sum(not batch.is_scored() for batch in self._in_flight))

    # ---- 1. poll and batch ------------------------------------------------------------------------

    def _collect(self) -> list[ConsumedRecord]:
        """Records for the next batch: up to max_size, waiting at most max_wait after the first arrives.

        While batches are in flight we only take what is already fetched, so that they are not delayed.
        """
        t0 = time.perf_counter()
        max_size, max_wait_s = self._batch_size.max_size, self.settings.batch.max_wait_ms / 1000
        self._batcher = batcher = MicroBatcher[ConsumedRecord](max_size, max_wait_s)
        if self._in_flight:
            idle = self._idle_scoring_threads() if self._batch_size.overlap else 1
            if idle:
                # While another thread scores, a batch of one frame costs a third more a frame: wait for two.
                busy = idle < self.runner.streams
                deadline = time.monotonic() + (0.035 if busy else IDLE_THREAD_POLL_S)
                while True:
                    for record in self.consumer.poll(max(0.0, deadline - time.monotonic()) if len(batcher) < 2 else 0,
                                                     batcher.room()):
                        batcher.add(record, time.monotonic())
                    if len(batcher) >= (2 if busy else 1) or time.monotonic() >= deadline:
                        break
            elif self.runner.streams == 1 and len(self._in_flight) == 1:
                # One scoring thread (CUDA): the next batch is taken and decoded while this one scores.
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

    # ---- 2..3. decode and score run in self.scorer; 4. publish; 5..7. acknowledge then commit, metrics -----

    def _publish(self, batch: Batch) -> None:
        """4. Once the oldest batch is scored, send its alerts, scores and dead letters, then the alerts' evidence
        (drawn meanwhile in a thread of its own); the sends are asynchronous, nothing is acknowledged yet. With
        exactly-once the batch is one transaction, committed here."""
        if not self.producer.transactional:
            self._send_results(batch)
            return
        try:
            self._send_results(batch)
            self._settle(wait=True)
        except TransportError as exc:
            self._give_up_transaction(exc)

    def _send_results(self, batch: Batch) -> None:
        taken = time.perf_counter()
        scored = self.scorer.scored(batch)
        self.producer.begin()
        pending: list[Pending] = []
        for frame in scored.frames:
            self._publish_verdict(frame, scored, pending)
        pending.extend(self._dead_letter(rejected) for rejected in scored.rejected)
        pending.extend(self._publish_evidence(scored))
        self._unacknowledged.append(Published(scored, pending, next_offsets(batch.records), taken,
                                              time.perf_counter()))

    def _give_up_transaction(self, failure: TransportError) -> None:
        """Exactly-once, a transaction that could not commit in time (kafka-python 3.0.12 can lose one of its
        requests for good when the broker dies as it is sent): its results are discarded with the batches in flight,
        a new producer client fences and aborts it, and every partition is read again from its committed offset.
        The worker stops (the error stands) at the failure after MAX_TRANSACTIONS_GIVEN_UP given up in a row, or when
        the new client cannot register."""
        self._given_up_in_a_row += 1
        if self._given_up_in_a_row > MAX_TRANSACTIONS_GIVEN_UP:
            raise failure
        frames = sum(len(b.records) for b in self._in_flight) + sum(
            len(p.scored.frames) + len(p.scored.rejected) for p in self._unacknowledged)
        log.warning("transaction given up (%s): a new producer aborts it; %d frames are read and scored again",
                    failure, frames)
        self.metrics.transactions_given_up.inc()
        for batch in self._in_flight:
            batch.dropped.set()
        self._in_flight.clear()
        self._unacknowledged.clear()
        self._batcher.take()
        self.producer.renew()
        self.consumer.rewind()

    def _finish_in_flight(self) -> None:
        """Publish every batch in flight and settle them all (stopping, or before a model reload)."""
        while self._in_flight:
            self._publish(self._in_flight.popleft())
            self._settle(wait=False)
        self._settle(wait=True)

    def _publish_verdict(self, frame: ScoredFrame, scored: ScoredBatch, pending: list[Pending]) -> None:
        """4a. A frame's alert, if it is one, and its score record."""
        kafka, meta, artifact = self.settings.kafka, frame.meta, scored.artifact
        if frame.alert:
            record = frame.record
            alert = Alert.for_frame(
                meta, score=frame.score, threshold=frame.threshold, box=frame.box, model_id=artifact.model_id,
                model_version=artifact.model_version, scored_ns=scored.scored_ns, published_ns=time.time_ns(),
                origin=format_origin(record.topic, record.partition, record.offset),
                evidence=None if frame.evidence is None else EvidenceRef(topic=kafka.evidence_topic, key=meta.frame_id),
                object_box=frame.object_box)
            pending.append(self.producer.send(kafka.alerts_topic, meta.camera_id, alert.to_json(), [],
                                              f"alert for frame {meta.frame_id}"))
        if kafka.scores_topic:
            score = frame_score_json(meta, score=frame.score, threshold=frame.threshold, alert=frame.alert,
                                     scored_ns=scored.scored_ns, model_version=artifact.model_version)
            pending.append(self.producer.send(kafka.scores_topic, meta.camera_id, score, [],
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

    def _settle(self, *, wait: bool) -> None:
        """5-7 for the published batches, oldest first: each one whose results the broker has acknowledged is
        committed, its batch size observed and its metrics recorded. Waits for the acknowledgements when `wait`,
        and for the oldest batch's whenever more than MAX_UNACKNOWLEDGED await theirs."""
        while self._unacknowledged:
            oldest = self._unacknowledged[0]
            if not (wait or len(self._unacknowledged) > MAX_UNACKNOWLEDGED
                    or self.producer.acknowledged(oldest.pending)):
                return
            self._unacknowledged.popleft()
            acked_ns, t_acked = self._acknowledge_then_commit(oldest)
            t_committed = time.perf_counter()
            self._batch_size.observe(len(oldest.scored.frames) + len(oldest.scored.rejected), t_committed - oldest.taken)
            self._record_metrics(oldest.scored, acked_ns)
            self.metrics.stage_seconds.labels("publish").observe(t_acked - oldest.sent)
            self.metrics.stage_seconds.labels("commit").observe(t_committed - t_acked)

    def _acknowledge_then_commit(self, published: Published) -> tuple[int, float]:
        """5-6. The offsets of a batch's records, good and bad, are committed only after the broker acknowledged
        every message published for them (with exactly-once they commit in the same transaction instead). The
        commit is not waited for: the next one carries later offsets, and run() commits them all once more at stop.

        Raises TransportError when a message was not acknowledged. A refused commit (the group evicted us) is not
        fatal: the partitions' next owner scores these records again. -> the acknowledgement's time.time_ns()
        and time.perf_counter()."""
        self.producer.wait_acknowledged(published.pending)
        if self.producer.transactional:
            self.producer.commit_with_offsets(published.offsets, self.consumer.group_metadata())
            self._given_up_in_a_row = 0
        acked = time.time_ns(), time.perf_counter()
        if not self.producer.transactional:
            self._committed.update(published.offsets)
            self.consumer.commit_async(published.offsets)
        return acked

    def _record_metrics(self, scored: ScoredBatch, acked_ns: int) -> None:
        """7. Per-frame metrics, after the fact: they must never delay an alert."""
        metrics, now = self.metrics, time.monotonic()
        by_camera: dict[str, list[ScoredFrame]] = {}  # a batch holds a few cameras: one label lookup each
        for frame in scored.frames:
            by_camera.setdefault(frame.meta.camera_id, []).append(frame)
        for camera_id, frames in by_camera.items():
            camera = self.cameras(camera_id)
            score, end_to_end = metrics.score.labels(camera), metrics.end_to_end_seconds.labels(camera)
            missed = alerts = 0
            for frame in frames:
                meta = frame.meta
                self._recent_scores.add(camera, frame.score, now)
                score.observe(frame.score)
                end_to_end.observe(max(0.0, (acked_ns - meta.captured_ns) / 1e9))
                missed += meta.deadline_ns is not None and acked_ns > meta.deadline_ns
                alerts += frame.alert
            metrics.frames_consumed.labels(camera).inc(len(frames))
            metrics.frames_scored.labels(camera).inc(len(frames))
            if missed:
                metrics.deadline_missed.labels(camera).inc(missed)
            if alerts:
                metrics.alerts.labels(camera).inc(alerts)
        for rejected in scored.rejected:  # a rejected frame's camera gets no scored or alert series
            camera = header_value(rejected.record.headers, H_CAMERA_ID) or "unknown"
            metrics.frames_consumed.labels(self.cameras(camera, start=False)).inc()

    def _install_model(self, new: ModelArtifact) -> None:
        """Hot reload, between two batches: the batches in flight finish with the model that scored them, then
        the new one is warmed up on a scoring thread and swapped in."""
        self._finish_in_flight()
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

    def _on_revoked(self, revoked: list[Partition]) -> None:
        # Called inside our poll(), on kafka-python's IO thread, where a blocking client call (commit) raises.
        # What was polled but not yet published is dropped; whoever owns each partition next reads it again from
        # the committed offset. Batches published but not yet committed still settle, without committing the
        # revoked partitions (never commit what another member may own): their results may then come twice.
        self._batcher.take()
        for batch in self._in_flight:
            batch.dropped.set()
        self._in_flight.clear()
        gone = set(revoked)
        for published in self._unacknowledged:
            published.offsets = {p: o for p, o in published.offsets.items() if p not in gone}
        for partition in gone:
            self._committed.pop(partition, None)
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
