"""Thresholds from the running line (`inspector calibrate --from-line`): per camera, the conformal quantile of
the scores the workers published for its good frames, which thousands of frames an hour make reliable without
any model of the score distribution's tail."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

import numpy as np
from pydantic import ValidationError

from inspector.contracts import FrameScore
from inspector.errors import ConfigError
from inspector.kafka.transport import partition_reader, read_to_end
from inspector.model.artifact import ModelArtifact
from inspector.model.threshold import (
    conformal_is_reliable,
    conformal_threshold,
    defects_flagged,
    false_alarm_upper_bound,
)
from inspector.settings import KafkaSettings, Settings
from inspector.ui.feedback import latest_verdicts, read_feedback

log = logging.getLogger(__name__)

LINE_VERSION = "+line."  # a model version that only recalibrated its base version: "<base>+line.<UTC time>"


def scoring_version(model_version: str) -> str:
    """The version whose weights score the frames: a line recalibration scores exactly as its base."""
    return model_version.split(LINE_VERSION, 1)[0]


@dataclass(frozen=True)
class CameraProposal:
    """One camera's threshold from the line, and what it and the threshold in force would have done."""

    camera_id: str
    frames: int  # the camera's scores in the window, by the model version being recalibrated
    left_out: int  # of those, frames labelled defective at the source or confirmed defective by an operator
    current: float  # the threshold in force
    proposed: float | None  # None: too few good frames for a conformal quantile at the target
    false_alarm_bound: float | None  # the proposal's upper bound on the false-alarm rate (95 %)
    alert_rate_current: float  # share of the window's frames each threshold alerts on
    alert_rate_proposed: float | None

    @property
    def good(self) -> int:
        return self.frames - self.left_out


def is_known_defect(score: FrameScore, confirmed_defects: Collection[str]) -> bool:
    """A frame that must not set a good frames' threshold: its source labelled it defective, or an operator
    confirmed its alert."""
    return (score.label not in (None, "good")) or score.frame_id in confirmed_defects


def propose_thresholds(scores: Iterable[FrameScore], *, model_version: str, target_false_alarm: float,
                       current: Callable[[str], float], confirmed_defects: Collection[str] = ()
                       ) -> list[CameraProposal]:
    """Per camera (sorted by id), the conformal threshold of its good frames' scores by `model_version` or a line
    recalibration of the same weights (scores of other weights are not comparable); `current(camera)` is the
    threshold in force for it."""
    by_camera: dict[str, tuple[list[float], list[bool]]] = {}
    for score in scores:
        if scoring_version(score.model_version) != scoring_version(model_version):
            continue
        values, known_defect = by_camera.setdefault(score.camera_id, ([], []))
        values.append(score.score)
        known_defect.append(is_known_defect(score, confirmed_defects))
    proposals = []
    for camera, (values, known_defect) in sorted(by_camera.items()):
        all_scores, defect = np.asarray(values), np.asarray(known_defect)
        good = all_scores[~defect]
        in_force = current(camera)
        proposed = bound = rate = None
        if conformal_is_reliable(good.size, target_false_alarm):
            proposed = conformal_threshold(good, target_false_alarm)
            bound = false_alarm_upper_bound(good.size, int(np.count_nonzero(defects_flagged(good, proposed))))
            rate = float(defects_flagged(all_scores, proposed).mean())
        proposals.append(CameraProposal(
            camera_id=camera, frames=all_scores.size, left_out=int(defect.sum()), current=in_force,
            proposed=proposed, false_alarm_bound=bound,
            alert_rate_current=float(defects_flagged(all_scores, in_force).mean()), alert_rate_proposed=rate))
    return proposals


def proposal_table(proposals: Iterable[CameraProposal]) -> list[str]:
    """The proposals as text lines: per camera its frames, the threshold in force and the proposed one, and the
    share of the window's frames each alerts on."""
    lines = [f"{'camera':24s} {'frames':>7s} {'left out':>8s} {'threshold':>10s} {'proposed':>10s} "
             f"{'alerts now':>10s} {'proposed':>9s} {'bound':>7s}"]
    for p in proposals:
        head = f"{p.camera_id:24s} {p.frames:7d} {p.left_out:8d} {p.current:10.4f}"
        if p.proposed is None or p.alert_rate_proposed is None or p.false_alarm_bound is None:
            lines.append(f"{head} {'-':>10s} {p.alert_rate_current:10.2%} {'-':>9s} {'-':>7s}  (too few good frames)")
        else:
            lines.append(f"{head} {p.proposed:10.4f} {p.alert_rate_current:10.2%} {p.alert_rate_proposed:9.2%} "
                         f"{p.false_alarm_bound:7.2%}")
    return lines


