"""The UI's live state: the wall's alerts and counts, the browsers pushed to by server-sent events, the feeds
that fill them, and the feedback token's check. `inspector.ui.app` routes requests to it."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from pydantic import ValidationError

from inspector.camera_labels import CameraLabels
from inspector.contracts import Alert, EjectionRecord, Feedback, FrameScore, format_origin
from inspector.errors import BadFrame
from inspector.evidence import from_record
from inspector.kafka.transport import ConsumedRecord
from inspector.settings import Settings
from inspector.ui.calibration import ShownProposals
from inspector.ui.feed import FeedbackWriter, TopicFeed
from inspector.ui.feedback import FrameFetcher
from inspector.ui.metrics import UiMetrics
from inspector.ui.state import WallState

log = logging.getLogger(__name__)

COUNTS_EVERY_S = 2.0  # how often the per-camera counts are pushed


class UiServer:
    """The page's state and the clients pushed to; records arrive from the feed thread via the event loop."""

    def __init__(self, settings: Settings, metrics: UiMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cameras = CameraLabels(settings.limits.max_cameras, metrics)  # the metrics' camera labels, capped
        self.state = WallState(settings.ui.max_alerts, settings.ui.history_minutes, settings.limits.max_cameras)
        self.clients: set[asyncio.Queue[str]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.feed: TopicFeed | None = None
        self.writer: FeedbackWriter | None = None
        self.fetcher = FrameFetcher(settings.kafka, settings.limits)
        self.proposals = ShownProposals()  # the calibration page's, by id, until applied or expired
        self.calibration_lock = asyncio.Lock()  # one read of the line, or one write of the model file, at a time
        self.skipped = 0  # records that were not what their topic promises
        self._skipped_topics: set[str] = set()  # topics whose first skipped record was logged as a warning

    # ---- records in (event loop) ----

    def deliver(self, record: ConsumedRecord) -> None:
        """(feed thread) Hand a record to the event loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.on_record, record)

    def on_record(self, record: ConsumedRecord) -> None:
        kafka = self.settings.kafka
        try:
            if record.topic == kafka.alerts_topic:
                view = self.state.add_alert(Alert.model_validate_json(record.value or b""))
                if view:
                    self.cameras(view.alert.camera_id)  # its verdict series start at 0
                    self.push("alert", view.to_json())
            elif record.topic == kafka.evidence_topic:
                evidence = from_record(record.value, record.headers)
                view = self.state.add_evidence((record.key or b"").decode("utf-8", errors="replace"), evidence.jpeg)
                if view:
                    self.push("alert", view.to_json())
            elif record.topic == kafka.scores_topic:
                self.state.add_score(FrameScore.model_validate_json(record.value or b""))
            elif record.topic == kafka.feedback_topic:
                verdict = Feedback.model_validate_json(record.value or b"")
                view = self.state.add_verdict(verdict.frame_id, verdict.verdict)
                if view:
                    self.push("alert", view.to_json())
            elif record.topic == kafka.ejections_topic:
                view = self.state.add_ejection(EjectionRecord.model_validate_json(record.value or b""))
                if view:
                    self.push("alert", view.to_json())
        except (ValidationError, BadFrame, UnicodeDecodeError) as exc:
            self.skip(record, exc)

    def skip(self, record: ConsumedRecord, exc: Exception) -> None:
        """A record that is not what its topic promises: one line, a warning for the first of each topic (a topic
        full of them would flood the log at every restart's rewind), and the page goes on."""
        self.skipped += 1
        where, detail = format_origin(record.topic, record.partition, record.offset), str(exc).replace("\n", " ")[:300]
        if record.topic in self._skipped_topics:
            log.debug("skipped a malformed record %s: %s", where, detail)
        else:
            self._skipped_topics.add(record.topic)
            log.warning("skipped a malformed record %s (further ones of its topic: debug level): %s", where, detail)

    def push(self, event: str, data: object) -> None:
        message = f"event: {event}\ndata: {json.dumps(data)}\n\n"
        for client in list(self.clients):
            if client.qsize() < 1000:  # a stalled browser loses events rather than the server its memory
                client.put_nowait(message)

    async def push_counts(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_EVERY_S)
            self.push("counts", self.state.counts())

    # ---- feedback ----

    def token_required(self) -> bool:
        return self.settings.ui.feedback_token is not None

    def token_ok(self, given: str | None) -> bool:
        token = self.settings.ui.feedback_token
        if token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), token.get_secret_value().encode())
