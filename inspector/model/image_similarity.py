"""Per-pixel dissimilarity maps between an image and its reconstruction: intensity, structure and colour.

Every map takes two RGB batches (B, 3, H, W) in [0, 1] and returns a float32 map (B, H, W) that is >= 0 and
0 where the images agree; ERROR_MAPS names them and `combined_error_map` weighs several together. They are
pure torch and differentiable, so a training loss and the worker can share them, and they compute in float32
with autocast off, so a bf16 autocast region around the model cannot quantise the small differences a defect
makes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Concatenate, Literal, ParamSpec

import torch
import torch.nn.functional as F

ErrorMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_P = ParamSpec("_P")

SSIM_SIGMA = 1.5  # the Gaussian window of Wang et al. (2004)
SSIM_C1 = 0.01**2  # (K1 * L)^2 with L = 1, the range of [0, 1] images
SSIM_C2 = 0.03**2
GMS_C = 0.0026  # RIAD's / DRAEM's stabiliser for gradient magnitudes of [0, 1] images

# sRGB (linear) -> CIE XYZ under D65 (IEC 61966-2-1), and the D65 reference white.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_LAB_EPSILON = (6 / 29) ** 3  # below this, CIELAB's f(t) is linear instead of a cube root
_SQRT_EPS = 1e-12  # keeps the gradient of sqrt finite at 0


def _float32(
    fn: Callable[Concatenate[torch.Tensor, torch.Tensor, _P], torch.Tensor],
) -> Callable[Concatenate[torch.Tensor, torch.Tensor, _P], torch.Tensor]:
    """Run `fn(x, y, ...)` on float32 inputs with autocast off: conv2d and matmul would otherwise run in bf16."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, y: torch.Tensor, *args: _P.args, **kwargs: _P.kwargs) -> torch.Tensor:
        if x.dim() != 4 or x.shape != y.shape:
            raise ValueError(
                f"{fn.__name__} compares two batches of the same shape (B, C, H, W); got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x.float(), y.float(), *args, **kwargs)

    return wrapper


@functools.cache  # never evicted: a captured CUDA graph reads it at its address (inspector.model.cuda_graphs)
def _gaussian_taps(window: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(window,) normalised 1-D Gaussian; made outside inference mode so autograd can save it later."""
    with torch.inference_mode(False):
        taps = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
        k = torch.exp(-(taps**2) / (2 * sigma**2))
        return (k / k.sum()).to(device=device, dtype=dtype)


@functools.cache  # never evicted, as _gaussian_taps
def _rgb_to_normalised_xyz(device: torch.device) -> torch.Tensor:
    """(3, 3) linear sRGB -> (X/Xn, Y/Yn, Z/Zn), float32; made outside inference mode so autograd can save it."""
    with torch.inference_mode(False):
        m = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64) / torch.tensor(_D65_WHITE, dtype=torch.float64)[:, None]
        return m.to(device=device, dtype=torch.float32)


def _gaussian_blur(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel, reflect-padded: (N, C, H, W) -> (N, C, H, W)."""
    c = x.shape[1]
    k = _gaussian_taps(window, sigma, x.device, x.dtype)
    pad_lo, pad_hi = (window - 1) // 2, window // 2
    # Reflect needs pad < size; replicate covers the few-pixel images that cannot reflect.
    mode = "reflect" if min(x.shape[-2:]) > pad_hi else "replicate"
    x = F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi), mode=mode)
    # Depthwise convs run about twice as fast channels-last on CPU (oneDNN); the elementwise SSIM terms on
    # channel slices run faster contiguous again.
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return x.contiguous()


@_float32
def squared_error_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Channel-mean squared error (B, C, H, W) x2 -> (B, H, W)."""
    return (x - y).square().mean(dim=1)


@_float32
def abs_error_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Channel-mean absolute error (B, C, H, W) x2 -> (B, H, W)."""
    return (x - y).abs().mean(dim=1)


