"""The benchmarks' frames: synthetic belt scenes (one in 20 with brown spots) as JPEG, and the decode limits the
worker applies to them. Free of Kafka and pydantic, for `bench/scoring.py` on a bare GPU machine."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.synthetic.bananas import render_scene

LIMITS = {"max_bytes": 8 << 20, "max_pixels": 4096 * 4096}


def make_jpegs(n: int, size: int = 256, quality: int = 97) -> list[bytes]:
    """n synthetic belt frames of size x size px; quality 97 makes 256-px ones ~19 KB, the size the pipeline targets
    are stated for."""
    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", render_scene(rng, size, "brown_spots" if i % 20 == 0 else None).image,
                         [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for i in range(n)]
