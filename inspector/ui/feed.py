"""The UI's Kafka side: one consumer thread on alerts, evidence, scores, feedback and ejections (the UI's own group),
which starts each partition `ui.history_minutes` back and hands records to the event loop; and the feedback producer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from inspector.contracts import Feedback
from inspector.errors import TransportError
from inspector.kafka.kafka_python import KafkaPythonResultProducer, client_config
from inspector.settings import Settings

log = logging.getLogger(__name__)

Record = Any  # kafka-python's ConsumerRecord (untyped)


class _RewindOnAssign(ConsumerRebalanceListener):
    def __init__(self, to_rewind: set[TopicPartition]) -> None:
        self._to_rewind = to_rewind

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._to_rewind.update(assigned)


class TopicFeed:
    """Reads the alerts, evidence, scores, feedback and ejections topics in a thread and calls `deliver(record)` for
    each record once (a record read again after a rebalance or a rewind is skipped by its offset)."""

    def __init__(self, settings: Settings, deliver: Callable[[Record], None]) -> None:
        k = settings.kafka
        topics = (k.alerts_topic, k.evidence_topic, k.scores_topic, k.feedback_topic, k.ejections_topic)
        self._topics = [t for t in topics if t]
        self._history_ms = int(settings.ui.history_minutes * 60_000)
        self._deliver = deliver
        self._stop = threading.Event()
        self._to_rewind: set[TopicPartition] = set()  # assigned since the last poll: start them in the past
        self._next: dict[TopicPartition, int] = {}  # the offset after the last record delivered
        try:
            self._consumer = KafkaConsumer(
                **client_config(k), client_id=f"{k.client_id}-ui", group_id=settings.ui.group_id,
                enable_auto_commit=True, auto_offset_reset="latest", max_partition_fetch_bytes=k.max_partition_fetch_bytes,
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"cannot reach Kafka at {k.bootstrap_servers}: {exc}") from None
        self._thread = threading.Thread(target=self._run, name="ui-feed", daemon=True)
        self.connected = False

    def start(self) -> TopicFeed:
        self._consumer.subscribe(self._topics, listener=_RewindOnAssign(self._to_rewind))
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=500)
                if self._to_rewind:
                    rewound = self._rewind()
                    batches = {tp: recs for tp, recs in batches.items() if tp not in rewound}
                self.connected = True
            except (KafkaError, AssertionError, OSError) as exc:  # the broker away: kafka-python reconnects itself
                if self.connected:
                    log.warning("reading the topics failed, retrying: %s", exc)
                self.connected = False
                time.sleep(1.0)
                continue
            for tp, records in batches.items():
                for r in records:
                    if r.offset < self._next.get(tp, 0):
                        continue
                    self._next[tp] = r.offset + 1
                    self._deliver(r)

    def _rewind(self) -> set[TopicPartition]:
        """Seek the newly assigned partitions to the first record of the history window (their records of
        this poll are dropped: they are read again from there)."""
        tps = set(self._to_rewind)
        self._to_rewind.clear()
        since_ms = int(time.time() * 1000) - self._history_ms
        found = self._consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = self._consumer.end_offsets(list(tps))
        for tp in tps:
            at = found.get(tp)
            self._consumer.seek(tp, at.offset if at is not None else ends[tp])
        return tps

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._consumer.close()
        except KafkaError as exc:
            log.warning("ui consumer close: %s", exc)


class FeedbackWriter:
    """Writes verdicts to the feedback topic and waits for the broker's acknowledgement (blocking: call it from a
    worker thread)."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka.feedback_topic
        self._producer = KafkaPythonResultProducer(settings.kafka, max_request_bytes=1024 * 1024)
        self._lock = threading.Lock()

    def write(self, feedback: Feedback) -> None:
        """TransportError when the broker did not acknowledge it."""
        with self._lock:
            pending = self._producer.send(self._topic, feedback.frame_id, feedback.to_json(), [],
                                          f"feedback for frame {feedback.frame_id}")
            self._producer.flush_and_check([pending])

    def close(self) -> None:
        self._producer.close()
