"""Synthetic anomalies cut from the training images themselves (DRAEM-style): masks, fills and the blend. Pure torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOURCES = ("patch", "flat", "noise")
_NOISE_GRAINS = (1, 2, 4, 8, 16)  # pixels per noise sample: from fine grain to smooth blotches


@dataclass(frozen=True)
class AnomalySynthConfig:
    """How synthetic anomalies are drawn; every field has a default that suits 128-512 px produce photos."""

    probability: float = 0.5  # share of images in a batch that get an anomaly (the rest stay clean, empty mask)
    min_opacity: float = 0.15  # blend factor beta ~ U(min_opacity, max_opacity), one per image
    max_opacity: float = 1.0
    perlin_scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6)  # log2 of Perlin grid cell counts, drawn per axis, DRAEM-like
    perlin_threshold: float = 0.5  # noise (about [-1, 1]) above this is anomalous
    perlin_rotate_probability: float = 0.5  # share of Perlin masks rotated by U(-90, 90) degrees
    shape_share: float = 1 / 3  # share of masks that are one compact irregular blob instead of Perlin
    shape_min_area: float = 0.002  # blob area as a share of the image, drawn log-uniform between these two
    shape_max_area: float = 0.08
    min_coverage: float = 0.001  # masks covering less than this share of pixels are redrawn
    max_coverage: float = 0.5  # masks covering more are redrawn, so most of every image stays normal
    max_attempts: int = 6  # redraws before a rectangle of in-bounds area replaces the mask
    mask_downsample: int = 2  # mask fields are computed at 1/n size and upsampled bilinearly: n^2 cheaper, smooth
    sources: tuple[str, ...] = SOURCES  # what fills the mask: another image recoloured, a flat colour, noise

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.probability <= 1.0:
            problems.append(f"probability={self.probability} must be in [0, 1]")
        if not 0.0 <= self.min_opacity <= self.max_opacity <= 1.0:
            problems.append(f"opacity [{self.min_opacity}, {self.max_opacity}] must satisfy 0 <= min <= max <= 1")
        if not self.perlin_scales or min(self.perlin_scales) < 0:
            problems.append(f"perlin_scales={self.perlin_scales} must be non-empty and >= 0")
        if not 0.0 <= self.min_coverage < self.max_coverage <= 1.0:
            problems.append(f"coverage [{self.min_coverage}, {self.max_coverage}] must satisfy 0 <= min < max <= 1")
        if not 0.0 < self.shape_min_area <= self.shape_max_area <= 1.0:
            problems.append(f"shape area [{self.shape_min_area}, {self.shape_max_area}] must satisfy 0 < min <= max")
        unknown = [s for s in self.sources if s not in SOURCES]
        if not self.sources or unknown:
            problems.append(f"sources={self.sources} must be a non-empty subset of {SOURCES}")
        if self.mask_downsample < 1:
            problems.append(f"mask_downsample={self.mask_downsample} must be >= 1")
        if self.max_attempts < 1:
            problems.append(f"max_attempts={self.max_attempts} must be >= 1")
        if problems:
            raise ValueError("AnomalySynthConfig: " + "; ".join(problems))


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def _grid(size: int, samples: int, device: torch.device) -> torch.Tensor:
    """Pixel-centre coordinates of `samples` points spread over `size` pixels, as bilinear upsampling expects."""
    return torch.arange(samples, device=device, dtype=torch.float32).add_(0.5).mul_(size / samples)


def _perlin(
    h: int,
    w: int,
    samples: tuple[int, int],
    res_y: torch.Tensor,
    res_x: torch.Tensor,
    angle: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """2-D Perlin noise over H x W pixels with res_y x res_x cells, rotated by angle; one image per entry (n,).

    Sampled on a samples = (rows, cols) grid; returns (n, rows, cols) in about [-1, 1].
    """
    n = res_y.numel()
    if n == 0:
        return torch.empty(0, *samples, device=device)
    cell_y, cell_x = res_y.double() / h, res_x.double() / w  # cells per pixel, (n,)
    cos, sin = angle.double().cos(), angle.double().sin()
    # the rotated image spans +-reach cells about its centre; a lattice that covers it needs no wrap-around
    reach_y = (cos.abs() * h / 2 + sin.abs() * w / 2) * cell_y
    reach_x = (sin.abs() * h / 2 + cos.abs() * w / 2) * cell_x
    offset = torch.rand(n, 2, generator=generator, device=generator.device).double().cpu()  # lattice phase, cells
    low_y, low_x = (offset[:, 0] - reach_y).floor(), (offset[:, 1] - reach_x).floor()
    rows = int((offset[:, 0] + reach_y - low_y).ceil().max()) + 2
    cols = int((offset[:, 1] + reach_x - low_x).ceil().max()) + 2
    theta = _uniform((n * rows * cols,), 0.0, 2 * math.pi, generator).to(device)
    grad = torch.polar(torch.ones_like(theta), theta)  # unit gradients, (n * rows * cols,) complex: real = y part
    start = torch.arange(n, dtype=torch.float64) * (rows * cols) - low_y * cols - low_x  # index of cell (0, 0)

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, torch.float32).view(n, 1, 1)

    ys = _grid(h, samples[0], device).sub_(h / 2).view(1, -1, 1)
    xs = _grid(w, samples[1], device).sub_(w / 2).view(1, 1, -1)
    u = per_image(cos * cell_y) * ys + (per_image(-sin * cell_y) * xs + per_image(offset[:, 0]))  # (n, rows, cols)
    v = per_image(sin * cell_x) * ys + (per_image(cos * cell_x) * xs + per_image(offset[:, 1]))
    u0, v0 = u.floor(), v.floor()
    fu, fv = u.sub_(u0), v.sub_(v0)
    # float32 holds these integer indices exactly (below 2**24); int32 gathers are several times faster than int64
    i00 = torch.add(v0, u0, alpha=cols).add_(per_image(start)).int().flatten()

    def corner(idx: torch.Tensor, du: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        g = grad.index_select(0, idx).view(du.shape)
        return g.real * du + g.imag * dv

    fu1, fv1 = fu - 1, fv - 1
    n00, n01 = corner(i00, fu, fv), corner(i00 + 1, fu, fv1)
    n10, n11 = corner(i00 + cols, fu1, fv), corner(i00 + (cols + 1), fu1, fv1)
    tu = fu * fu * fu * (fu * (fu * 6 - 15) + 10)  # quintic fade
    tv = fv * fv * fv * (fv * (fv * 6 - 15) + 10)
    return torch.lerp(torch.lerp(n00, n01, tv), torch.lerp(n10, n11, tv), tu).mul_(math.sqrt(2))


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Perlin noise of size shape (H, W) with res (cells along H, cells along W); (H, W) in about [-1, 1]."""
    h, w = shape
    one = torch.ones(1, dtype=torch.long)
    return _perlin(h, w, (h, w), one * res[0], one * res[1], torch.zeros(1), generator, generator.device)[0]


