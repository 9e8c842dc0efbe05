"""Setting a model's threshold: from held-out good images as the camera delivers them (conformal or a fitted
tail) or labelled defects, and the frames operators confirmed as false alarms added to the good images
(`inspector calibrate --feedback`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from inspector.decode.jpeg import decode_jpeg
from inspector.errors import BadFrame
from inspector.model.artifact import ModelArtifact
from inspector.model.runtime import ModelRunner, score_images
from inspector.model.threshold import CalibrationStats, calibrate, pixel_sample
from inspector.settings import Settings
from inspector.training.feature_terms import jpeg_copies


class Calibrated(NamedTuple):
    artifact: ModelArtifact
    good_scores: np.ndarray  # (N,) each good image's score the threshold was set from


def calibrate_artifact(
    artifact: ModelArtifact,
    good_images: np.ndarray,
    target_false_alarm: float,
    device: torch.device,
    *,
    defect_images: np.ndarray | None = None,
    camera_jpeg_quality: int = 0,
) -> Calibrated:
    """Set the threshold from held-out good images (conformal or a fitted tail), or F1-optimal when defects are
    given; with `camera_jpeg_quality`, each good image scores the higher of as-is and through JPEG at it."""
    runner = ModelRunner(artifact, device)
    good_scores, good_maps = score_images(runner, good_images)
    if camera_jpeg_quality:
        good_scores = np.maximum(good_scores, camera_scores(runner, good_images, camera_jpeg_quality))
    defect_scores = score_images(runner, defect_images)[0] if defect_images is not None else None
    stats: CalibrationStats = calibrate(good_scores, pixel_sample(good_maps), target_false_alarm,
                                        defect_scores=defect_scores)
    return Calibrated(artifact.with_calibration(stats), good_scores)


def highest_good_scores(paths: Sequence[Path | str], scores: np.ndarray, n: int = 5) -> list[dict[str, object]]:
    """The `n` good images that scored highest when the threshold was set, highest first: the photos that set a
    fitted tail's spread (a drawing or a stock photo in a folder of camera frames lifts it for every frame)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    return [{"image": str(paths[i]), "score": round(float(scores[i]), 6)} for i in order]


def above_threshold_note(highest: object, threshold: float) -> str | None:
    """One sentence on the good images of `highest_good_scores` (as a model file holds it) that scored above the
    threshold; None without any."""
    if not isinstance(highest, list):
        return None
    above = [h for h in highest if isinstance(h, dict) and float(h.get("score", -np.inf)) > threshold]
    if not above:
        return None
    named = ", ".join(f"{Path(str(h['image'])).name} {float(str(h['score'])):.3g}" for h in above)
    more = len(above) == len(highest)  # the file keeps only the highest few: there may be others above
    count = f"{len(above)} or more good images" if more else f"{len(above)} good image{'s' * (len(above) > 1)}"
    return (f"{count} scored above the threshold {threshold:.4g} when it was set ({named}). Such images "
            "widen the spread the threshold allows for; if the camera will not see their like (a drawing, another "
            "background, a mislabelled defect), remove them from the good images and train again")


def camera_scores(runner: ModelRunner, images: np.ndarray, jpeg_quality: int) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N,) scores of the images through JPEG at the camera's quality."""
    return score_images(runner, jpeg_copies(images, seed=0, qualities=(jpeg_quality, jpeg_quality)))[0]


def with_confirmed_false_alarms(settings: Settings, good: np.ndarray, frames_out: Path | None) -> np.ndarray:
    """(N, S, S, 3) uint8 held-out good images plus the frames operators confirmed as false alarms (good frames
    the model flagged), fetched from the frames topic while it retains them; with `frames_out`, those frames are
    also written there (for `inspector train --extra-good`)."""
    from inspector.ui.feedback import fetch_false_alarms  # here: the Kafka client only when feedback is asked for

    found = fetch_false_alarms(settings.kafka, settings.limits)
    images = []
    for frame_id, jpeg in sorted(found.jpegs.items()):
        try:
            images.append(decode_jpeg(jpeg, size=(good.shape[1], good.shape[2]), max_bytes=settings.limits.max_frame_bytes,
                                      max_pixels=settings.limits.max_pixels)[0])
        except BadFrame as exc:
            print(f"warning: false alarm {frame_id!r} does not decode ({exc}): left out")
    print(f"feedback: {len(images)} confirmed false alarm(s) from {settings.kafka.feedback_topic} join the "
          f"{len(good)} good images" + (f"; {len(found.missing)} no longer retained" if found.missing else ""))
    if frames_out is not None:
        print(f"feedback: wrote {len(found.save(frames_out))} false-alarm frames to {frames_out} "
              "(for `inspector train --extra-good`)")
    return np.concatenate([good, np.stack(images)]) if images else good