@_float32
def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7,
             kernel: Literal["gaussian", "uniform"] = "gaussian") -> torch.Tensor:
    """1 - SSIM per pixel in [0, 2], mean over channels: (B, C, H, W) x2 -> (B, H, W).

    The local statistics are weighed by a Gaussian window (sigma 1.5, reflect-padded; the error map) or a uniform
    one over the pixels inside the image (the image autoencoders' training loss, as they were trained)."""
    if window < 1:
        raise ValueError(f"ssim_map needs a window of at least 1 pixel; got window={window}")
    if kernel not in ("gaussian", "uniform"):
        raise ValueError(f"ssim_map's kernel is 'gaussian' or 'uniform'; got {kernel!r}")
    c = x.shape[1]
    # Moments about each image's mean, not 0: E[x^2] - E[x]^2 then cancels far less of float32's precision.
    shift = (x + y).mean(dim=(2, 3), keepdim=True) / 2  # (B, C, 1, 1)
    x, y = x - shift, y - shift
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    if kernel == "gaussian":
        stats = _gaussian_blur(moments, window, SSIM_SIGMA)
    else:
        stats = F.avg_pool2d(moments, window, 1, window // 2, count_include_pad=False)
    mu_x, mu_y, ex2, ey2, exy = stats.split(c, dim=1)
    var_x, var_y, cov = ex2 - mu_x.square(), ey2 - mu_y.square(), exy - mu_x * mu_y
    mu_x, mu_y = mu_x + shift, mu_y + shift
    # Rounding can leave a variance slightly below 0; a true one never is.
    var_x, var_y = var_x.clamp(min=0), var_y.clamp(min=0)
    s = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x.square() + mu_y.square() + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return (1 - s).mean(dim=1).clamp(min=0)


def _gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude, replicate-padded so the border adds no edge: (N, 1, h, w) -> (N, h, w).

    The kernels are scaled by 1/3 as in RIAD (a unit step has gradient 1), and applied as shifted differences
    and sums: 3-4x faster than a 3x3 conv2d on CPU, forward and backward.
    """
    p = F.pad(gray, (1, 1, 1, 1), mode="replicate").squeeze(1)  # (N, h + 2, w + 2)
    dx = p[..., 2:] - p[..., :-2]  # (N, h + 2, w)
    dy = p[..., 2:, :] - p[..., :-2, :]  # (N, h, w + 2)
    gx = dx[..., :-2, :] + dx[..., 1:-1, :] + dx[..., 2:, :]  # (N, h, w), 3x the Prewitt response
    gy = dy[..., :-2] + dy[..., 1:-1] + dy[..., 2:]
    return ((gx.square() + gy.square()) / 9 + _SQRT_EPS).sqrt()


@_float32
def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """1 - gradient-magnitude similarity, averaged over `scales` dyadic scales (RIAD): (B, C, H, W) x2 -> (B, H, W)."""
    if scales < 1:
        raise ValueError(f"msgms_map needs at least one scale; got scales={scales}")
    b, _, h, w = x.shape
    gray = torch.cat([x, y]).mean(dim=1, keepdim=True)  # (2B, 1, H, W): both images in one pass, as in RIAD
    total = x.new_zeros((b, 1, h, w))
    for scale in range(scales):
        if scale > 0:
            gray = F.avg_pool2d(gray, 2, ceil_mode=True)  # ceil_mode: odd and 1-pixel sizes keep their edge
        g_x, g_y = _gradient_magnitude(gray).chunk(2)  # (B, h', w') each
        gms = (2 * g_x * g_y + GMS_C) / (g_x.square() + g_y.square() + GMS_C)
        dissimilarity = (1 - gms).unsqueeze(1)  # (B, 1, h', w')
        if scale > 0:
            dissimilarity = F.interpolate(dissimilarity, size=(h, w), mode="bilinear", align_corners=False)
        total = total + dissimilarity
    return (total / scales).squeeze(1).clamp(min=0)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (B, 3, H, W) -> CIELAB (B, 3, H, W) under D65: L in [0, 100], a and b about [-128, 127]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_lab expects RGB batches (B, 3, H, W); got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        rgb = x.float()
        # Each power's base is clamped to where its branch is taken: an unused branch's NaN or infinite
        # gradient would otherwise leak through the where (0 * inf = NaN). Unclamped inputs keep a gradient
        # at exact black and white and extend smoothly past [0, 1].
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
        t = torch.einsum("ij,bjhw->bihw", _rgb_to_normalised_xyz(x.device), linear)  # (B, 3, H, W): X/Xn, Y/Yn, Z/Zn
        f = torch.where(
            t > _LAB_EPSILON, t.clamp(min=_LAB_EPSILON) ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29
        )
        fx, fy, fz = f.unbind(dim=1)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


@_float32
def lab_difference_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CIE76 colour difference Delta E / 100 (so about [0, 1]): RGB (B, 3, H, W) x2 -> (B, H, W)."""
    d2 = (rgb_to_lab(x) - rgb_to_lab(y)).square().sum(dim=1)  # (B, H, W)
    # Shifted so that equal colours give exactly 0 and the gradient at 0 is finite.
    return ((d2 + _SQRT_EPS).sqrt() - math.sqrt(_SQRT_EPS)) / 100


ERROR_MAPS: dict[str, ErrorMap] = {
    "l2": squared_error_map,
    "l1": abs_error_map,
    "ssim": ssim_map,
    "msgms": msgms_map,
    "lab": lab_difference_map,
}


def combined_error_map(
    x: torch.Tensor, y: torch.Tensor, names: Sequence[str], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted sum of the maps in ERROR_MAPS named by `names` (weights default to 1): (B, C, H, W) x2 -> (B, H, W)."""
    if isinstance(names, str):
        raise ValueError(f"names is a sequence of map names, e.g. ({names!r},); got the string {names!r}")
    if not names:
        raise ValueError(f"combined_error_map needs at least one map name from {sorted(ERROR_MAPS)}")
    unknown = [n for n in names if n not in ERROR_MAPS]
    if unknown:
        raise ValueError(f"unknown error map(s) {unknown}; choose from {sorted(ERROR_MAPS)}")
    if weights is None:
        weights = (1.0,) * len(names)
    if len(weights) != len(names):
        raise ValueError(f"got {len(weights)} weights for {len(names)} maps {tuple(names)}; give one weight per map")
    total = weights[0] * ERROR_MAPS[names[0]](x, y)
    for name, weight in zip(names[1:], weights[1:]):
        total = total + weight * ERROR_MAPS[name](x, y)
    return total
