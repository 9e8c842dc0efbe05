"""What the operator's page knows, in memory and without I/O: the recent alerts with their evidence, the
operators' latest verdicts on them, what the sorter did with each, and per-camera counts over the last minutes.
Touched from the event loop only."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from inspector.camera_labels import CameraLabels
from inspector.contracts import Alert, EjectionRecord, FrameScore

# The words an operator reads for each sorter outcome (inspector.contracts.EjectionRecord says what each means).
_EJECTION_WORDS = {"fired": "ejected", "merged": "merged", "duplicate": "duplicate", "late": "late",
                   "failed": "failed", "unconfirmed": "not confirmed", "unknown_camera": "no lane"}


def ejection_label(record: EjectionRecord) -> str:
    """The badge text of an outcome; a merged alert whose object's pulse did not go out says so."""
    word = _EJECTION_WORDS[record.outcome]
    return f"{word}, not ejected" if record.outcome == "merged" and not record.object_ejected else word


def ejection_detail(record: EjectionRecord) -> str:
    """The alert page's line: the outcome, the lane, and when the fruit reaches (reached) the ejector."""
    parts = [ejection_label(record)]
    if record.lane:
        parts.append(f"lane {record.lane}")
    if record.arrival_ns is not None:
        at = time.strftime("%H:%M:%S", time.gmtime(record.arrival_ns // 1_000_000_000))
        parts.append(f"fruit at the ejector {at}.{record.arrival_ns // 1_000_000 % 1000:03d} UTC")
    return "; ".join(parts)


def _replaces(new: EjectionRecord, old: EjectionRecord | None) -> bool:
    """The latest record wins, except a duplicate (the sorter saw the frame again): it would hide what became of
    the frame the first time."""
    return old is None or new.outcome != "duplicate"


@dataclass
class AlertView:
    """One alert as the page shows it."""

    alert: Alert
    evidence_jpeg: bytes | None = None
    verdict: str | None = None  # the latest given, from any page (read back from the feedback topic)
    ejection: EjectionRecord | None = None  # what the sorter did with it (the ejections topic)

    def to_json(self) -> dict[str, object]:
        """For the browser, which renders every string as text (they come from Kafka: untrusted)."""
        alert = self.alert
        return {
            "frame_id": alert.frame_id, "camera_id": alert.camera_id, "score": alert.score,
            "threshold": alert.threshold, "captured_ms": alert.captured_ns // 1_000_000,
            "latency_ms": round(max(0, alert.published_ns - alert.captured_ns) / 1e6, 1),
            "model": f"{alert.model_id}:{alert.model_version}", "box": alert.box.model_dump() if alert.box else None,
            "evidence": self.evidence_jpeg is not None, "origin": alert.origin is not None, "verdict": self.verdict,
            "ejection": None if self.ejection is None else {
                "outcome": self.ejection.outcome, "label": ejection_label(self.ejection),
                "ejected": self.ejection.object_ejected},
        }


@dataclass
class _Minute:
    frames: int = 0
    alerts: int = 0


@dataclass
class WallState:
    """The last `max_alerts` alerts by frame id, evidence, verdicts and ejections waiting for their alert, and counts
    per camera and minute (the first `max_cameras` cameras by name, the rest together, as in the worker's metrics)."""

    max_alerts: int
    window_minutes: float
    max_cameras: int = 256
    alerts: OrderedDict[str, AlertView] = field(default_factory=OrderedDict)
    _early_evidence: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    _early_verdicts: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _early_ejections: OrderedDict[str, EjectionRecord] = field(default_factory=OrderedDict)
    _minutes: dict[str, dict[int, _Minute]] = field(default_factory=dict)  # camera -> minute since epoch -> counts
    _scores_seen: bool = False
    _cameras: CameraLabels = field(init=False)

    def __post_init__(self) -> None:
        self._cameras = CameraLabels(self.max_cameras)

    def add_alert(self, alert: Alert) -> AlertView | None:
        """A new alert (None for one already shown: a record read again after a rebalance)."""
        frame_id = alert.frame_id
        if frame_id in self.alerts:
            return None
        view = AlertView(alert, self._early_evidence.pop(frame_id, None), self._early_verdicts.pop(frame_id, None),
                         self._early_ejections.pop(frame_id, None))
        self.alerts[frame_id] = view
        while len(self.alerts) > self.max_alerts:
            self.alerts.popitem(last=False)
        if not self._scores_seen:  # without the score stream, count the alerts themselves
            self._count(alert.camera_id, alert.captured_ns, frames=0, alerts=1)
        return view

    def add_evidence(self, frame_id: str, jpeg: bytes) -> AlertView | None:
        """Evidence for a frame; its view once the alert is known (evidence is sent after its alert, but a
        reader of two topics may see them in either order)."""
        view = self.alerts.get(frame_id)
        if view is None:
            self._early_evidence[frame_id] = jpeg
            while len(self._early_evidence) > self.max_alerts:
                self._early_evidence.popitem(last=False)
            return None
        view.evidence_jpeg = jpeg
        return view

    def add_verdict(self, frame_id: str, verdict: str) -> AlertView | None:
        """An operator's verdict, from this page or another; its view once the alert is known (after a restart
        the feedback topic is read from the same point in the past as the alerts, in no set order with them)."""
        view = self.alerts.get(frame_id)
        if view is None:
            self._early_verdicts[frame_id] = verdict
            self._early_verdicts.move_to_end(frame_id)
            while len(self._early_verdicts) > self.max_alerts:
                self._early_verdicts.popitem(last=False)
            return None
        view.verdict = verdict
        return view

    def add_ejection(self, record: EjectionRecord) -> AlertView | None:
        """What the sorter did with an alert; its view once the alert is known and the record changed it. Usually
        after the alert, but after a restart the ejections topic is read back in no set order with the alerts."""
        view = self.alerts.get(record.frame_id)
        if view is None:
            if _replaces(record, self._early_ejections.get(record.frame_id)):
                self._early_ejections[record.frame_id] = record
            self._early_ejections.move_to_end(record.frame_id)
            while len(self._early_ejections) > self.max_alerts:
                self._early_ejections.popitem(last=False)
            return None
        if not _replaces(record, view.ejection):
            return None
        view.ejection = record
        return view

    def add_score(self, score: FrameScore) -> None:
        self._scores_seen = True
        self._count(score.camera_id, score.captured_ns, frames=1, alerts=int(score.alert))

    def _count(self, camera: str, captured_ns: int, *, frames: int, alerts: int) -> None:
        label = self._cameras(camera)
        minute = self._minutes.setdefault(label, {}).setdefault(captured_ns // 60_000_000_000, _Minute())
        minute.frames += frames
        minute.alerts += alerts

    def counts(self, now_s: float | None = None) -> dict[str, dict[str, int]]:
        """Per camera, frames scored and alerts in the window (whole minutes back from now); old minutes
        are forgotten here."""
        now_minute = int((time.time() if now_s is None else now_s) // 60)
        first = now_minute - math.ceil(self.window_minutes) + 1
        out: dict[str, dict[str, int]] = {}
        for camera in list(self._minutes):
            minutes = self._minutes[camera]
            for old in [minute for minute in minutes if minute < first]:
                del minutes[old]
            if not minutes:
                del self._minutes[camera]
                continue
            kept = [counts for minute, counts in minutes.items() if minute <= now_minute]
            out[camera] = {"frames": sum(counts.frames for counts in kept),
                           "alerts": sum(counts.alerts for counts in kept)}
        return out

    def recent(self, camera: str | None = None) -> list[AlertView]:
        """The alerts kept, oldest first, of one camera or all."""
        return [view for view in self.alerts.values() if camera is None or view.alert.camera_id == camera]
