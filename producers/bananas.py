"""Synthetic banana-on-a-belt scenes with labelled defects, and a PNG data set writer (numpy + cv2 only)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("brown_spots", "bruise", "mould", "cut", "overripe_speckle", "rotten")

# A defect must cover at least this fraction of the image, so it survives downscaling to 128 px.
MIN_DEFECT_AREA_FRACTION = 0.005

_SPLIT_IDS = {"train": 0, "test": 1, "calibration": 2}
_BELT_VARIANTS = 4
_MAX_GROW_STEPS = 6


@dataclass(frozen=True)
class Scene:
    """One rendered frame: BGR image, defect mask (255 = defect) and the defect kind (None = good)."""

    image: np.ndarray  # (H, W, 3) uint8, BGR
    mask: np.ndarray  # (H, W) uint8, 0 or 255
    defect: str | None


@dataclass(frozen=True)
class _Params:
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


def render_scene(rng: np.random.Generator, size: int = 256, defect: str | None = None) -> Scene:
    """Render one banana on the belt; `defect` is None (good) or one of DEFECT_KINDS."""
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect {defect!r}; use None or one of {DEFECT_KINDS}")
    if size < 32:
        raise ValueError(f"size {size} is too small to draw a banana; use 32 px or more")
    params = _draw_params(rng, size, defect)
    scene = _rasterise(params)
    # Rare draws (a defect mostly off the banana) are grown until the defect is large enough to see.
    min_area = MIN_DEFECT_AREA_FRACTION * size * size
    for _ in range(_MAX_GROW_STEPS):
        if defect is None or np.count_nonzero(scene.mask) >= min_area:
            break
        params = replace(params, defect_scale=params.defect_scale * 1.25)
        scene = _rasterise(params)
    return scene


def write_dataset(
    root: Path,
    *,
    n_train: int = 400,
    n_test_good: int = 100,
    n_test_per_defect: int = 25,
    size: int = 256,
    seed: int = 0,
    n_calibration: int = 0,
) -> dict[str, int]:
    """Writes root/train/good/*.png, root/test/good/*.png, root/test/<kind>/*.png,
    root/ground_truth/<kind>/<name>_mask.png (same stem as the test image + '_mask.png'),
    and if n_calibration > 0 also root/calibration/good/*.png; returns counts per folder."""
    root = Path(root)
    counts: dict[str, int] = {}
    jobs: list[tuple[str, str, str | None, int]] = [("train", "good", None, n_train)]
    if n_calibration > 0:
        jobs.append(("calibration", "good", None, n_calibration))
    jobs.append(("test", "good", None, n_test_good))
    jobs.extend(("test", kind, kind, n_test_per_defect) for kind in DEFECT_KINDS)

    for split, folder, defect, count in jobs:
        out_dir = root / split / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = root / "ground_truth" / folder
        if defect is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
        # Kind index keeps test/good and each test/<kind> on their own streams.
        stream = 0 if defect is None else 1 + DEFECT_KINDS.index(defect)
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], stream, i])
            scene = render_scene(rng, size=size, defect=defect)
            stem = f"{i:04d}"
            _imwrite(out_dir / f"{stem}.png", scene.image)
            if defect is not None:
                _imwrite(mask_dir / f"{stem}_mask.png", scene.mask)
        counts[f"{split}/{folder}"] = count
        if defect is not None:
            counts[f"ground_truth/{folder}"] = count
    return counts


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}; check the folder exists and is writable")


# ---------------------------------------------------------------------------------------------------------
# Random draws


def _draw_params(rng: np.random.Generator, size: int, defect: str | None) -> _Params:
    length = size * rng.uniform(0.5, 0.8)
    half_width = length * rng.uniform(0.095, 0.13)
    span = rng.uniform(0.45, 1.35)
    phi_mid = rng.uniform(-np.pi, np.pi)
    radius = length / span

    # Place the arc so the whole banana (plus a small margin) is inside the frame.
    phis = phi_mid + np.linspace(-span / 2, span / 2, 16)
    xs, ys = radius * np.cos(phis), radius * np.sin(phis)
    pad = half_width + 0.02 * size
    cx_lo, cx_hi = pad - xs.min(), size - pad - xs.max()
    cy_lo, cy_hi = pad - ys.min(), size - pad - ys.max()
    cx = rng.uniform(cx_lo, cx_hi) if cx_hi > cx_lo else (cx_lo + cx_hi) / 2
    cy = rng.uniform(cy_lo, cy_hi) if cy_hi > cy_lo else (cy_lo + cy_hi) / 2

    # Ripeness hue: greenish-yellow .. golden; brightness of the fruit itself.
    ripeness = rng.uniform(-1.0, 1.0)
    body = np.array([38.0, 196.0 - 12.0 * ripeness, 228.0 + 10.0 * ripeness - 14.0 * max(-ripeness, 0.0)])
    body *= rng.uniform(0.9, 1.05)
    body[0] += rng.uniform(-12.0, 12.0)
    # Stem and tip are normally green-ish or brown-ish; both are good.
    green_stem = np.array([45.0, 150.0, 120.0])
    brown_stem = np.array([35.0, 75.0, 105.0])
    w = rng.uniform(0.0, 1.0)
    stem = (1 - w) * green_stem + w * brown_stem
    tip = np.array([28.0, 42.0, 55.0]) * rng.uniform(0.7, 1.4)

    belt_base = rng.uniform(48.0, 78.0)
    belt_tint = np.array([rng.uniform(1.0, 1.22), rng.uniform(0.98, 1.08), 1.0])
    temperature = rng.uniform(-0.09, 0.09)
    gain = rng.uniform(0.85, 1.15) * np.array([1.0 - temperature, 1.0, 1.0 + temperature])

    scene = _Params(
        size=size,
        length=float(length),
        half_width=float(half_width),
        span=float(span),
        phi_mid=float(phi_mid),
        centre=(float(cx), float(cy)),
        flip=bool(rng.integers(2)),
        neck_t=float(rng.uniform(0.08, 0.13)),
        neck_ratio=float(rng.uniform(0.22, 0.32)),
        body_bgr=_bgr(*body),
        stem_bgr=_bgr(*stem),
        tip_bgr=_bgr(*tip),
        tip_len=float(length * rng.uniform(0.02, 0.08)),
        end_green=float(rng.uniform(0.0, 0.7) if rng.random() < 0.5 else 0.0),
        light_x=float(rng.uniform(-0.45, 0.45)),
        gloss=(float(rng.uniform(10.0, 60.0)), float(rng.uniform(0.1, 0.22))),
        ridge=float(rng.uniform(0.03, 0.14)),
        belt_index=int(rng.integers(_BELT_VARIANTS)),
        belt_offset=(int(rng.integers(size // 2)), int(rng.integers(size // 2))),
        belt_bgr=_bgr(*(belt_base * belt_tint)),
        gain=_bgr(*gain),
        gradient=(float(rng.uniform(0.0, 0.12)), float(rng.uniform(-np.pi, np.pi))),
        noise_offset=(int(rng.integers(size)), int(rng.integers(size))),
        noise_sigma=float(rng.uniform(1.0, 3.0)),
        blur_sigma=float(rng.uniform(0.5, 0.9) if rng.random() < 0.25 else 0.0),
        shadow=(float(rng.uniform(0.2, 0.4)), float(rng.uniform(-1, 1)), float(rng.uniform(0, 1))),
        defect=defect,
        defect_draws={},
    )
    # The defect is drawn last, so the same generator state with defect=None renders the same scene without
    # it: good/defective pairs for tests and for judging a detector's localisation.
    return replace(scene, defect_draws=_draw_defect(rng, defect))


def _draw_defect(rng: np.random.Generator, defect: str | None) -> dict:
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


# ---------------------------------------------------------------------------------------------------------
# Cached textures: belt backgrounds, a camera-noise bank and coordinate grids, per image size
#
# Images are built channel-planar, (3, H, W) float32: numpy broadcasts a per-channel colour over leading
# planes far faster than over a trailing axis of 3, and cv2.merge makes the BGR image at the end.


@functools.lru_cache(maxsize=8)
def _belt_bank(size: int) -> np.ndarray:
    """A few smooth belt textures (grey-level offsets), 1.5x the frame so scenes can crop them."""
    rng = np.random.default_rng(12345)
    big = size + size // 2
    k = size / 256.0
    y = np.arange(big, dtype=np.float32)[:, None]
    bank = np.empty((_BELT_VARIANTS, big, big), np.float32)
    for i in range(_BELT_VARIANTS):
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
def _noise_bank(size: int) -> np.ndarray:
    """Unit Gaussian camera noise, (3, 2H, 2W); cropping it is much cheaper than drawing per frame."""
    rng = np.random.default_rng(54321)
    return rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y coordinates, (H, W) float32 each."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


# ---------------------------------------------------------------------------------------------------------
# Rasterising


def _bgr(*values: float) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 plane-broadcastable array."""
    return np.asarray(values, np.float32).reshape(3, 1, 1)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    z = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return z * z * (3.0 - 2.0 * z)


def _half_width(p: _Params, t: np.ndarray) -> np.ndarray:
    """Half-width (px) along the banana: a stalk of near-constant width, then a rounded, tapered body."""
    tb = np.clip((t - np.float32(p.neck_t)) * np.float32(1.0 / (1.0 - p.neck_t)), 0.0, 1.0)
    body = np.float32(p.half_width) * (4.0 * tb * (1.0 - tb)) ** 0.55
    neck = np.float32(p.neck_ratio * p.half_width) * (1.0 - _smoothstep(p.neck_t, p.neck_t + 0.12, t))
    return np.sqrt(body * body + neck * neck)


@dataclass
class _Field:
    """Banana coordinates over the banana's bounding box in the frame."""

    x0: int
    y0: int
    t: np.ndarray  # (h, w) position along the banana, 0 = stalk end, 1 = blossom tip
    u: np.ndarray  # (h, w) arc length from the stalk end, px
    v: np.ndarray  # (h, w) signed offset from the centre line, px
    h: np.ndarray  # (h, w) half-width at t, px


def _banana_field(p: _Params) -> _Field:
    size = p.size
    radius = p.length / p.span
    cx, cy = p.centre
    phis = p.phi_mid + np.linspace(-p.span / 2, p.span / 2, 16)
    pad = p.half_width + 3
    xs, ys = cx + radius * np.cos(phis), cy + radius * np.sin(phis)
    x0, x1 = max(int(xs.min() - pad), 0), min(int(xs.max() + pad) + 1, size)
    y0, y1 = max(int(ys.min() - pad), 0), min(int(ys.max() + pad) + 1, size)
    gx, gy = _grids(size)
    dx = gx[y0:y1, x0:x1] - np.float32(cx)
    dy = gy[y0:y1, x0:x1] - np.float32(cy)
    r = np.sqrt(dx * dx + dy * dy)
    dphi = np.arctan2(dy, dx) - np.float32(p.phi_mid)
    dphi = (dphi + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
    t = dphi * np.float32(1.0 / p.span) + np.float32(0.5)
    if p.flip:
        t = np.float32(1.0) - t
    v = r - np.float32(radius)
    return _Field(x0, y0, t, t * np.float32(p.length), v, _half_width(p, t))


def _to_box_xy(p: _Params, f: _Field, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Banana coordinates (t, v px) to pixel coordinates inside the field's box."""
    a = 1.0 - t if p.flip else t
    phi = p.phi_mid + (a - 0.5) * p.span
    rr = p.length / p.span + v
    return p.centre[0] + rr * np.cos(phi) - f.x0, p.centre[1] + rr * np.sin(phi) - f.y0


def _rasterise(p: _Params) -> Scene:
    size = p.size
    k = size / 256.0  # pixel sizes in the draws are given at 256 px
    f = _banana_field(p)
    d = p.defect_draws

    # Rot shrivels the fruit, so it changes the outline before anything is drawn.
    h = f.h
    rot = wrinkle = None
    if p.defect == "rotten":
        rot, wrinkle = _rot_weight(p, f, d, k)
        h = h * (1.0 - rot * np.float32(d["shrink"]) * (1.0 + 0.3 * wrinkle))

    alpha = np.clip(h - np.abs(f.v) + 0.5, 0.0, 1.0)
    alpha *= np.clip(f.u + 0.5, 0.0, 1.0) * np.clip(np.float32(p.length) - f.u + 0.5, 0.0, 1.0)
    s = np.clip(f.v / np.maximum(h, np.float32(1e-3)), -1.0, 1.0)
    across = np.sqrt(1.0 - s * s)  # surface normal's z: 1 on the centre line, 0 at the edge

    # Base colour along the fruit: stalk, body (greener towards the ends on some fruit), dark blossom tip.
    stem_w = 1.0 - _smoothstep(p.neck_t - 0.02, p.neck_t + 0.06, f.t)
    tip_w = _smoothstep(p.length - p.tip_len - 2.0 * k, p.length - p.tip_len + 2.0 * k, f.u)
    green = np.float32(p.end_green) * (1.0 - _smoothstep(0.0, 0.3, np.minimum(f.t, 1.0 - f.t)))
    colour = p.body_bgr + green * _bgr(5.0, 10.0, -70.0)
    colour += stem_w * (p.stem_bgr - colour)
    colour += tip_w * (p.tip_bgr - colour)

    # 3-D look: diffuse shading across the width, faint ridges, a soft highlight.
    lx = p.light_x
    diffuse = np.maximum(s * np.float32(lx) + across * np.float32(np.sqrt(1 - lx * lx)), 0.0)
    ridge = 1.0 - np.float32(p.ridge) * np.exp(-(((np.abs(s) - 0.5) * np.float32(1 / 0.07)) ** 2))
    colour *= (0.45 + 0.6 * diffuse) * ridge
    gloss, gloss_w = p.gloss
    highlight = np.exp(-(((s - np.float32(0.5 * lx)) * np.float32(1 / gloss_w)) ** 2))
    colour += np.float32(gloss) * highlight * (1.0 - tip_w) * (1.0 - stem_w)

    weight = None
    if rot is not None and wrinkle is not None:
        weight = rot
        _paint_rot(f, s, across, colour, d, k, rot, wrinkle)
    elif p.defect is not None:
        weight = _DEFECT_PAINTERS[p.defect](p, f, s, across, colour, d, k)

    # Belt background, cropped from a cached texture.
    oy, ox = p.belt_offset
    img = p.belt_bgr + _belt_bank(size)[p.belt_index, oy : oy + size, ox : ox + size]
    box = img[:, f.y0 : f.y0 + alpha.shape[0], f.x0 : f.x0 + alpha.shape[1]]

    # Soft contact shadow: the banana's silhouette, shifted and blurred.
    strength, sdx, sdy = p.shadow
    shift = np.float32([[1, 0, sdx * 4 * k], [0, 1, 2 * k + sdy * 3 * k]])
    sh = cv2.warpAffine(alpha, shift, (alpha.shape[1], alpha.shape[0]))
    sh = cv2.GaussianBlur(sh, (0, 0), 3.0 * k + 0.5)
    box *= 1.0 - np.float32(strength) * sh
    box += alpha * (colour - box)

    # Lighting: overall gain and colour temperature, plus a gentle linear fall-off across the frame.
    amp, ang = p.gradient
    gx, gy = _grids(size)
    cos_a, sin_a = np.float32(amp * np.cos(ang) / size), np.float32(amp * np.sin(ang) / size)
    ramp = (gx - np.float32(size / 2)) * cos_a + (gy - np.float32(size / 2)) * sin_a + 1.0
    img *= ramp * p.gain

    if p.blur_sigma > 0:
        for c in range(3):
            img[c] = cv2.GaussianBlur(img[c], (0, 0), p.blur_sigma * max(k, 0.5))
    ny, nx = p.noise_offset
    img += np.float32(p.noise_sigma) * _noise_bank(size)[:, ny : ny + size, nx : nx + size]
    img += 0.5  # round, not truncate, below
    np.clip(img, 0, 255, out=img)
    image = cv2.merge([plane.astype(np.uint8) for plane in img])

    mask = np.zeros((size, size), np.uint8)
    if weight is not None:
        on = (weight > 0.5) & (alpha > 0.5)
        mask[f.y0 : f.y0 + alpha.shape[0], f.x0 : f.x0 + alpha.shape[1]][on] = 255
    return Scene(image=image, mask=mask, defect=p.defect)


# ---------------------------------------------------------------------------------------------------------
# Defects: each painter recolours `colour` (3, h, w) in place and returns the defect weight (h, w); the
# mask is where the weight is over one half on the banana.


def _local_uv(p: _Params, f: _Field, t0: float, s0: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (px) from a point given in banana coordinates, along and across the fruit."""
    h0 = float(_half_width(p, np.float32(t0)))
    return f.u - np.float32(t0 * p.length), f.v - np.float32(s0 * h0)


def _rot_weight(p: _Params, f: _Field, d: dict, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the fruit is rotten (0..1) and a wrinkle pattern (-1..1) for the shrivelled skin."""
    jag = 0.03 * np.sin(f.v * np.float32(3.0 / p.half_width) + np.float32(d["phase"][0]))
    soft = 0.035
    rot = np.ones_like(f.t)
    if d["start"] > 0:
        rot = _smoothstep(-soft, soft, f.t - np.float32(d["start"]) + jag)
    if d["stop"] < 1:
        rot = rot * (1.0 - _smoothstep(-soft, soft, f.t - np.float32(d["stop"]) + jag))
    period = d["wrinkle_period"] * k
    # Two incommensurate waves and a slant across the fruit, so the folds do not look machined.
    slant = f.v * np.float32(0.15 / k) + np.float32(d["phase"][2])
    wrinkle = 0.6 * np.sin(f.u * np.float32(2 * np.pi / period) + slant)
    wrinkle += 0.4 * np.sin(f.u * np.float32(2 * np.pi / (1.73 * period)) - 0.7 * slant)
    return rot, wrinkle


def _paint_rot(
    f: _Field,
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
    brown, black = _bgr(30.0, 64.0, 112.0), _bgr(18.0, 24.0, 34.0)
    rotten = (brown + mix * (black - brown)) * ((0.94 + 0.06 * wrinkle) * (0.6 + 0.5 * across))
    colour += rot * (rotten - colour)


def _paint_spots(
    p: _Params, f: _Field, s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    weight = np.zeros_like(f.u)
    for t0, s0, r0 in zip(d["t"], d["s"], d["r"]):
        du, dv = _local_uv(p, f, t0, s0)
        r = r0 * p.length * p.defect_scale
        dist = np.sqrt(du * du + dv * dv)
        weight = np.maximum(weight, 1.0 - _smoothstep(0.75 * r, 1.25 * r, dist))
    # Darker core, warmer rim, shaded with the fruit.
    spot = _bgr(*d["colour"]) * ((1.0 - 0.25 * weight) * (0.5 + 0.55 * across))
    colour += weight * (spot - colour)
    return weight


def _paint_bruise(
    p: _Params, f: _Field, s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    du, dv = _local_uv(p, f, d["t"], d["s"])
    c, sn = np.float32(np.cos(d["angle"])), np.float32(np.sin(d["angle"]))
    a = np.float32(1.0 / (d["a"] * p.half_width * p.defect_scale))
    b = np.float32(1.0 / (d["b"] * p.half_width * p.defect_scale))
    q = ((du * c + dv * sn) * a) ** 2 + ((dv * c - du * sn) * b) ** 2
    weight = np.exp(-1.4 * q * q)  # flat centre, soft edge
    # Darker, and pulled from yellow towards a brownish grey.
    bruised = colour * (_bgr(0.78, 0.62, 0.6) * np.float32(1.0 - d["dark"])) + _bgr(18.0, 22.0, 26.0)
    colour += weight * (bruised - colour)
    return weight


def _paint_mould(
    p: _Params, f: _Field, s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
) -> np.ndarray:
    du, dv = _local_uv(p, f, d["t"], d["s"])
    ang = np.arctan2(dv, du)
    edge = np.ones_like(du)
    for n, (ca, cb) in enumerate(d["harmonics"], start=2):
        edge += np.float32(0.22 / n**0.5) * (np.float32(ca) * np.cos(n * ang) + np.float32(cb) * np.sin(n * ang))
    # Fuzz: fine grain from the noise bank, lightly blurred, roughens both the edge and the surface.
    fuzz = cv2.GaussianBlur(_noise_bank(p.size)[0, : du.shape[0], : du.shape[1]], (0, 0), 0.8)
    r = np.float32(d["r"] * p.half_width * p.defect_scale) * edge + np.float32(1.5 * k) * fuzz
    dist = np.sqrt(du * du + dv * dv)
    weight = 1.0 - _smoothstep(0.0, 1.0, (dist - 0.7 * r) / (0.4 * r))
    mould = _bgr(*d["colour"]) * ((0.85 + 0.08 * fuzz) * (0.7 + 0.35 * across))
    colour += weight * (mould - colour)
    return weight


def _paint_cut(
    p: _Params, f: _Field, s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
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
    flesh = 1.0 - _smoothstep(-0.7, 0.7, dist - edge_w)
    core = 1.0 - _smoothstep(-0.7, 0.7, dist - core_w)
    colour += flesh * (_bgr(165.0, 222.0, 238.0) - colour)
    colour += core * (_bgr(22.0, 30.0, 42.0) - colour)
    return flesh


def _paint_speckle(
    p: _Params, f: _Field, s: np.ndarray, across: np.ndarray, colour: np.ndarray, d: dict, k: float
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
    xs, ys = _to_box_xy(p, f, dots_t, dots_s * _half_width(p, dots_t) * 0.95)
    layer = np.zeros(f.u.shape, np.uint8)
    for x, y, r in zip(xs, ys, dots_r):
        # Centre and radius in 1/16 px (shift=4) for sub-pixel dots.
        cv2.circle(layer, (int(x * 16), int(y * 16)), max(int(r * k * 16), 8), 255, -1, cv2.LINE_AA, 4)
    # A touch of blur rounds the tiny polygons cv2 draws.
    weight = cv2.GaussianBlur(layer.astype(np.float32), (0, 0), 0.5) * np.float32(1 / 255)
    # The region also warms a little, as overripe skin does.
    region = 1.0 - _smoothstep(0.7, 1.0, np.abs(f.t - np.float32(t0)) * np.float32(1 / ext))
    colour *= 1.0 - region * _bgr(0.15, 0.09, 0.045)
    colour += weight * (_bgr(*d["colour"]) - colour)
    return weight


_DEFECT_PAINTERS = {
    "brown_spots": _paint_spots,
    "bruise": _paint_bruise,
    "mould": _paint_mould,
    "cut": _paint_cut,
    "overripe_speckle": _paint_speckle,
}
