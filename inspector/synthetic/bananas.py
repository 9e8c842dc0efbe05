"""Synthetic banana-on-a-belt scenes with labelled defects, and a PNG data set writer (numpy + cv2 only)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from inspector.synthetic.defects import DEFECT_PAINTERS, draw_defect, paint_rot, rot_weight
from inspector.synthetic.scene import (
    BELT_VARIANTS,
    SceneParams,
    banana_field,
    belt_bank,
    bgr_plane,
    noise_bank,
    pixel_grids,
    smoothstep,
)

DEFECT_KINDS: tuple[str, ...] = ("brown_spots", "bruise", "mould", "cut", "overripe_speckle", "rotten")

# A defect must cover at least this fraction of the image, so it survives downscaling to 128 px.
MIN_DEFECT_AREA_FRACTION = 0.005

_SPLIT_IDS = {"train": 0, "test": 1, "calibration": 2}
_MAX_GROW_STEPS = 6


@dataclass(frozen=True)
class Scene:
    """One rendered frame: BGR image, defect mask (255 = defect), the defect kind (None = good) and the fruit's
    silhouette (255 = banana)."""

    image: np.ndarray  # (H, W, 3) uint8, BGR
    mask: np.ndarray  # (H, W) uint8, 0 or 255
    defect: str | None
    fruit: np.ndarray  # (H, W) uint8, 0 or 255


def render_scene(rng: np.random.Generator, size: int = 256, defect: str | None = None) -> Scene:
    """Render one banana on the belt; `defect` is None (good) or one of DEFECT_KINDS."""
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect {defect!r}; use None or one of {DEFECT_KINDS}")
    if size < 32:
        raise ValueError(f"size {size} is too small to draw a banana; use 32 px or more")
    return grow_defect(draw_params(rng, size, defect))[1]


def grow_defect(params: SceneParams) -> tuple[SceneParams, Scene]:
    """The params with their defect grown until it is large enough to see, and the scene they render."""
    scene = rasterise(params)
    # Rare draws (a defect mostly off the banana) are grown until the defect is large enough to see.
    min_area = MIN_DEFECT_AREA_FRACTION * params.size * params.size
    for _ in range(_MAX_GROW_STEPS):
        if params.defect is None or np.count_nonzero(scene.mask) >= min_area:
            break
        params = replace(params, defect_scale=params.defect_scale * 1.25)
        scene = rasterise(params)
    return params, scene


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


# ---- random draws -------------------------------------------------------------------------------------------


def draw_params(rng: np.random.Generator, size: int, defect: str | None) -> SceneParams:
    """Every random draw of one scene: a whole banana at a random place and orientation, and its defect."""
    length = size * rng.uniform(0.5, 0.8)
    half_width = length * rng.uniform(0.095, 0.13)
    span = rng.uniform(0.45, 1.35)
    phi_mid = rng.uniform(-np.pi, np.pi)
    radius = length / span

    # Place the arc so the whole banana (plus a small margin) is inside the frame.
    (cx_lo, cx_hi), (cy_lo, cy_hi) = _centre_limits(size, radius, half_width, span, phi_mid)
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

    scene = SceneParams(
        size=size,
        length=float(length),
        half_width=float(half_width),
        span=float(span),
        phi_mid=float(phi_mid),
        centre=(float(cx), float(cy)),
        flip=bool(rng.integers(2)),
        neck_t=float(rng.uniform(0.08, 0.13)),
        neck_ratio=float(rng.uniform(0.22, 0.32)),
        body_bgr=bgr_plane(*body),
        stem_bgr=bgr_plane(*stem),
        tip_bgr=bgr_plane(*tip),
        tip_len=float(length * rng.uniform(0.02, 0.08)),
        end_green=float(rng.uniform(0.0, 0.7) if rng.random() < 0.5 else 0.0),
        light_x=float(rng.uniform(-0.45, 0.45)),
        gloss=(float(rng.uniform(10.0, 60.0)), float(rng.uniform(0.1, 0.22))),
        ridge=float(rng.uniform(0.03, 0.14)),
        belt_index=int(rng.integers(BELT_VARIANTS)),
        belt_offset=(int(rng.integers(size // 2)), int(rng.integers(size // 2))),
        belt_bgr=bgr_plane(*(belt_base * belt_tint)),
        gain=bgr_plane(*gain),
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
    return replace(scene, defect_draws=draw_defect(rng, defect))


def centre_limits(p: SceneParams) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the banana's arc centre (`p.centre`) may lie so the whole banana, plus a small margin, is in the
    frame -> ((x low, x high), (y low, y high)), in pixel-centre coordinates; low > high when it cannot fit."""
    return _centre_limits(p.size, p.length / p.span, p.half_width, p.span, p.phi_mid)


