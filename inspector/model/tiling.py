"""Large or elongated frames seen at their own scale: a grid of overlapping model-sized tiles, each scored as an
image, their maps stitched back into one map of the frame and their scores reduced to the frame's.

A tiled model's frames are resized to the grid's canvas (near the frame's own size) instead of being squashed to
one square input; training fits the model to the tiles of good frames, and `ModelRunner` cuts, scores and stitches,
so the worker, calibration and evaluation see one score and one map per frame as before. `inspector train` tiles
frames that are large and elongated by default (`--tiles auto`, `choose_tiling`); every development set's frames
stay one square input (bench/RESULTS.md, "Tiling").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median
from typing import Literal, TypeVar

import numpy as np
import torch

# `--tiles auto` tiles a frame whose long side is at least this many model inputs and that is at least this
# elongated: there a squashed input shrinks a thin defect by that much along one axis.
TILE_FROM_LONG_SIDE = 2.5
TILE_FROM_ASPECT = 2.0
OVERLAP_FRACTION = 0.125  # of a tile's side, shared by neighbouring tiles: a defect on a seam is seen whole by one

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Tiling:
    """A rows x cols grid of `tile`-px square tiles overlapping by `overlap` px: the frame is resized to the grid's
    canvas, `canvas_hw`."""

    rows: int
    cols: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1 or self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"a tiling needs rows, cols, tile >= 1 and 0 <= overlap < tile, got {self}")

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def canvas_hw(self) -> tuple[int, int]:
        step = self.tile - self.overlap
        return (self.rows - 1) * step + self.tile, (self.cols - 1) * step + self.tile

    def origins(self) -> list[tuple[int, int]]:
        """Each tile's top-left (y, x) on the canvas, row by row."""
        step = self.tile - self.overlap
        return [(r * step, c * step) for r in range(self.rows) for c in range(self.cols)]

    def resized(self, tile: int) -> "Tiling":
        """The same grid with tiles of another side (the overlap scaled with it)."""
        return Tiling(self.rows, self.cols, tile, int(round(self.overlap * tile / self.tile)))

    def cut(self, frames: ArrayT) -> ArrayT:
        """(B, C, H, W) tensor or (B, H, W, C) array on the canvas -> its tiles, frame by frame: (B * T, C, S, S)
        or (B * T, S, S, C)."""
        s = self.tile
        if isinstance(frames, torch.Tensor):
            tiles = torch.stack([frames[:, :, y : y + s, x : x + s] for y, x in self.origins()], dim=1)
            return tiles.reshape(-1, *tiles.shape[2:])
        stacked = np.stack([frames[:, y : y + s, x : x + s] for y, x in self.origins()], axis=1)
        return stacked.reshape(-1, *stacked.shape[2:])

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """(B * T, S, S) tile maps -> (B, H, W) canvas maps: each canvas pixel from the tile whose seam lies
        farther from it (the seams in the middle of the overlaps), so a translation-equivariant model's map of the
        whole is rebuilt wherever its tiles' edges do not reach."""
        s = self.tile
        tiles = maps.reshape(-1, self.rows, self.cols, s, s)
        row_spans, col_spans = _spans(self.rows, s, self.overlap), _spans(self.cols, s, self.overlap)
        rows = [torch.cat([tiles[:, r, c, a:b, lo:hi] for c, (lo, hi) in enumerate(col_spans)], dim=-1)
                for r, (a, b) in enumerate(row_spans)]
        return torch.cat(rows, dim=-2)

    def frame_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(B * T,) tile scores -> (B,) each frame's highest."""
        return scores.reshape(-1, self.count).amax(dim=1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> "Tiling":
        return cls(**data)


def _spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Along one axis, the part of each of n tiles the stitched map takes, in the tile's own pixels."""
    first_half, second_half = overlap // 2, overlap - overlap // 2
    return [(0 if i == 0 else first_half, tile if i == n - 1 else tile - second_half) for i in range(n)]


def grid_for(frame_hw: tuple[int, int], tile: int) -> Tiling:
    """The grid that sees a frame of `frame_hw` near its own resolution: as many tiles along each axis as its side
    holds (rounded, at least one)."""
    overlap = int(round(tile * OVERLAP_FRACTION))
    step = tile - overlap
    rows, cols = (max(1, int(round((side - overlap) / step))) for side in frame_hw)
    return fixed_grid(rows, cols, tile)


def choose_tiling(frame_sides: list[tuple[int, int]], tile: int, detail_scale: float = 1.0) -> Tiling | None:
    """The grid for training frames of these (height, width)s whose detail a frame `detail_scale` times smaller
    holds (`inspector.training.frame_scale`), or None where they stay one square input: tiled only when that
    detail's frame is both large (long side >= TILE_FROM_LONG_SIDE inputs) and elongated (>= TILE_FROM_ASPECT): a
    large square photo of one object is better seen whole (its global term sees all of it)."""
    if not frame_sides:
        return None
    h, w = (median(s[axis] for s in frame_sides) / max(1.0, detail_scale) for axis in (0, 1))
    long_side, short_side = max(h, w), max(1.0, min(h, w))
    if long_side < TILE_FROM_LONG_SIDE * tile or long_side / short_side < TILE_FROM_ASPECT:
        return None
    grid = grid_for((int(h), int(w)), tile)
    return grid if grid.count > 1 else None


def parse_tiles(text: str) -> tuple[int, int] | Literal["auto"] | None:
    """`--tiles` as given: "auto", "off" (None) or "ROWSxCOLS" ((rows, cols)); ValueError otherwise."""
    text = text.strip().lower()
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    rows, sep, cols = text.partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise ValueError(f"--tiles must be auto, off or ROWSxCOLS (e.g. 2x4), got {text!r}")
    return int(rows), int(cols)


def fixed_grid(rows: int, cols: int, tile: int) -> Tiling:
    """A grid given by hand, with the default overlap."""
    return Tiling(rows, cols, tile, int(round(tile * OVERLAP_FRACTION)))


def tiles_per_frame(tiling: Tiling | None) -> int:
    return 1 if tiling is None else tiling.count


def input_hw(size: int, tiling: Tiling | None) -> tuple[int, int]:
    """What a frame is resized to before scoring: the canvas where tiled, else the square input."""
    return (size, size) if tiling is None else tiling.canvas_hw

