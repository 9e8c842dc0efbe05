"""The object an alert's defect lies on, found in the frame against the belt around it, so that the sorter aims at the
fruit and not at the spot: a rot at a banana's tip lies half a banana from the middle the ejector must push.

The belt is what the frame's border shows (its median colour and spread, robust to an object touching the border);
the object is every pixel far from it, joined across the gaps a defect or a thin stem leaves, that connects to the
defect. Where the border is not belt (a web or a part filling the view) the object found is the defect's own
far-coloured pixels or nothing, so the sorter aims at the defect, as it does where the box is cut by the frame's edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspector.contracts import Box
from inspector.model.scoring import region_box

# How far from the belt's colour a pixel belongs to an object, in robust standard deviations of the border's colour.
FOREGROUND_SIGMAS = 8.0
# An object region larger than this share of the frame means the border was not belt.
MAX_AREA_FRACTION = 0.6


def object_region(image: np.ndarray, defect: np.ndarray) -> np.ndarray | None:
    """The object a defect lies on: (H, W, 3) uint8 RGB frame and (H, W) bool defect region -> (H, W) bool, or
    None when the frame shows no object apart from its belt."""
    height, width = defect.shape
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)  # (H, W, 3)
    ring = max(2, min(height, width) // 64)
    border = np.concatenate([lab[:ring].reshape(-1, 3), lab[-ring:].reshape(-1, 3),
                             lab[:, :ring].reshape(-1, 3), lab[:, -ring:].reshape(-1, 3)])
    belt = np.median(border, axis=0)
    spread = 1.4826 * np.median(np.abs(border - belt), axis=0) + 1.0  # +1: JPEG's quantisation on a flat belt
    # ((lab - belt) / spread)^2 summed over channels, in two OpenCV passes (numpy's broadcasting took 2 ms).
    standardise = np.zeros((3, 4), np.float32)
    standardise[:, :3], standardise[:, 3] = np.diag(1 / spread), -belt / spread
    scaled = cv2.transform(lab, standardise)  # (H, W, 3)
    squared = cv2.transform(cv2.multiply(scaled, scaled), np.ones((1, 3), np.float32))  # (H, W)
    far = (squared > FOREGROUND_SIGMAS**2).astype(np.uint8)
    foreground = cv2.morphologyEx(far, cv2.MORPH_OPEN, _disc(3))  # the belt's own specks
    # The defect joins the parts of its object it splits (a dark rot) without adding to it: the map's smoothing
    # spreads it a few pixels onto the belt.
    joined = cv2.morphologyEx(foreground | defect.astype(np.uint8), cv2.MORPH_CLOSE,
                              _disc(max(3, round(min(height, width) * 0.06)) | 1))
    _, labels = cv2.connectedComponents(joined, connectivity=8)
    touching = np.unique(labels[defect & (joined > 0)])
    touching = touching[touching > 0]
    if not touching.size:
        return None
    region = np.isin(labels, touching) & (foreground > 0)
    if not region.any() or region.mean() > MAX_AREA_FRACTION:
        return None
    return region


def object_box(image: np.ndarray, defect: np.ndarray, frame_hw: tuple[int, int]) -> Box | None:
    """`object_region`'s bounding box in the frame's own pixel coordinates (the image may be the frame resized)."""
    region = object_region(image, defect)
    return None if region is None else region_box(region, frame_hw)


def _disc(diameter: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
