"""`inspector sort`: read the alerts, plan one on-time ejection per defective object, fire it from the lane's
thread, and tell the line what became of every alert.

Loop (main thread): poll alerts -> decide each (planning.py) -> hand scheduled ejections to their lane (lanes.py)
-> publish every final outcome (the ejections topic; late alerts also to the late topic; unreadable alerts to the
sorter's dead-letter topic) -> flush -> commit.

Delivery: an alert's offset is committed only once its outcome is final and published: an ejection still waiting
for its fruit is not committed, so a sorter that dies before firing it leaves it to be read again (and then, its
fire time passed, reported late, so that the fruit is re-checked). A crash between a pulse and the commit reports
that fired alert late once more: at-least-once, like the workers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from pydantic import ValidationError

from inspector.contracts import Alert, EjectionRecord, Headers, dead_letter, format_origin
from inspector.errors import BadFrame, TransportError
from inspector.kafka.transport import ConsumedRecord, FrameConsumer, Pending, ResultProducer, offsets_of
from inspector.settings import Settings
from inspector.sorter.actuators import Actuator
from inspector.sorter.lanes import LaneScheduler
from inspector.sorter.line_file import Line
from inspector.sorter.metrics import SorterMetrics
from inspector.sorter.planning import Decision, EjectionPlanner, PlannedEjection

log = logging.getLogger(__name__)

_LATE_LOG_EVERY_S = 10.0  # a burst of late alerts is one log line


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str
    value: bytes
    headers: Headers
    what: str


@dataclass
class Final:
    """An alert's outcome, ready to publish; its offset may be committed once these are acknowledged."""

    partition: tuple[str, int]
    offset: int
    records: list[Outgoing] = field(default_factory=list)


class OffsetLedger:
    """Per partition, the alerts read and whether each is final: the commit point is the first that is not."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], deque[list[int]]] = {}  # [offset, done] in read order

    def read(self, partition: tuple[str, int], offset: int) -> None:
        self._open.setdefault(partition, deque()).append([offset, 0])

    def done(self, partition: tuple[str, int], offset: int) -> None:
        for entry in self._open.get(partition, ()):
            if entry[0] == offset:
                entry[1] = 1
                return

    def drop(self, partitions: list[tuple[str, int]]) -> None:
        for partition in partitions:
            self._open.pop(partition, None)

    def committable(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset after the last alert of an unbroken run of final ones (and forget them)."""
        ready: dict[tuple[str, int], int] = {}
        for partition, entries in self._open.items():
            while entries and entries[0][1]:
                ready[partition] = entries.popleft()[0] + 1
        return ready

    def waiting(self) -> int:
        return sum(len(entries) for entries in self._open.values())