def _centre_limits(size: int, radius: float, half_width: float, span: float,
                   phi_mid: float) -> tuple[tuple[float, float], tuple[float, float]]:
    phis = phi_mid + np.linspace(-span / 2, span / 2, 16)
    xs, ys = radius * np.cos(phis), radius * np.sin(phis)
    pad = half_width + 0.02 * size
    return (pad - xs.min(), size - pad - xs.max()), (pad - ys.min(), size - pad - ys.max())


# ---- rasterising (inspector/synthetic/scene.py has the pieces, inspector/synthetic/defects.py the defects) ------


def rasterise(p: SceneParams) -> Scene:
    """The scene that `p` describes (deterministic: no random draws here)."""
    size = p.size
    k = size / 256.0  # pixel sizes in the draws are given at 256 px
    f = banana_field(p)
    d = p.defect_draws

    # Rot shrivels the fruit, so it changes the outline before anything is drawn.
    h = f.h
    rot = wrinkle = None
    if p.defect == "rotten":
        rot, wrinkle = rot_weight(p, f, d, k)
        h = h * (1.0 - rot * np.float32(d["shrink"]) * (1.0 + 0.3 * wrinkle))

    alpha = np.clip(h - np.abs(f.v) + 0.5, 0.0, 1.0)
    alpha *= np.clip(f.u + 0.5, 0.0, 1.0) * np.clip(np.float32(p.length) - f.u + 0.5, 0.0, 1.0)
    s = np.clip(f.v / np.maximum(h, np.float32(1e-3)), -1.0, 1.0)
    across = np.sqrt(1.0 - s * s)  # surface normal's z: 1 on the centre line, 0 at the edge

    # Base colour along the fruit: stalk, body (greener towards the ends on some fruit), dark blossom tip.
    stem_w = 1.0 - smoothstep(p.neck_t - 0.02, p.neck_t + 0.06, f.t)
    tip_w = smoothstep(p.length - p.tip_len - 2.0 * k, p.length - p.tip_len + 2.0 * k, f.u)
    green = np.float32(p.end_green) * (1.0 - smoothstep(0.0, 0.3, np.minimum(f.t, 1.0 - f.t)))
    colour = p.body_bgr + green * bgr_plane(5.0, 10.0, -70.0)
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
        paint_rot(f, s, across, colour, d, k, rot, wrinkle)
    elif p.defect is not None:
        weight = DEFECT_PAINTERS[p.defect](p, f, s, across, colour, d, k)

    # Belt background, cropped from a cached texture.
    oy, ox = p.belt_offset
    img = p.belt_bgr + belt_bank(size)[p.belt_index, oy : oy + size, ox : ox + size]
    box = img[:, f.y0 : f.y0 + alpha.shape[0], f.x0 : f.x0 + alpha.shape[1]]

    # Soft contact shadow: the banana's silhouette, shifted and blurred.
    strength, sdx, sdy = p.shadow
    shift = np.array([[1, 0, sdx * 4 * k], [0, 1, 2 * k + sdy * 3 * k]], np.float32)
    sh = cv2.warpAffine(alpha, shift, (alpha.shape[1], alpha.shape[0]))
    sh = cv2.GaussianBlur(sh, (0, 0), 3.0 * k + 0.5)
    box *= 1.0 - np.float32(strength) * sh
    box += alpha * (colour - box)

    # Lighting: overall gain and colour temperature, plus a gentle linear fall-off across the frame.
    amp, ang = p.gradient
    gx, gy = pixel_grids(size)
    cos_a, sin_a = np.float32(amp * np.cos(ang) / size), np.float32(amp * np.sin(ang) / size)
    ramp = (gx - np.float32(size / 2)) * cos_a + (gy - np.float32(size / 2)) * sin_a + 1.0
    img *= ramp * p.gain

    if p.blur_sigma > 0:
        for c in range(3):
            img[c] = cv2.GaussianBlur(img[c], (0, 0), p.blur_sigma * max(k, 0.5))
    ny, nx = p.noise_offset
    img += np.float32(p.noise_sigma) * noise_bank(size)[:, ny : ny + size, nx : nx + size]
    img += 0.5  # round, not truncate, below
    np.clip(img, 0, 255, out=img)
    image = cv2.merge([plane.astype(np.uint8) for plane in img])

    mask = np.zeros((size, size), np.uint8)
    fruit = np.zeros((size, size), np.uint8)
    fruit[f.y0 : f.y0 + alpha.shape[0], f.x0 : f.x0 + alpha.shape[1]][alpha > 0.5] = 255
    if weight is not None:
        on = (weight > 0.5) & (alpha > 0.5)
        mask[f.y0 : f.y0 + alpha.shape[0], f.x0 : f.x0 + alpha.shape[1]][on] = 255
    return Scene(image=image, mask=mask, defect=p.defect, fruit=fruit)
