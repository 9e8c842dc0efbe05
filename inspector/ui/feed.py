"""The UI's Kafka side: one consumer thread on alerts, evidence, scores, feedback and ejections (the UI's own group),
which starts each partition `ui.history_minutes` back and hands records to the event loop; and the feedback producer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from inspector.contracts import Feedback
from inspector.errors import TransportError
from inspector.kafka.transport import ConsumedRecord, Partition, client_types, history_feed
from inspector.settings import Settings

log = logging.getLogger(__name__)



class TopicFeed:
    """Reads the alerts, evidence, scores, feedback and ejections topics in a thread and calls `deliver(record)` for
    each record once (a record read again after a rebalance or a rewind is skipped by its offset)."""

    def __init__(self, settings: Settings, deliver: Callable[[ConsumedRecord], None]) -> None:
        k = settings.kafka
        topics = (k.alerts_topic, k.evidence_topic, k.scores_topic, k.feedback_topic, k.ejections_topic)
        self._deliver = deliver
        self._stop = threading.Event()
        self._next: dict[Partition, int] = {}  # the offset after the last record delivered
        self._feed = history_feed(k, topics=[topic for topic in topics if topic], group_id=settings.ui.group_id,
                                  history_s=settings.ui.history_minutes * 60, client_id=f"{k.client_id}-ui")
        self._thread = threading.Thread(target=self._run, name="ui-feed", daemon=True)
        self.connected = False

    def start(self) -> TopicFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self._feed.poll(0.5)
                self.connected = True
            except TransportError as exc:  # the broker away: the client reconnects itself
                if self.connected:
                    log.warning("reading the topics failed, retrying: %s", exc)
                self.connected = False
                time.sleep(1.0)
                continue
            for record in records:
                partition = Partition(record.topic, record.partition)
                if record.offset < self._next.get(partition, 0):
                    continue
                self._next[partition] = record.offset + 1
                self._deliver(record)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._feed.close()


class FeedbackWriter:
    """Writes verdicts to the feedback topic and waits for the broker's acknowledgement (blocking: call it from a
    worker thread)."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka.feedback_topic
        _consumer_type, producer_type = client_types(settings.kafka.transport)
        self._producer = producer_type(settings.kafka, max_request_bytes=1024 * 1024)
        self._lock = threading.Lock()

    def write(self, feedback: Feedback) -> None:
        """TransportError when the broker did not acknowledge it."""
        with self._lock:
            pending = self._producer.send(self._topic, feedback.frame_id, feedback.to_json(), [],
                                          f"feedback for frame {feedback.frame_id}")
            self._producer.flush_and_check([pending])

    def close(self) -> None:
        self._producer.close()
