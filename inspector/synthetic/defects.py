"""Defects on a banana: their random draws (`draw_defect`, in banana coordinates) and their painters, which
recolour the banana's colour planes and return the defect's weight; the mask is where it is over one half.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspector.synthetic.scene import BananaField, SceneParams, bgr_plane, half_width, noise_bank, smoothstep, to_box_xy


def draw_defect(rng: np.random.Generator, defect: str | None) -> dict:
    """Defect draws in banana coordinates: t in [0, 1] along the fruit, s in [-1, 1] across it."""
    if defect is None:
        return {}
    if defect == "brown_spots":
        n = int(rng.integers(2, 7))
        return {
            "t": rng.uniform(0.2, 0.85, n),
            "s": rng.uniform(-0.6, 0.6, n),
            # Radius as a fraction of the banana's length; fewer spots are larger.
            "r": rng.uniform(0.035, 0.06, n) * (4.0 / n) ** 0.35,
            "colour": np.array([30.0, 62.0, 98.0]) * rng.uniform(0.75, 1.15),
        }
    if defect == "bruise":
        return {
            "t": rng.uniform(0.25, 0.8),
            "s": rng.uniform(-0.4, 0.4),
            "a": rng.uniform(1.0, 1.8),  # semi-axes in half-widths
            "b": rng.uniform(0.6, 0.9),
            "angle": rng.uniform(-0.5, 0.5),
            "dark": rng.uniform(0.45, 0.6),
        }
    if defect == "mould":
        return {
            "t": rng.uniform(0.25, 0.8),
            "s": rng.uniform(-0.4, 0.4),
            "r": rng.uniform(0.6, 0.9),
            "harmonics": rng.uniform(-1, 1, (4, 2)),
            "colour": np.array([rng.uniform(150, 180), rng.uniform(190, 215), rng.uniform(165, 190)]),
        }
    if defect == "cut":
        return {
            "t": rng.uniform(0.3, 0.7),
            "s": rng.uniform(-0.3, 0.3),
            "len": rng.uniform(0.3, 0.5),  # fraction of banana length
            "angle": rng.choice([-1, 1]) * rng.uniform(0.1, 0.9),  # relative to the banana's axis
            "wiggle": rng.uniform(0.0, 2 * np.pi, 2),
        }
    if defect == "overripe_speckle":
        n = int(rng.integers(45, 90))
        return {
            "t": rng.uniform(0.25, 0.75),
            "extent": rng.uniform(0.16, 0.26),  # half-length of the region, fraction of banana length
            "dots_t": rng.uniform(-1, 1, n),
            "dots_s": rng.uniform(-0.9, 0.9, n),
            "dots_r": rng.uniform(1.0, 1.8, n),  # pixels at 256
            "colour": np.array([25.0, 40.0, 62.0]) * rng.uniform(0.8, 1.2),
        }
    # rotten: a part of the fruit, from one end or in the middle.
    frac = rng.uniform(0.3, 0.6)
    where = rng.integers(3)
    start = (0.0, 1.0 - frac, rng.uniform(0.12, 0.88 - frac))[int(where)]
    return {
        "start": float(start),
        "stop": float(start + frac),
        "shrink": rng.uniform(0.1, 0.2),
        "wrinkle_period": rng.uniform(6.0, 11.0),  # pixels at 256
        "phase": rng.uniform(0, 2 * np.pi, 3),
        "black": rng.uniform(0.2, 0.6),
    }


# ---- painters: each recolours `colour` (3, h, w) in place and returns the defect weight (h, w) --------------


def _local_uv(p: SceneParams, f: BananaField, t0: float, s0: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (px) from a point given in banana coordinates, along and across the fruit."""
    h0 = float(half_width(p, np.asarray(t0, np.float32)))
    return f.u - np.float32(t0 * p.length), f.v - np.float32(s0 * h0)


