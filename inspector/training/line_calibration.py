"""Thresholds from the running line (`inspector calibrate --from-line`): per camera, the conformal quantile of
the scores the workers published for its good frames, which thousands of frames an hour make reliable without
any model of the score distribution's tail."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np

from inspector.contracts import FrameScore
from inspector.model.threshold import (
    conformal_is_reliable,
    conformal_threshold,
    defects_flagged,
    false_alarm_upper_bound,
)


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
    """Per camera (sorted by id), the conformal threshold of its good frames' scores by `model_version` (scores
    of other versions are not comparable); `current(camera)` is the threshold in force for it."""
    by_camera: dict[str, tuple[list[float], list[bool]]] = {}
    for score in scores:
        if score.model_version != model_version:
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
