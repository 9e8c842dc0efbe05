"""Message contracts on the wire, versioned. One home for topic payloads and header names.

frames        key = camera id, value = JPEG bytes, headers = FrameMeta (below)
defect-alerts key = camera id, value = Alert as JSON
defect-evidence key = frame id, value = the alert's annotated JPEG, headers = schema-version, frame-id, camera-id,
              content-type, evidence-map (the quantised map, PNG) and evidence-map-scale (inspector.evidence)
alert-feedback key = frame id, value = Feedback as JSON (an operator's verdict on an alert)
frame-scores  key = camera id, value = FrameScore as compact JSON (one per scored frame)
ejections     key = frame id, value = EjectionRecord as JSON (what the sorter did with each alert)
late-ejections key = camera id, value = the Alert as JSON, for alerts that reached the sorter after their fire time
frames-dlq    key/value/headers of the original record + dlq.* headers (reason, detail, origin); a record larger
              than limits.max_frame_bytes keeps only its key and small headers (dlq.detail says so)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inspector.errors import BadFrame

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
JPEG_CONTENT_TYPE = "image/jpeg"

# Frame header names (bytes values, UTF-8 text).
H_SCHEMA = "schema-version"
H_FRAME_ID = "frame-id"
H_CAMERA_ID = "camera-id"
H_SEQUENCE = "sequence"
H_CAPTURED_NS = "captured-ns"
H_CONTENT_TYPE = "content-type"
H_DEADLINE_NS = "deadline-ns"
H_LABEL = "label"
H_OBJECT_ID = "object-id"  # ground truth of a belt source: which object (fruit) the frame shows

# Evidence header names (the frame header names above are reused for what they mean there).
H_EVIDENCE_MAP = "evidence-map"  # the difference map quantised to uint8, as a greyscale PNG
H_EVIDENCE_MAP_SCALE = "evidence-map-scale"  # the map value of 255, in the model's units

# Dead-letter header names.
H_DLQ_REASON = "dlq.reason"
H_DLQ_DETAIL = "dlq.detail"
H_DLQ_ORIGIN = "dlq.origin"  # "<topic>/<partition>/<offset>"

# The fixed set of dead-letter reasons (also the metric's label values).
DLQ_REASONS = (
    "empty_value",
    "missing_header",
    "malformed_header",
    "unknown_schema",
    "unsupported_content_type",
    "oversized",
    "not_jpeg",
    "truncated",
    "undecodable",
    "too_many_pixels",
)

Headers = list[tuple[str, bytes]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrameMeta(_Strict):
    """What a producer says about one frame (carried in Kafka headers)."""

    schema_version: int = SCHEMA_VERSION
    frame_id: str = Field(min_length=1, max_length=128)
    camera_id: str = Field(min_length=1, max_length=128)
    sequence: int = Field(ge=0)
    captured_ns: int = Field(ge=0)  # capture time, ns since the Unix epoch
    content_type: str = JPEG_CONTENT_TYPE
    deadline_ns: int | None = Field(default=None, ge=0)  # when the ejector must have the verdict
    label: str | None = Field(default=None, max_length=64)  # ground truth: "good" or a defect kind
    object_id: str | None = Field(default=None, max_length=128)  # ground truth: the object a belt source shows

    def to_headers(self) -> Headers:
        """Kafka headers for this frame; optional fields are left out when unset."""
        pairs: list[tuple[str, object]] = [
            (H_SCHEMA, self.schema_version),
            (H_FRAME_ID, self.frame_id),
            (H_CAMERA_ID, self.camera_id),
            (H_SEQUENCE, self.sequence),
            (H_CAPTURED_NS, self.captured_ns),
            (H_CONTENT_TYPE, self.content_type),
            (H_DEADLINE_NS, self.deadline_ns),
            (H_LABEL, self.label),
            (H_OBJECT_ID, self.object_id),
        ]
        return [(k, str(v).encode()) for k, v in pairs if v is not None]

    @classmethod
    def from_headers(cls, headers: Headers | None) -> "FrameMeta":
        """Parse and validate frame headers; raise BadFrame with a DLQ reason otherwise."""
        raw: dict[str, str] = {}
        for key, value in headers or []:
            try:
                raw[key] = (value or b"").decode("utf-8")
            except (UnicodeDecodeError, AttributeError):
                raise BadFrame("malformed_header", f"{key} is not UTF-8") from None
        for required in (H_SCHEMA, H_FRAME_ID, H_CAMERA_ID, H_SEQUENCE, H_CAPTURED_NS):
            if required not in raw:
                raise BadFrame("missing_header", required)
        try:
            version = int(raw[H_SCHEMA])
        except ValueError:
            raise BadFrame("malformed_header", f"{H_SCHEMA}={raw[H_SCHEMA][:32]!r}") from None
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise BadFrame("unknown_schema", f"schema version {version}")
        content_type = raw.get(H_CONTENT_TYPE, JPEG_CONTENT_TYPE)
        if content_type != JPEG_CONTENT_TYPE:
            raise BadFrame("unsupported_content_type", content_type[:64])
        try:
            return cls(
                schema_version=version,
                frame_id=raw[H_FRAME_ID],
                camera_id=raw[H_CAMERA_ID],
                sequence=int(raw[H_SEQUENCE]),
                captured_ns=int(raw[H_CAPTURED_NS]),
                content_type=content_type,
                deadline_ns=int(raw[H_DEADLINE_NS]) if raw.get(H_DEADLINE_NS) else None,
                label=raw.get(H_LABEL) or None,
                object_id=raw.get(H_OBJECT_ID) or None,
            )
        except (ValueError, ValidationError) as exc:
            detail = exc.errors()[0]["loc"][0] if isinstance(exc, ValidationError) else str(exc)
            raise BadFrame("malformed_header", str(detail)[:120]) from None


class Box(_Strict):
    """A region (a defect, or the object it lies on) in the frame's own pixel coordinates (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    area_fraction: float = Field(ge=0, le=1)  # region area / frame area