def rot_weight(p: SceneParams, f: BananaField, d: dict, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the fruit is rotten (0..1) and a wrinkle pattern (-1..1) for the shrivelled skin."""
    jag = 0.03 * np.sin(f.v * np.float32(3.0 / p.half_width) + np.float32(d["phase"][0]))
    soft = 0.035
    rot = np.ones_like(f.t)
    if d["start"] > 0:
        rot = smoothstep(-soft, soft, f.t - np.float32(d["start"]) + jag)
    if d["stop"] < 1:
        rot = rot * (1.0 - smoothstep(-soft, soft, f.t - np.float32(d["stop"]) + jag))
    period = d["wrinkle_period"] * k
    # Two incommensurate waves and a slant across the fruit, so the folds do not look machined.
    slant = f.v * np.float32(0.15 / k) + np.float32(d["phase"][2])
    wrinkle = 0.6 * np.sin(f.u * np.float32(2 * np.pi / period) + slant)
    wrinkle += 0.4 * np.sin(f.u * np.float32(2 * np.pi / (1.73 * period)) - 0.7 * slant)
    return rot, wrinkle


def paint_rot(
    f: BananaField,
    s: np.ndarray,
    across: np.ndarray,
    colour: np.ndarray,
    d: dict,
    k: float,
    rot: np.ndarray,
    wrinkle: np.ndarray,
) -> None:
    mottle = 0.5 + 0.5 * np.sin(f.u * np.float32(1.0 / (11.0 * k)) + np.float32(d["phase"][1]) + 1.5 * s)
    mix = np.float32(d["black"]) * (0.6 + 0.4 * mottle)
    brown, black = bgr_plane(30.0, 64.0, 112.0), bgr_plane(18.0, 24.0, 34.0)
    rotten = (brown + mix * (black - brown)) * ((0.94 + 0.06 * wrinkle) * (0.6 + 0.5 * across))
    colour += rot * (rotten - colour)


def _paint_spots(
    p: SceneParams, f: BananaField, _s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, _k: float
) -> np.ndarray:
    weight = np.zeros_like(f.u)
    for t0, s0, r0 in zip(d["t"], d["s"], d["r"]):
        du, dv = _local_uv(p, f, t0, s0)
        r = r0 * p.length * p.defect_scale
        dist = np.sqrt(du * du + dv * dv)
        weight = np.maximum(weight, 1.0 - smoothstep(0.75 * r, 1.25 * r, dist))
    # Darker core, warmer rim, shaded with the fruit.
    spot = bgr_plane(*d["colour"]) * ((1.0 - 0.25 * weight) * (0.5 + 0.55 * across))
    colour += weight * (spot - colour)
    return weight


def _paint_bruise(
    p: SceneParams, f: BananaField, _s: np.ndarray, _across: np.ndarray, colour: np.ndarray, d: dict, _k: float
) -> np.ndarray:
    du, dv = _local_uv(p, f, d["t"], d["s"])
    c, sn = np.float32(np.cos(d["angle"])), np.float32(np.sin(d["angle"]))
    a = np.float32(1.0 / (d["a"] * p.half_width * p.defect_scale))
    b = np.float32(1.0 / (d["b"] * p.half_width * p.defect_scale))
    q = ((du * c + dv * sn) * a) ** 2 + ((dv * c - du * sn) * b) ** 2
    weight = np.exp(-1.4 * q * q)  # flat centre, soft edge
    # Darker, and pulled from yellow towards a brownish grey.
    bruised = colour * (bgr_plane(0.78, 0.62, 0.6) * np.float32(1.0 - d["dark"])) + bgr_plane(18.0, 22.0, 26.0)
    colour += weight * (bruised - colour)
    return weight


def _paint_mould(
    p: SceneParams, f: BananaField, _s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    du, dv = _local_uv(p, f, d["t"], d["s"])
    ang = np.arctan2(dv, du)
    edge = np.ones_like(du)
    for n, (ca, cb) in enumerate(d["harmonics"], start=2):
        edge += np.float32(0.22 / n**0.5) * (np.float32(ca) * np.cos(n * ang) + np.float32(cb) * np.sin(n * ang))
    # Fuzz: fine grain from the noise bank, lightly blurred, roughens both the edge and the surface.
    fuzz = cv2.GaussianBlur(noise_bank(p.size)[0, : du.shape[0], : du.shape[1]], (0, 0), 0.8)
    r = np.float32(d["r"] * p.half_width * p.defect_scale) * edge + np.float32(1.5 * k) * fuzz
    dist = np.sqrt(du * du + dv * dv)
    weight = 1.0 - smoothstep(0.0, 1.0, (dist - 0.7 * r) / (0.4 * r))
    mould = bgr_plane(*d["colour"]) * ((0.85 + 0.08 * fuzz) * (0.7 + 0.35 * across))
    colour += weight * (mould - colour)
    return weight


def _paint_cut(
    p: SceneParams, f: BananaField, _s: np.ndarray, _across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    du, dv = _local_uv(p, f, d["t"], d["s"])
    half_len = 0.5 * d["len"] * p.length * p.defect_scale
    c, sn = np.float32(np.cos(d["angle"])), np.float32(np.sin(d["angle"]))
    along = du * c + dv * sn
    off = dv * c - du * sn
    # A crack wanders a little.
    w0, w1 = d["wiggle"]
    off += np.float32(1.5 * k) * np.sin(along * np.float32(1 / (6.0 * k)) + np.float32(w0))
    off += np.float32(1.0 * k) * np.sin(along * np.float32(1 / (2.5 * k)) + np.float32(w1))
    ends = np.maximum(np.abs(along) - np.float32(half_len), 0.0)
    dist = np.sqrt(off * off + ends * ends)
    taper = 1.0 - 0.6 * np.clip(np.abs(along) * np.float32(1 / half_len), 0, 1) ** 4
    grow = np.float32(p.defect_scale**0.5)
    core_w = np.float32(1.6 * k) * grow * taper
    edge_w = core_w + np.float32(2.2 * k) * grow
    flesh = 1.0 - smoothstep(-0.7, 0.7, dist - edge_w)
    core = 1.0 - smoothstep(-0.7, 0.7, dist - core_w)
    colour += flesh * (bgr_plane(165.0, 222.0, 238.0) - colour)
    colour += core * (bgr_plane(22.0, 30.0, 42.0) - colour)
    return flesh


def _paint_speckle(
    p: SceneParams, f: BananaField, _s: np.ndarray, _across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    t0 = d["t"]
    ext = d["extent"] * p.defect_scale
    # A grown region gets more dots (mirrored copies), so the density stays the same.
    n = int(len(d["dots_t"]) * p.defect_scale)
    reps = -(-n // len(d["dots_t"]))
    dots_t = np.clip(np.tile(d["dots_t"], reps)[:n] * ext + t0, 0.03, 0.97)
    mirror = np.repeat(np.where(np.arange(reps) % 2 == 0, 1.0, -0.93), len(d["dots_t"]))[:n]
    dots_s = np.tile(d["dots_s"], reps)[:n] * mirror
    dots_r = np.tile(d["dots_r"], reps)[:n]
    xs, ys = to_box_xy(p, f, dots_t, dots_s * half_width(p, dots_t) * 0.95)
    layer = np.zeros(f.u.shape, np.uint8)
    for x, y, r in zip(xs, ys, dots_r):
        # Centre and radius in 1/16 px (shift=4) for sub-pixel dots.
        cv2.circle(layer, (int(x * 16), int(y * 16)), max(int(r * k * 16), 8), 255, -1, cv2.LINE_AA, 4)
    # A touch of blur rounds the tiny polygons cv2 draws.
    weight = cv2.GaussianBlur(layer.astype(np.float32), (0, 0), 0.5) * np.float32(1 / 255)
    # The region also warms a little, as overripe skin does.
    region = 1.0 - smoothstep(0.7, 1.0, np.abs(f.t - np.float32(t0)) * np.float32(1 / ext))
    colour *= 1.0 - region * bgr_plane(0.15, 0.09, 0.045)
    colour += weight * (bgr_plane(*d["colour"]) - colour)
    return weight


# Every painter takes the same arguments (bananas.render_scene calls them alike); the ones it does not need
# start with an underscore.
DEFECT_PAINTERS = {
    "brown_spots": _paint_spots,
    "bruise": _paint_bruise,
    "mould": _paint_mould,
    "cut": _paint_cut,
    "overripe_speckle": _paint_speckle,
}
