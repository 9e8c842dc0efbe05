"""What a set's frames are before any resize: their sides, and how much detail their pixels hold.

Training chooses the model's input side and the tiling from a sample of the frames (`frame_sample`). A frame's
pixel count can overstate its resolution: a camera that enlarges its frames, or a soft lens, gives large frames
whose detail a smaller image already holds, and tiling them at their pixel size only cuts each part into more
tiles (bench/RESULTS.md, "Tiling": the ball screws enlarged 2x lost image AUROC 0.957 -> 0.922 to a 2 x 4 grid).
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import NamedTuple

import numpy as np

DETAIL_SCALES = (1.25, 1.5, 2.0, 3.0)
# Shrunk by s and enlarged back, a sharp photo loses about half of what it loses shrunk by 2s (0.47-0.63 on the
# development sets at every s, through JPEG q60 too); a frame enlarged by s loses under 0.37 of it at scales up to s.
ENLARGED_BELOW = 0.42
MIN_SHRUNK_SIDE = 16  # px: below this a shrunk copy says little about the frame's detail


class FrameSample(NamedTuple):
    sides: list[tuple[int, int]]  # (height, width) of each sampled frame
    detail_scale: float  # median over the sample of `detail_scale`: 1.0 where the frames hold detail at their pixels


def frame_sample(paths: list[Path], samples: int = 16) -> FrameSample:
    """Up to `samples` of the frames, spread over the list (unreadable ones left out): their sides and the scale of
    their detail."""
    import cv2

    sides, scales = [], []
    for p in paths[:: max(1, len(paths) // samples)]:
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if image is None:
            continue
        sides.append((int(image.shape[0]), int(image.shape[1])))
        scales.append(detail_scale(cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image))
    return FrameSample(sides, float(median(scales)) if scales else 1.0)


def detail_scale(gray: np.ndarray) -> float:
    """(H, W) grey frame -> how many times larger it is than the detail it holds: the largest s of DETAIL_SCALES at
    which shrinking the frame by s and enlarging it back loses under ENLARGED_BELOW of what shrinking by 2s loses
    (1.0 where none: the frame holds detail at its own pixels)."""
    g = gray.astype(np.float32)
    scale = 1.0
    for s in DETAIL_SCALES:
        if min(g.shape) / (2 * s) < MIN_SHRUNK_SIDE:
            break
        if _detail_lost(g, s) < ENLARGED_BELOW * _detail_lost(g, 2 * s):
            scale = s
    return scale


def _detail_lost(g: np.ndarray, s: float) -> float:
    """RMS difference between the frame and itself shrunk by s (area-averaged) and enlarged back (bicubic)."""
    import cv2

    h, w = g.shape
    shrunk = cv2.resize(g, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_AREA)
    back = cv2.resize(shrunk, (w, h), interpolation=cv2.INTER_CUBIC)
    return float(np.sqrt(np.mean((g - back) ** 2)))