class EvidenceRef(_Strict):
    """Where an alert's evidence is published: the evidence topic, under the frame id as key."""

    topic: str
    key: str


class Alert(_Strict):
    """A frame whose score crossed the threshold: the sorter ejects it."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["defect-alert"] = "defect-alert"
    frame_id: str
    camera_id: str
    sequence: int
    captured_ns: int
    scored_ns: int
    published_ns: int
    deadline_ns: int | None = None
    score: float
    threshold: float
    model_id: str
    model_version: str
    box: Box | None = None  # the largest region of the thresholded difference map
    label: str | None = None  # ground truth passed through from the frame, when the source knows it
    # Optional and additive, so still schema version 1: consumers that predate them ignore them.
    origin: str | None = None  # "<topic>/<partition>/<offset>" of the frame, to fetch it while retained
    evidence: EvidenceRef | None = None  # None when evidence is turned off (kafka.evidence_topic = "")
    object_id: str | None = None  # ground truth passed through from the frame (belt sources)
    object_box: Box | None = None  # the object the defect lies on, found against the belt: where the sorter aims

    @classmethod
    def for_frame(cls, meta: FrameMeta, *, score: float, threshold: float, box: Box | None, model_id: str,
                  model_version: str, scored_ns: int, published_ns: int, origin: str,
                  evidence: EvidenceRef | None, object_box: Box | None = None) -> Alert:
        """The alert of one frame over its threshold; the frame's fields come from its headers."""
        return cls(
            frame_id=meta.frame_id, camera_id=meta.camera_id, sequence=meta.sequence, captured_ns=meta.captured_ns,
            scored_ns=scored_ns, published_ns=published_ns, deadline_ns=meta.deadline_ns, score=score,
            threshold=threshold, model_id=model_id, model_version=model_version, box=box, label=meta.label,
            origin=origin, evidence=evidence, object_id=meta.object_id, object_box=object_box,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


FEEDBACK_VERDICTS = ("false_alarm", "confirmed_defect")  # also the feedback metric's label values


class Feedback(_Strict):
    """An operator's verdict on one alert, from the UI."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["alert-feedback"] = "alert-feedback"
    frame_id: str = Field(min_length=1, max_length=128)
    camera_id: str = Field(max_length=128)
    verdict: Literal["false_alarm", "confirmed_defect"]
    operator: str | None = Field(default=None, max_length=64)
    at_ns: int = Field(ge=0)  # when the operator gave it, ns since the Unix epoch
    origin: str | None = None  # the alert's frame, "<topic>/<partition>/<offset>"
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def format_origin(topic: str, partition: int, offset: int) -> str:
    """Where a record is: "<topic>/<partition>/<offset>" (alerts, feedback and dead letters carry it)."""
    return f"{topic}/{partition}/{offset}"


def parse_origin(origin: str) -> tuple[str, int, int]:
    """"<topic>/<partition>/<offset>" -> (topic, partition, offset); ValueError when it is not one."""
    topic, partition, offset = origin.rsplit("/", 2)
    if not topic or int(partition) < 0 or int(offset) < 0:
        raise ValueError(f"not an origin: {origin[:80]!r}")
    return topic, int(partition), int(offset)


class FrameScore(_Strict):
    """Every scored frame, compactly, for audit and drift monitoring."""

    v: int = SCHEMA_VERSION
    frame_id: str
    camera_id: str
    seq: int
    score: float
    thr: float
    alert: bool
    captured_ns: int
    scored_ns: int
    model_version: str
    label: str | None = None
    object_id: str | None = None

    @classmethod
    def for_frame(cls, meta: FrameMeta, *, score: float, threshold: float, alert: bool, scored_ns: int,
                  model_version: str) -> FrameScore:
        """The score record of one scored frame; the frame's fields come from its headers."""
        return cls(
            frame_id=meta.frame_id, camera_id=meta.camera_id, seq=meta.sequence, score=score, thr=threshold,
            alert=alert, captured_ns=meta.captured_ns, scored_ns=scored_ns, model_version=model_version,
            label=meta.label, object_id=meta.object_id,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def frame_score_json(meta: FrameMeta, *, score: float, threshold: float, alert: bool, scored_ns: int,
                     model_version: str) -> bytes:
    """`FrameScore.for_frame(...).to_json()` byte for byte, without building the model: the hot loop writes one
    per frame. What this fast path would not write as pydantic does (a float in exponent form or not finite,
    text that needs escaping) goes through the model instead."""
    score_text, threshold_text = repr(float(score)), repr(float(threshold))
    label, object_id = meta.label, meta.object_id
    text = f"{meta.frame_id}{meta.camera_id}{model_version}{label or ''}{object_id or ''}"
    # Python's repr and pydantic agree on finite floats without an exponent ("nan", "inf" hold an "n").
    if "e" in score_text or "n" in score_text or "e" in threshold_text or "n" in threshold_text or not (
            text.isascii() and text.isprintable() and '"' not in text and "\\" not in text):
        return FrameScore.for_frame(meta, score=score, threshold=threshold, alert=alert, scored_ns=scored_ns,
                                    model_version=model_version).to_json()
    optional = (f',"label":"{label}"' if label is not None else "") + (
        f',"object_id":"{object_id}"' if object_id is not None else "")
    return (f'{{"v":{SCHEMA_VERSION},"frame_id":"{meta.frame_id}","camera_id":"{meta.camera_id}",'
            f'"seq":{meta.sequence},"score":{score_text},"thr":{threshold_text},'
            f'"alert":{"true" if alert else "false"},"captured_ns":{meta.captured_ns},"scored_ns":{scored_ns},'
            f'"model_version":"{model_version}"{optional}}}').encode()


EJECTION_OUTCOMES = ("fired", "merged", "duplicate", "late", "failed", "unconfirmed", "unknown_camera")


class EjectionRecord(_Strict):
    """What the sorter did with one alert, once it is final (the operator's page shows it beside the alert).

    fired: this alert opened the object's ejection and the pulse went out; merged: another alert of the same
    object opened it (`object_ejected` says whether that one fired); duplicate: the same frame again; late: the
    alert arrived after its fire time (also on the late-ejections topic); failed: the actuator did not take the
    command; unconfirmed: the object had fewer alerts than the lane's min_alerts; unknown_camera: no lane."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["ejection"] = "ejection"
    frame_id: str
    camera_id: str
    lane: str | None = None
    outcome: Literal["fired", "merged", "duplicate", "late", "failed", "unconfirmed", "unknown_camera"]
    object_ejected: bool  # whether the fruit of this alert was pushed off (by this alert's pulse or a merged one)
    arrival_ns: int | None = None  # when the fruit reaches (reached) the ejector, by the sorter's estimate
    fire_ns: int | None = None  # planned pulse start
    fired_ns: int | None = None  # when the pulse actually started (fired only)
    decided_ns: int  # when this outcome became final

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def header_value(headers: Headers | None, name: str) -> str | None:
    """The text of one header, or None (lenient: used for DLQ bookkeeping on bad records)."""
    for key, value in headers or []:
        if key == name:
            return (value or b"").decode("utf-8", errors="replace")
    return None


def dead_letter(key: bytes | None, value: bytes | None, headers: Headers | None, origin: str, error: BadFrame,
                max_bytes: int) -> tuple[str, bytes, Headers]:
    """The frames-dlq record of a frame that cannot be scored -> (key, value, headers).

    `origin` is "<topic>/<partition>/<offset>". A record bigger than `max_bytes` (an oversized frame, huge
    headers) keeps only its key and small headers: the producer's requests are sized for `max_bytes`, and a
    dead letter it cannot send would fail the worker each time the frame is read again.
    """
    value, original = value or b"", list(headers or [])
    text_key = key.decode("utf-8", errors="replace") if key else (header_value(original, H_CAMERA_ID) or "")
    detail = error.detail
    if len(value) + len(text_key.encode()) + sum(len(v or b"") for _, v in original) > max_bytes:
        value, text_key = b"", text_key[:128]
        original = [(k, v) for k, v in original if len(v or b"") <= 1024]
        detail = f"{detail} [too large to copy: the original is at dlq.origin]"
    return text_key, value, original + [
        (H_DLQ_REASON, error.reason.encode()),
        (H_DLQ_DETAIL, detail.encode("utf-8", errors="replace")[:512]),
        (H_DLQ_ORIGIN, origin.encode()),
    ]