def _perlin_fields(n: int, h: int, w: int, samples: tuple[int, int], config: AnomalySynthConfig,
                   generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Perlin noise minus the threshold (anomalous where > 0), (n, rows, cols)."""
    scales = torch.tensor(config.perlin_scales, dtype=torch.long)
    pick = torch.randint(len(scales), (2, n), generator=generator, device=generator.device)
    res = 2 ** scales[pick.cpu()]  # (2, n): cells along H and along W, drawn independently like DRAEM
    rotate = torch.rand(n, generator=generator, device=generator.device) < config.perlin_rotate_probability
    angle = _uniform((n,), -math.pi / 2, math.pi / 2, generator) * rotate
    return _perlin(h, w, samples, res[0], res[1], angle, generator, device).sub_(config.perlin_threshold)


def _blob_fields(n: int, h: int, w: int, samples: tuple[int, int], config: AnomalySynthConfig,
                 generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One irregular blob per image: an ellipse whose radius wobbles with a few low harmonics.

    Returns radius minus distance (inside where > 0), (n, rows, cols).
    """
    g = generator
    if n == 0:
        return torch.empty(0, *samples, device=device)
    centre = torch.rand(n, 2, generator=g, device=g.device) * torch.tensor([h, w], device=g.device)
    area = _uniform((n,), math.log(config.shape_min_area), math.log(config.shape_max_area), g).exp() * (h * w)
    aspect = _uniform((n,), -math.log(3), math.log(3), g).exp()
    angle = _uniform((n,), 0.0, math.pi, g)
    ks = torch.arange(2, 6, device=g.device)  # harmonics 2..5; amplitude 0.6/k keeps the radius above 0.2
    amp = torch.rand(n, len(ks), generator=g, device=g.device) * (0.6 / ks)
    phase = _uniform((n, len(ks)), 0.0, 2 * math.pi, g)
    centre, area, aspect, angle = centre.to(device), area.to(device), aspect.to(device), angle.to(device)
    amp_c, amp_s = (amp * phase.cos()).to(device), (amp * phase.sin()).to(device)
    semi_a = (area / math.pi * aspect).sqrt().view(n, 1, 1)
    semi_b = (area / math.pi / aspect).sqrt().view(n, 1, 1)
    dy = _grid(h, samples[0], device).view(1, -1, 1) - centre[:, 0].view(n, 1, 1)
    dx = _grid(w, samples[1], device).view(1, 1, -1) - centre[:, 1].view(n, 1, 1)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    p = (cos * dy + sin * dx) / semi_a  # (n, rows, cols), in units of the semi-axes
    q = (cos * dx - sin * dy) / semi_b
    rho = (p * p + q * q).sqrt()
    c1 = p / rho.clamp_min(1e-6)
    s1 = q / rho.clamp_min(1e-6)
    radius = torch.ones_like(rho)
    ck, sk = c1, s1
    for i in range(len(ks)):  # cos/sin of k*phi by the angle-addition recurrence, no trig per pixel
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        radius += amp_c[:, i].view(n, 1, 1) * ck - amp_s[:, i].view(n, 1, 1) * sk
    return radius.sub_(rho)


def _rectangle_masks(n: int, h: int, w: int, config: AnomalySynthConfig, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """Last resort: a rectangle whose area lies between the coverage bounds, at a random place; (n, H, W) bool."""
    low, high = max(1, math.ceil(config.min_coverage * h * w)), max(1, math.floor(config.max_coverage * h * w))
    target = math.sqrt(low * max(low, high))
    side_y = min(h, max(1, round(math.sqrt(target * h / w))))
    side_x = min(w, max(1, round(target / side_y)))
    top = torch.randint(h - side_y + 1, (n,), generator=generator, device=generator.device).to(device).view(n, 1, 1)
    left = torch.randint(w - side_x + 1, (n,), generator=generator, device=generator.device).to(device).view(n, 1, 1)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    return (ys >= top) & (ys < top + side_y) & (xs >= left) & (xs < left + side_x)


def anomaly_masks(n: int, h: int, w: int, config: AnomalySynthConfig, generator: torch.Generator,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """n anomaly masks (n, 1, H, W) float in {0, 1}, each covering [min_coverage, max_coverage] of the pixels.

    Perlin masks (thresholded, rotated or not) and, for shape_share of them, compact blobs. Randomness comes from
    generator (on its device); the per-pixel work runs on device (default: the generator's).
    """
    device = torch.device(device) if device is not None else generator.device
    masks = torch.zeros(n, 1, h, w, device=device)
    if n == 0:
        return masks
    step = max(1, min(config.mask_downsample, min(h, w) // 64))
    samples = (-(-h // step), -(-w // step))
    blob = (torch.rand(n, generator=generator, device=generator.device) < config.shape_share).cpu()
    pending = torch.arange(n)
    for attempt in range(config.max_attempts):
        kinds = blob[pending]
        n_blob = int(kinds.sum())
        fields = torch.cat([  # (k, rows, cols), > 0 inside: Perlin first, blobs after, then put in place
            _perlin_fields(len(pending) - n_blob, h, w, samples, config, generator, device),
            _blob_fields(n_blob, h, w, samples, config, generator, device),
        ])
        fields = fields.index_select(0, kinds.argsort(stable=True).argsort().to(device)).unsqueeze(1)
        if samples != (h, w):
            fields = F.interpolate(fields, size=(h, w), mode="bilinear", align_corners=False)
        fresh = (fields > 0).float()  # (k, 1, H, W)
        area = fresh.sum(dim=(1, 2, 3)).cpu()
        ok = (area >= max(1.0, config.min_coverage * h * w)) & (area <= config.max_coverage * h * w)
        if attempt == 0 and bool(ok.all()):
            return fresh
        masks.index_copy_(0, pending[ok].to(device), fresh[ok.to(device)])
        pending = pending[~ok]
        if len(pending) == 0:
            break
    if len(pending):
        masks[pending.to(device), 0] = _rectangle_masks(len(pending), h, w, config, generator, device).float()
    return masks


def _recolour_matrices(k: int, c: int, generator: torch.Generator) -> torch.Tensor:
    """(k, C, C) colour mixing: per-channel gain, and for RGB a hue rotation about the grey axis half the time."""
    gain = torch.diag_embed(_uniform((k, c), 0.8, 1.2, generator))
    if c != 3:
        return gain
    theta = _uniform((k,), -math.pi, math.pi, generator)
    theta = theta * (torch.rand(k, generator=generator, device=generator.device) < 0.5)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=generator.device)
    cos, sin = theta.cos().view(k, 1, 1), theta.sin().view(k, 1, 1)
    eye = torch.eye(3, device=generator.device)
    hue = cos * eye + (1 - cos) / 3 * torch.ones(3, 3, device=generator.device) + sin / math.sqrt(3) * cross
    return gain @ hue


def _patch_fills(clean: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each row, another batch member shifted, flipped/rotated by 90 degrees and recoloured; (k, C, H, W)."""
    b, c, h, w = clean.shape
    k, g, dev = len(rows), generator, clean.device
    roll = int(torch.randint(1, b, (1,), generator=g, device=g.device)) if b > 1 else 0
    donors = (rows + roll) % b  # the batch rolled by one random offset, so no image is its own donor
    flips = (torch.rand(k, 3, generator=g, device=g.device) < 0.5).to(dev)  # flip rows, flip cols, transpose
    shift_y = torch.randint(h, (k, 1), generator=g, device=g.device).to(dev)
    shift_x = torch.randint(w, (k, 1), generator=g, device=g.device).to(dev)
    mix = _recolour_matrices(k, c, g)  # (k, C, C)
    contrast = _uniform((k, 1, 1), 0.6, 1.4, g)
    brightness = _uniform((k, c, 1), -0.15, 0.15, g)
    # flips and shifts are separable: source pixel (src_row[y], src_col[x]); a transpose swaps the two roles
    src_row = torch.arange(h, device=dev).expand(k, h)
    src_row = (torch.where(flips[:, :1], h - 1 - src_row, src_row) + shift_y) % h  # (k, H)
    src_col = torch.arange(w, device=dev).expand(k, w)
    src_col = (torch.where(flips[:, 1:2], w - 1 - src_col, src_col) + shift_x) % w  # (k, W)
    transpose = flips[:, 2:3] & (h == w)  # the eight square symmetries need it; other sizes get four
    along_y = torch.where(transpose, src_row, src_row * w)  # offset contributed by output row y
    along_x = torch.where(transpose, src_col * w, src_col)  # ... and by output column x
    index = (along_y.view(k, h, 1) + along_x.view(k, 1, w)).view(k, 1, h * w).expand(k, c, h * w)
    src = clean.flatten(2).index_select(0, donors.to(dev)).gather(2, index)  # (k, C, H*W)
    # recolour in one pass: y = contrast * (M x - mean(M x)) + mean(M x) + brightness = A x + o
    mix = mix.to(dev, clean.dtype)
    contrast, brightness = contrast.to(dev, clean.dtype), brightness.to(dev, clean.dtype)
    mean = mix @ src.mean(dim=2, keepdim=True)  # (k, C, 1); src is the donor's pixels reordered, same mean
    offset = (1 - contrast) * mean + brightness
    return torch.baddbmm(offset, contrast * mix, src).clamp_(0, 1).view(k, c, h, w)


def _flat_fills(k: int, c: int, generator: torch.Generator) -> torch.Tensor:
    """A random colour per image, (k, C, 1, 1); blend broadcasts it."""
    return torch.rand(k, c, 1, 1, generator=generator, device=generator.device)


def _noise_fills(k: int, c: int, h: int, w: int, generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Uniform noise around a random colour, fine-grained or low-passed (bilinear upsampling); (k, C, H, W)."""
    g = generator
    grain = torch.randint(len(_NOISE_GRAINS), (k,), generator=g, device=g.device).cpu()
    base = torch.rand(k, c, 1, 1, generator=g, device=g.device)
    amplitude = _uniform((k, 1, 1, 1), 0.1, 0.5, g)
    mono = torch.rand(k, generator=g, device=g.device).cpu() < 0.5  # grey grain, or per-channel colour noise
    base, amplitude = (base - amplitude).to(device, dtype), (2 * amplitude).to(device, dtype)
    out = torch.empty(k, c, h, w, device=device, dtype=dtype)
    for i, size in enumerate(_NOISE_GRAINS):
        for grey in (False, True):
            at = ((grain == i) & (mono == grey)).nonzero().flatten()
            if len(at) == 0:
                continue
            shape = (len(at), 1 if grey else c, -(-h // size), -(-w // size))
            noise = torch.rand(shape, generator=g, device=g.device).to(device, dtype)
            if size > 1:
                noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
            at = at.to(device)
            out[at] = torch.addcmul(base[at], amplitude[at], noise)  # base +- amplitude
    return out.clamp_(0, 1)


def blend(clean: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(1 - beta*m) * x + beta*m * fill: x bitwise where m = 0, fill bitwise where beta*m = 1; beta (k,).

    clean (k, C, H, W), fill broadcastable to it, masks (k, 1, H, W). torch.lerp is exact at both ends and stays
    between x and fill, so inputs in [0, 1] give outputs in [0, 1].
    """
    return torch.lerp(clean, fill, masks * beta.view(-1, 1, 1, 1).to(masks))


def synthesize_anomalies(
    clean: torch.Tensor, config: AnomalySynthConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """clean (B, C, H, W) in [0, 1] -> (anomalous (B, C, H, W) in [0, 1], masks (B, 1, H, W) in {0, 1}).

    A probability share of the images get one anomaly; the rest come back unchanged with an all-zero mask.
    Randomness comes only from generator (same seed, same device -> identical output); pixel work runs on
    clean's device.
    """
    if clean.ndim != 4:
        raise ValueError(f"synthesize_anomalies expects a batch (B, C, H, W), got shape {tuple(clean.shape)}")
    b, c, h, w = clean.shape
    g, dev = generator, clean.device
    selected = (torch.rand(b, generator=g, device=g.device) < config.probability).nonzero().flatten().cpu()
    out = clean.clone()
    masks = torch.zeros(b, 1, h, w, device=dev, dtype=clean.dtype)
    k = len(selected)
    if k == 0:
        return out, masks
    sel_masks = anomaly_masks(k, h, w, config, g, device=dev).to(clean.dtype)  # (k, 1, H, W)
    masks.index_copy_(0, selected.to(dev), sel_masks)
    beta = _uniform((k,), config.min_opacity, config.max_opacity, g)
    source = torch.randint(len(config.sources), (k,), generator=g, device=g.device).cpu()
    for i, name in enumerate(config.sources):
        at = (source == i).nonzero().flatten()
        if len(at) == 0:
            continue
        rows = selected[at].to(dev)
        if name == "patch":
            fill = _patch_fills(clean, rows, g)
        elif name == "flat":
            fill = _flat_fills(len(at), c, g).to(dev, clean.dtype)
        else:
            fill = _noise_fills(len(at), c, h, w, g, dev, clean.dtype)
        out.index_copy_(0, rows, blend(clean.index_select(0, rows), fill, sel_masks[at.to(dev)], beta[at]))
    return out, masks
