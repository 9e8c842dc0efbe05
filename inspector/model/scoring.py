"""How a model's output becomes a map, a score and a defect box: the scoring config and the helpers every family
shares (image error maps, smoothing, registration, the image score, the defect box).

Each family's own `score` (in its module) builds on these; the same functions serve training, calibration,
evaluation and the worker, so a score means the same thing everywhere.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np
import torch

from inspector.contracts import Box
from inspector.model.image_similarity import ERROR_MAPS, combined_error_map


@dataclass(frozen=True)
class ScoringConfig:
    """How a model's output becomes a map and a score; stored in the model file with its threshold."""

    # Image-space error of the autoencoders: names from `inspector.model.image_similarity.ERROR_MAPS` joined by "+"
    # (e.g. "msgms+lab"); the feature reconstructor and the repair head ignore it.
    error: str = "l2"
    smoothing_sigma: float = 5.0  # Gaussian blur of the map, in model pixels (0 = off): pools a defect's error
    # over its area.
    reduction: Literal["max", "topk_mean", "mean"] = "topk_mean"
    topk_fraction: float = 0.005  # share of the map's pixels averaged by "topk_mean"
    # Feature reconstructor: the local and global scores, each divided by its good level (mean + 3 std of
    # held-out good images), weighted and summed; 0 = that term is not used.
    local_reference: float = 0.0
    global_reference: float = 0.0
    # Feature reconstructor: the global term's weight in that sum. Twice the local term's: it is one low-noise
    # number per image, and rot or bruising shifts it more than any region (bench/RESULTS.md, "Model quality").
    global_weight: float = 2.0
    # Feature reconstructor with a memory of good regions: its term's good level (as the references above) and
    # weight in the sum; 0 = not used.
    memory_reference: float = 0.0
    memory_weight: float = 0.0
    # Feature reconstructor: each location's error in units of good images' spread there (floored at a tenth
    # of the mean spread), so that a place where good parts always differ (an edge, a highlight) does not alarm.
    pixel_normalise: bool = True
    # Feature reconstructor: (dx, dy), in model pixels, by which its map's content lies right of and below the
    # image content that caused it; the map is translated back by it. Measured at training time on synthetic
    # defects (about +12, +12: the upsampling conventions and the pretrained receptive fields); 0 = not measured.
    map_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "map_offset", tuple(float(v) for v in self.map_offset))  # a JSON list -> tuple
        if len(self.map_offset) != 2:
            raise ValueError(f"map_offset must be (dx, dy), got {self.map_offset}")
        unknown = [n for n in self.error.split("+") if n not in ERROR_MAPS]
        if unknown:
            raise ValueError(f"unknown error map {unknown}; choose from {sorted(ERROR_MAPS)} joined by '+'")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "ScoringConfig":
        return cls(**{"global_weight": 1.0, **data})  # type: ignore[arg-type]  # files before the weight: 1


@functools.cache  # never evicted: a captured CUDA graph reads it at its address (inspector.model.cuda_graphs)
def _blur_matrix(n: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix M with M @ v = Gaussian blur of v along its length, reflect padding included.

    A 1-D blur as a band matrix turns the smoothing into two GEMMs: several times faster than a 1-channel
    31-tap conv2d on CPU, and exactly the same arithmetic.
    """
    radius = max(1, int(round(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = k / k.sum()
    m = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j, w in zip(range(-radius, radius + 1), k.tolist()):
            src = i + j
            while src < 0 or src >= n:  # reflect about the edge pixels (torch's "reflect" padding)
                src = -src if src < 0 else 2 * (n - 1) - src
            m[i, src] += w
    return m.to(device=device, dtype=dtype)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps (reflect padding); sigma 0 returns them as they are."""
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    rows = _blur_matrix(h, sigma, str(maps.device), maps.dtype)  # (H, H)
    cols = _blur_matrix(w, sigma, str(maps.device), maps.dtype)  # (W, W)
    return rows @ maps @ cols.T  # along H, then along W


@functools.cache  # never evicted, as _blur_matrix
def _shift_matrix(n: int, offset: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix M with (M @ v)[i] = v at i + offset, linearly interpolated; the end values beyond the ends."""
    src = (torch.arange(n, dtype=torch.float64) + offset).clamp(0, n - 1)
    lo = src.floor().long()
    frac = src - lo
    rows = torch.arange(n)
    m = torch.zeros((n, n), dtype=torch.float64)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, (lo + 1).clamp(max=n - 1)), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def register(maps: torch.Tensor, offset: tuple[float, float]) -> torch.Tensor:
    """Translate (B, H, W) maps so that what lies at (x + dx, y + dy) moves to (x, y), sub-pixel, edges
    replicated; a zero offset returns them as they are."""
    dx, dy = offset
    if not dx and not dy:
        return maps
    h, w = maps.shape[-2:]
    rows = _shift_matrix(h, dy, str(maps.device), maps.dtype)  # (H, H)
    cols = _shift_matrix(w, dx, str(maps.device), maps.dtype)  # (W, W)
    return rows @ maps @ cols.T


def error_maps(x: torch.Tensor, recon: torch.Tensor, config: ScoringConfig) -> torch.Tensor:
    """Per-pixel anomaly map of an image reconstruction, smoothed. (B, C, H, W) x2 -> (B, H, W)."""
    return smooth(combined_error_map(x.float(), recon.float(), tuple(config.error.split("+"))), config.smoothing_sigma)


def image_scores(maps: torch.Tensor, config: ScoringConfig) -> torch.Tensor:
    """(B, H, W) -> (B,) one anomaly score per image."""
    flat = maps.flatten(1)  # (B, H*W)
    if config.reduction == "max":
        return flat.amax(dim=1)
    if config.reduction == "mean":
        return flat.mean(dim=1)
    k = max(1, int(round(flat.shape[1] * config.topk_fraction)))
    return flat.topk(k, dim=1).values.mean(dim=1)


def defect_region(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray | None:
    """The largest region of an (h, w) map above `pixel_threshold`, as an (h, w) bool mask; None without one."""
    above = (anomaly_map > pixel_threshold).astype(np.uint8)  # (h, w) at model resolution
    n, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    if n <= 1:
        return None
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def peak_region(anomaly_map: np.ndarray) -> np.ndarray:
    """The map's highest pixel as an (h, w) bool region: where an alert points when its score crossed the
    threshold but no pixel crossed the pixel threshold."""
    region = np.zeros(anomaly_map.shape, bool)
    region[np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)] = True
    return region


def defect_box(anomaly_map: np.ndarray, pixel_threshold: float, frame_hw: tuple[int, int]) -> Box | None:
    """The bounding box of the largest region above `pixel_threshold`, in the frame's pixel coordinates."""
    region = defect_region(anomaly_map, pixel_threshold)
    return None if region is None else region_box(region, frame_hw)


def region_box(region: np.ndarray, frame_hw: tuple[int, int]) -> Box:
    """The bounding box of a non-empty (h, w) bool region, scaled to a frame of `frame_hw` pixels."""
    cols, rows = np.flatnonzero(region.any(axis=0)), np.flatnonzero(region.any(axis=1))
    map_h, map_w = region.shape
    frame_h, frame_w = frame_hw
    sx, sy = frame_w / map_w, frame_h / map_h
    return Box(x0=int(cols[0] * sx), y0=int(rows[0] * sy),
               x1=min(frame_w, int(np.ceil((cols[-1] + 1) * sx))), y1=min(frame_h, int(np.ceil((rows[-1] + 1) * sy))),
               area_fraction=round(float(region.mean()), 6))