class Sorter:
    """One sorter process: a group member on the alerts topic, with an actuator per lane."""

    def __init__(self, settings: Settings, line: Line, consumer: FrameConsumer, producer: ResultProducer,
                 actuators: dict[str, Actuator], metrics: SorterMetrics) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self._lock = threading.Lock()
        self.planner = EjectionPlanner(line, settings.sorter.remember_frames)
        self._origin: dict[int, tuple[tuple[str, int], int]] = {}  # id(alert) -> where it was read
        self._finals: queue.SimpleQueue[Final] = queue.SimpleQueue()
        self.lanes = {lane.lane_id: LaneScheduler(lane.lane_id, actuators[lane.lane_id], metrics, self._lock,
                                                  self._ejection_final) for lane in line.lanes}
        self._ledger = OffsetLedger()
        self._stop = threading.Event()
        self._polling = False
        self._late_since_log, self._late_logged_at = 0, 0.0
        for lane in line.lanes:
            metrics.start_lane(lane.lane_id)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        """Reading alerts, and every ejector reachable."""
        ok = self._polling and all(lane.actuator.up for lane in self.lanes.values())
        self.metrics.ready.set(1 if ok else 0)
        return ok

    def run(self) -> None:
        """Sort until stop(); then fire what is due shortly, publish and commit what is final."""
        for lane in self.lanes.values():
            lane.start()
        self.consumer.subscribe(on_revoked=self._on_revoked, on_assigned=lambda _tps: None)
        pending: list[Final] = []
        try:
            while not self._stop.is_set():
                pending = self._step(pending)
        finally:
            for lane in self.lanes.values():
                lane.stop()
            try:
                self._publish_and_commit(pending)
            except TransportError as exc:
                log.warning("at stop, outcomes not published (their alerts are read again): %s", exc)

    def _step(self, pending: list[Final]) -> list[Final]:
        """One turn of the loop; returns the finals still to publish (the broker was away)."""
        try:
            records = self.consumer.poll(0.05, 500)
            self._polling = True
        except TransportError as exc:
            if self._polling:
                log.warning("reading alerts failed, retrying: %s", exc)
            self._polling = False
            time.sleep(1.0)
            records = []
        received_ns = time.time_ns()
        for record in records:
            self._handle(record, received_ns)
        for lane, scheduler in self.lanes.items():
            self.metrics.actuator_up.labels(lane).set(1 if scheduler.actuator.up else 0)
        self.ready()
        while True:
            try:
                pending.append(self._finals.get_nowait())
            except queue.Empty:
                break
        try:
            self._publish_and_commit(pending)
        except TransportError as exc:
            log.warning("publishing outcomes failed, retrying: %s", exc)
            time.sleep(1.0)
            return pending
        return []

    # ---- 1. decide ---------------------------------------------------------------------------------

    def _handle(self, record: ConsumedRecord, received_ns: int) -> None:
        partition = (record.topic, record.partition)
        self._ledger.read(partition, record.offset)
        try:
            alert = Alert.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self._malformed(record, partition, exc)
            return
        with self._lock:
            decision = self.planner.decide(alert, time.time_ns())
            self._origin[id(alert)] = (partition, record.offset)
            # A lane settles an ejection and takes its members in one step under this lock: a merge before
            # that is final with its object, one after it is final now.
            joined = decision.ejection.state if decision.ejection is not None else None
            if decision.outcome == "scheduled" and decision.ejection is not None:
                self.lanes[decision.lane].schedule(decision.ejection)
            elif decision.outcome == "merged" and joined == "scheduled":
                self.lanes[decision.lane].poke()
        self.metrics.alerts.labels(decision.lane).inc()
        if decision.outcome == "scheduled" and decision.fire_ns is not None:
            self.metrics.decision_seconds.observe((time.time_ns() - received_ns) / 1e9)
            self.metrics.margin_seconds.labels(decision.lane).observe((decision.fire_ns - received_ns) / 1e9)
            return
        if decision.outcome == "merged" and decision.ejection is not None:
            if joined != "scheduled":
                self._final(decision, joined == "fired", decision.ejection)
            return  # else final when its object fires
        if decision.outcome == "late":
            self._late(decision)
        self._final(decision, False, None)

    def _malformed(self, record: ConsumedRecord, partition: tuple[str, int], exc: ValidationError) -> None:
        self.metrics.malformed_alerts.inc()
        first = exc.errors()[0]
        detail = f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"
        log.warning("unreadable alert at %s/%d/%d (%s): sent to %s", record.topic, record.partition, record.offset,
                    detail, self.settings.sorter.dlq_topic)
        origin = format_origin(record.topic, record.partition, record.offset)
        key, value, headers = dead_letter(record.key, record.value, record.headers, origin,
                                          BadFrame("malformed_alert", detail), 1024 * 1024)
        final = Final(partition, record.offset)
        final.records.append(Outgoing(self.settings.sorter.dlq_topic, key, value, headers, f"dead letter {origin}"))
        self._finals.put(final)

    def _late(self, decision: Decision) -> None:
        self._late_since_log += 1
        now = time.monotonic()
        if now - self._late_logged_at >= _LATE_LOG_EVERY_S:
            behind = (time.time_ns() - (decision.fire_ns or 0)) / 1e6
            log.warning("lane %s: %d alert(s) came after their fire time (the latest %.0f ms late): not fired, "
                        "sent to %s", decision.lane, self._late_since_log, behind, self.settings.sorter.late_topic)
            self._late_since_log, self._late_logged_at = 0, now

    # ---- 2. outcomes ---------------------------------------------------------------------------------

    def _ejection_final(self, ejection: PlannedEjection, members: list[Alert]) -> None:
        """From a lane's thread: the ejection fired, failed or stayed unconfirmed; its alerts are final."""
        state = ejection.state
        for i, alert in enumerate(members):
            outcome = state if i == 0 else "merged"
            decision = Decision("merged", ejection.lane, alert, ejection)
            self._final(decision, state == "fired", ejection, outcome)

    def _final(self, decision: Decision, ejected: bool, ejection: PlannedEjection | None,
               outcome: str | None = None) -> None:
        alert = decision.alert
        outcome = outcome or decision.outcome
        self.metrics.ejections.labels(decision.lane, outcome).inc()
        with self._lock:
            partition, offset = self._origin.pop(id(alert))
        record = EjectionRecord(
            frame_id=alert.frame_id, camera_id=alert.camera_id, lane=decision.lane if outcome != "unknown_camera"
            else None, outcome=outcome, object_ejected=ejected,
            arrival_ns=ejection.arrival_ns if ejection is not None else decision.arrival_ns,
            fire_ns=ejection.fire_ns if ejection is not None else decision.fire_ns,
            fired_ns=ejection.fired_ns if ejection is not None and outcome == "fired" else None,
            decided_ns=time.time_ns())
        final = Final(partition, offset)
        topic = self.settings.kafka.ejections_topic
        if topic:
            final.records.append(Outgoing(topic, alert.frame_id, record.to_json(), [],
                                          f"outcome of {alert.frame_id}"))
        if outcome == "late" and self.settings.sorter.late_topic:
            final.records.append(Outgoing(self.settings.sorter.late_topic, alert.camera_id, alert.to_json(), [],
                                          f"late alert {alert.frame_id}"))
        self._finals.put(final)

    # ---- 3. publish and commit -------------------------------------------------------------------------

    def _publish_and_commit(self, finals: list[Final]) -> None:
        if finals:
            sent: list[Pending] = [self.producer.send(r.topic, r.key, r.value, r.headers, r.what)
                                   for f in finals for r in f.records]
            if sent:
                self.producer.flush_and_check(sent)
            for f in finals:
                self._ledger.done(f.partition, f.offset)
        ready = self._ledger.committable()
        if ready and not self.consumer.commit(offsets_of(ready)):
            log.warning("offset commit refused (the group moved on); the next owner reads those alerts again")

    def _on_revoked(self, revoked: list) -> None:
        self._ledger.drop([(tp.topic, tp.partition) for tp in revoked])

