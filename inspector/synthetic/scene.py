"""The pieces a banana scene is painted from: its parameters (every random draw), banana coordinates over the
frame, cached textures, and the colour helpers the body and the defects share.

Images are built channel-planar, (3, H, W) float32: numpy broadcasts a per-channel colour over leading planes
far faster than over a trailing axis of 3, and cv2.merge makes the BGR image at the end.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

BELT_VARIANTS = 4


@dataclass(frozen=True)
class SceneParams:
    """Every random draw of one scene, so that rasterising is deterministic and can be repeated."""

    size: int
    # banana geometry (pixels, radians)
    length: float
    half_width: float
    span: float
    phi_mid: float
    centre: tuple[float, float]
    flip: bool
    neck_t: float
    neck_ratio: float
    # banana appearance
    body_bgr: np.ndarray
    stem_bgr: np.ndarray
    tip_bgr: np.ndarray
    tip_len: float
    end_green: float
    light_x: float
    gloss: tuple[float, float]  # highlight strength (grey levels) and width (fraction of half-width)
    ridge: float
    # scene
    belt_index: int
    belt_offset: tuple[int, int]
    belt_bgr: np.ndarray
    gain: np.ndarray
    gradient: tuple[float, float]
    noise_offset: tuple[int, int]
    noise_sigma: float
    blur_sigma: float
    shadow: tuple[float, float, float]
    # defect
    defect: str | None
    defect_draws: dict
    defect_scale: float = 1.0


# ---- cached textures: belt backgrounds, a camera-noise bank and coordinate grids, per image size ------------


@functools.lru_cache(maxsize=8)
def belt_bank(size: int) -> np.ndarray:
    """A few smooth belt textures (grey-level offsets), 1.5x the frame so scenes can crop them."""
    rng = np.random.default_rng(12345)
    big = size + size // 2
    k = size / 256.0
    y = np.arange(big, dtype=np.float32)[:, None]
    bank = np.empty((BELT_VARIANTS, big, big), np.float32)
    for i in range(BELT_VARIANTS):
        tex = np.zeros((big, big), np.float32)
        # Low-frequency blotches only: an autoencoder must be able to reproduce the belt.
        for cells, amp in ((4, 5.0), (9, 2.5)):
            grid = rng.normal(0.0, amp, (cells, cells)).astype(np.float32)
            tex += cv2.resize(grid, (big, big), interpolation=cv2.INTER_CUBIC)
        # Faint streaks along the running direction (x), smooth across it.
        streak = rng.normal(0, 1.5, (24, 1)).astype(np.float32)
        tex += cv2.resize(streak, (1, big), interpolation=cv2.INTER_CUBIC)
        # Seams: a soft dark groove with a lighter lip, repeating down the frame.
        period = rng.uniform(0.2, 0.35) * size
        d = ((y - rng.uniform(0, period)) % period) - period / 2
        width = 2.4 * k
        tex += -8.0 * np.exp(-((d / width) ** 2)) + 3.0 * np.exp(-(((d - 2.5 * width) / (1.5 * width)) ** 2))
        bank[i] = tex
    return bank


@functools.lru_cache(maxsize=8)
def noise_bank(size: int) -> np.ndarray:
    """Unit Gaussian camera noise, (3, 2H, 2W); cropping it is much cheaper than drawing per frame."""
    rng = np.random.default_rng(54321)
    return rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def pixel_grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y coordinates, (H, W) float32 each."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


# ---- banana coordinates and colours ------------------------------------------------------------------------


def bgr_plane(*values: float) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 plane-broadcastable array."""
    return np.asarray(values, np.float32).reshape(3, 1, 1)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    z = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return z * z * (3.0 - 2.0 * z)


def half_width(p: SceneParams, t: np.ndarray) -> np.ndarray:
    """Half-width (px) along the banana: a stalk of near-constant width, then a rounded, tapered body."""
    tb = np.clip((t - np.float32(p.neck_t)) * np.float32(1.0 / (1.0 - p.neck_t)), 0.0, 1.0)
    body = np.float32(p.half_width) * (4.0 * tb * (1.0 - tb)) ** 0.55
    neck = np.float32(p.neck_ratio * p.half_width) * (1.0 - smoothstep(p.neck_t, p.neck_t + 0.12, t))
    return np.sqrt(body * body + neck * neck)


@dataclass
class BananaField:
    """Banana coordinates over the banana's bounding box in the frame."""

    x0: int
    y0: int
    t: np.ndarray  # (h, w) position along the banana, 0 = stalk end, 1 = blossom tip
    u: np.ndarray  # (h, w) arc length from the stalk end, px
    v: np.ndarray  # (h, w) signed offset from the centre line, px
    h: np.ndarray  # (h, w) half-width at t, px


def banana_field(p: SceneParams) -> BananaField:
    size = p.size
    radius = p.length / p.span
    cx, cy = p.centre
    phis = p.phi_mid + np.linspace(-p.span / 2, p.span / 2, 16)
    pad = p.half_width + 3
    xs, ys = cx + radius * np.cos(phis), cy + radius * np.sin(phis)
    x0, x1 = max(int(xs.min() - pad), 0), min(int(xs.max() + pad) + 1, size)
    y0, y1 = max(int(ys.min() - pad), 0), min(int(ys.max() + pad) + 1, size)
    gx, gy = pixel_grids(size)
    dx = gx[y0:y1, x0:x1] - np.float32(cx)
    dy = gy[y0:y1, x0:x1] - np.float32(cy)
    r = np.sqrt(dx * dx + dy * dy)
    dphi = np.arctan2(dy, dx) - np.float32(p.phi_mid)
    dphi = (dphi + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
    t = dphi * np.float32(1.0 / p.span) + np.float32(0.5)
    if p.flip:
        t = np.float32(1.0) - t
    v = r - np.float32(radius)
    return BananaField(x0, y0, t, t * np.float32(p.length), v, half_width(p, t))


def to_box_xy(p: SceneParams, f: BananaField, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Banana coordinates (t, v px) to pixel coordinates inside the field's box."""
    a = 1.0 - t if p.flip else t
    phi = p.phi_mid + (a - 0.5) * p.span
    rr = p.length / p.span + v
    return p.centre[0] + rr * np.cos(phi) - f.x0, p.centre[1] + rr * np.sin(phi) - f.y0
