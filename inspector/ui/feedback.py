"""Operators' verdicts on alerts, read back: the feedback topic from its start, the latest verdict per frame, and
the frames themselves fetched from the frames topic by their origin while it still retains them.

Used by `inspector calibrate --feedback` (confirmed false alarms are good frames the threshold should clear) and
by `inspector ui` (the original frame of an alert page). Kafka's errors leave as TransportError.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from inspector.contracts import H_FRAME_ID, Feedback, header_value, parse_origin
from inspector.decode.jpeg import validate_jpeg
from inspector.errors import BadFrame, TransportError
from inspector.kafka.transport import (
    ConsumedRecord,
    Partition,
    PartitionReader,
    partition_reader,
    read_record_at,
    read_to_end,
)
from inspector.settings import KafkaSettings, LimitSettings

log = logging.getLogger(__name__)


def _reader(settings: KafkaSettings) -> PartitionReader:
    return partition_reader(settings, client_id=f"{settings.client_id}-reader")


class FrameFetcher:
    """Fetches one frame by its origin ("<topic>/<partition>/<offset>") with a consumer of its own (no group);
    thread-safe, one fetch at a time."""

    def __init__(self, settings: KafkaSettings, limits: LimitSettings, timeout_s: float = 10.0) -> None:
        self._settings, self._limits, self._timeout_s = settings, limits, timeout_s
        self._reader: PartitionReader | None = None
        self._lock = threading.Lock()

    def fetch(self, origin: str, frame_id: str) -> bytes | None:
        """The JPEG bytes of the frame at `origin`, if it is still retained and is the frame `frame_id` (the
        headers are checked: an origin is as untrusted as the alert that carried it); else None."""
        try:
            topic, partition, offset = parse_origin(origin)
        except ValueError:
            return None
        if topic != self._settings.frames_topic:
            return None  # only ever read the frames topic, whatever an alert says
        with self._lock:
            record = self._read_at(Partition(topic, partition), offset)
        if record is None or header_value(record.headers, H_FRAME_ID) != frame_id:
            return None
        try:
            validate_jpeg(record.value or b"", max_bytes=self._limits.max_frame_bytes,
                          max_pixels=self._limits.max_pixels)
        except BadFrame:
            return None
        return bytes(record.value or b"")

    def _read_at(self, partition: Partition, offset: int) -> ConsumedRecord | None:
        try:
            if self._reader is None:
                self._reader = _reader(self._settings)
            return read_record_at(self._reader, partition, offset, self._timeout_s)
        except TransportError as exc:
            log.warning("fetching %s/%d/%d failed: %s", partition.topic, partition.partition, offset, exc)
            return None

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def read_feedback(settings: KafkaSettings, timeout_s: float = 30.0) -> list[Feedback]:
    """Every valid record of the feedback topic, from its start to its end now, in partition order; records that
    are not Feedback are skipped (the topic is written by a web page)."""
    reader = _reader(settings)
    try:
        records = read_to_end(reader, settings.feedback_topic, timeout_s)
    finally:
        reader.close()
    feedback: list[Feedback] = []
    for record in records:
        try:
            feedback.append(Feedback.model_validate_json(record.value or b""))
        except ValidationError:
            log.warning("skipped a record of %s that is not feedback (offset %d)", record.topic, record.offset)
    return feedback


def latest_verdicts(feedback: list[Feedback]) -> dict[str, Feedback]:
    """Per frame id, the last verdict given (an operator may correct a click)."""
    latest: dict[str, Feedback] = {}
    for f in feedback:
        if f.frame_id not in latest or f.at_ns >= latest[f.frame_id].at_ns:
            latest[f.frame_id] = f
    return latest


@dataclass
class FalseAlarms:
    """The frames operators confirmed as false alarms, as far as the frames topic still has them."""

    jpegs: dict[str, bytes]  # frame id -> JPEG bytes
    missing: list[str]  # frame ids whose frame is past retention, or whose feedback names no origin

    def save(self, folder: Path) -> list[Path]:
        """Write them as JPEG files (for `inspector train --extra-good`); file names are safe whatever the id."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (frame_id, jpeg) in enumerate(sorted(self.jpegs.items())):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in frame_id)[:80]
            path = folder / f"false-alarm-{i:05d}-{safe}.jpg"
            path.write_bytes(jpeg)
            paths.append(path)
        return paths


def fetch_false_alarms(settings: KafkaSettings, limits: LimitSettings) -> FalseAlarms:
    """The frames whose latest verdict is "false_alarm", fetched from the frames topic by their origin."""
    verdicts = latest_verdicts(read_feedback(settings))
    fetcher = FrameFetcher(settings, limits)
    jpegs: dict[str, bytes] = {}
    missing: list[str] = []
    try:
        for frame_id, f in sorted(verdicts.items()):
            if f.verdict != "false_alarm":
                continue
            jpeg = fetcher.fetch(f.origin, frame_id) if f.origin else None
            if jpeg is None:
                missing.append(frame_id)
            else:
                jpegs[frame_id] = jpeg
    finally:
        fetcher.close()
    return FalseAlarms(jpegs, missing)
