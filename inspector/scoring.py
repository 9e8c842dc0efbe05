"""Reconstruction error -> per-pixel anomaly map -> image score -> defect box.

The same functions serve training (validation), calibration, evaluation and the worker, so a score means
the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ScoringConfig:
    """How an error map becomes a score; stored in the model file with the threshold it was calibrated for."""

    error: Literal["l2", "l1"] = "l2"
    smoothing_sigma: float = 5.0  # Gaussian blur of the error map, in model pixels (0 = off); chosen on a
    # validation set (`inspector synth --seed 1`), not the test set: it pools a defect's error over its area.
    reduction: Literal["max", "topk_mean", "mean"] = "topk_mean"
    topk_fraction: float = 0.005  # share of the map's pixels averaged by "topk_mean"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "ScoringConfig":
        return cls(**data)  # type: ignore[arg-type]


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    return k / k.sum()  # (2r+1,)


def error_maps(x: torch.Tensor, recon: torch.Tensor, config: ScoringConfig) -> torch.Tensor:
    """Per-pixel anomaly map: channel-mean reconstruction error, smoothed. (B, C, H, W) x2 -> (B, H, W)."""
    diff = (x.float() - recon.float())
    err = diff.square() if config.error == "l2" else diff.abs()
    maps = err.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if config.smoothing_sigma > 0:
        k = _gaussian_kernel(config.smoothing_sigma, maps.device, maps.dtype)
        r = k.numel() // 2
        # Separable blur; reflect padding so the frame border is not darker than its inside.
        maps = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return maps[:, 0]  # (B, H, W)


def image_scores(maps: torch.Tensor, config: ScoringConfig) -> torch.Tensor:
    """(B, H, W) -> (B,) one anomaly score per image."""
    flat = maps.flatten(1)  # (B, H*W)
    if config.reduction == "max":
        return flat.amax(dim=1)
    if config.reduction == "mean":
        return flat.mean(dim=1)
    k = max(1, int(round(flat.shape[1] * config.topk_fraction)))
    return flat.topk(k, dim=1).values.mean(dim=1)


@torch.inference_mode()
def score_batch(model: torch.nn.Module, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a preprocessed batch (B, C, H, W) in [0, 1] -> (scores (B,), maps (B, H, W)), float32."""
    recon = model(x)
    maps = error_maps(x, recon, config)
    return image_scores(maps, config).float(), maps.float()


class RegionBox(NamedTuple):
    """A defect region in the frame's own pixel coordinates (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    area_fraction: float  # region area / map area


def defect_box(anomaly_map: np.ndarray, pixel_threshold: float, frame_hw: tuple[int, int]) -> RegionBox | None:
    """The bounding box of the largest region above `pixel_threshold`, in the frame's pixel coordinates."""
    above = (anomaly_map > pixel_threshold).astype(np.uint8)  # (h, w) at model resolution
    n, _, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    if n <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[largest])
    map_h, map_w = anomaly_map.shape
    frame_h, frame_w = frame_hw
    sx, sy = frame_w / map_w, frame_h / map_h
    return RegionBox(
        x0=int(x * sx), y0=int(y * sy),
        x1=min(frame_w, int(np.ceil((x + w) * sx))), y1=min(frame_h, int(np.ceil((y + h) * sy))),
        area_fraction=round(area / (map_h * map_w), 6),
    )