@dataclass(frozen=True)
class LineProposal:
    """Every camera's proposal from one window of the line, and the model version it was computed against."""

    model_id: str
    model_version: str
    target_false_alarm: float
    window_s: float
    scores: int  # the window's scores read from the topic
    confirmed_defects: int  # frames whose latest operator verdict is "confirmed defect" (left out where scored)
    cameras: tuple[CameraProposal, ...]
    overridden: tuple[str, ...]  # cameras with a proposal whose threshold the settings override

    @property
    def any_proposed(self) -> bool:
        return any(p.proposed is not None for p in self.cameras)

    def override_note(self) -> str | None:
        """What an operator must know when the settings hide some of the proposed thresholds."""
        if not self.overridden:
            return None
        return (f"the settings override the threshold of {', '.join(self.overridden)} (model.threshold / "
                "model.camera_thresholds): the file's new thresholds apply once those are removed")


def propose_from_line(settings: Settings, artifact: ModelArtifact, window_s: float,
                      target_false_alarm: float) -> LineProposal:
    """Read the line's last `window_s` seconds and propose per camera, against the threshold in force by the
    workers' rule (the settings' overrides, else the model file's)."""
    scores, confirmed = read_line(settings.kafka, window_s)
    model = settings.model
    cameras = propose_thresholds(
        scores, model_version=artifact.model_version, target_false_alarm=target_false_alarm,
        current=lambda camera: model.threshold_for(camera, artifact.threshold_for(camera)),
        confirmed_defects=confirmed)
    overridden = tuple(p.camera_id for p in cameras if p.proposed is not None and (
        model.threshold is not None or p.camera_id in model.camera_thresholds))
    return LineProposal(model_id=artifact.model_id, model_version=artifact.model_version,
                        target_false_alarm=target_false_alarm, window_s=window_s, scores=len(scores),
                        confirmed_defects=len(confirmed), cameras=tuple(cameras), overridden=overridden)


def read_line(kafka: KafkaSettings, window_s: float, timeout_s: float = 120.0) -> tuple[list[FrameScore], set[str]]:
    """The scores topic's records of the last `window_s` seconds, and the frame ids operators confirmed as defects
    (their latest verdict on the feedback topic)."""
    if not kafka.scores_topic:
        raise ConfigError("calibrate --from-line reads the workers' scores: kafka.scores_topic is off")
    since_ms = int((time.time() - window_s) * 1000)
    reader = partition_reader(kafka, client_id="inspector-calibrate", read_committed=kafka.exactly_once)
    try:
        records = read_to_end(reader, kafka.scores_topic, timeout_s, since_ms=since_ms)
    finally:
        reader.close()
    scores = []
    for record in records:
        try:
            scores.append(FrameScore.model_validate_json(record.value or b""))
        except ValidationError:
            log.warning("skipped a record of %s that is not a frame score (offset %d)", record.topic, record.offset)
    confirmed = {frame_id for frame_id, feedback in latest_verdicts(read_feedback(kafka)).items()
                 if feedback.verdict == "confirmed_defect"}
    return [s for s in scores if s.captured_ns >= since_ms * 1_000_000], confirmed


def with_line_thresholds(artifact: ModelArtifact, proposals: Iterable[CameraProposal]) -> ModelArtifact:
    """A new version of the model: the same weights and default threshold, the proposed cameras' thresholds
    (over any the file had for them), version `<base>+line.<UTC time>`."""
    calibration = artifact.calibration
    if calibration is None:
        raise ConfigError(f"model {artifact.model_id}:{artifact.model_version} is not calibrated: run "
                          "`inspector calibrate --good DIR` first")
    cameras = {**calibration.camera_thresholds,
               **{p.camera_id: p.proposed for p in proposals if p.proposed is not None}}
    version = f"{scoring_version(artifact.model_version)}{LINE_VERSION}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    return replace(artifact.with_calibration(replace(calibration, camera_thresholds=cameras)), model_version=version)
