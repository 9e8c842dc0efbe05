"""Camera-noise corruptions for denoising training (noisy input -> clean target). Pure torch except JPEG."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

NOISE_KINDS = ("gaussian", "salt_pepper", "blur", "jpeg")


def corrupt(x: torch.Tensor, kind: str, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """One kind of noise on a batch (B, C, H, W) in [0, 1]; returns a new tensor in [0, 1]."""
    if kind == "gaussian":
        sigma = 0.05 * strength
        return (x + sigma * torch.randn(x.shape, generator=generator, device=x.device)).clamp(0, 1)
    if kind == "salt_pepper":
        u = torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator, device=x.device)
        p = 0.02 * strength
        return torch.where(u < p / 2, 0.0, torch.where(u > 1 - p / 2, 1.0, x))
    if kind == "blur":
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device)
        k = (k / k.sum()).to(x.dtype)
        c = x.shape[1]
        y = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
        return F.conv2d(F.pad(y, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    if kind == "jpeg":
        quality = int(max(5, 30 - 20 * (strength - 1)))
        out = []
        for img in (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy():
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else img
            assert decoded is not None  # what imencode has just written decodes
            out.append(decoded)
        return torch.from_numpy(np.stack(out)).to(x.device).permute(0, 3, 1, 2).float().div(255)
    raise ValueError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")


def corrupt_mixed(x: torch.Tensor, kinds: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Each image gets one randomly chosen kind of noise."""
    choice = torch.randint(len(kinds), (x.shape[0],), generator=generator)
    out = x.clone()
    for i, kind in enumerate(kinds):
        idx = (choice == i).nonzero().flatten()
        if idx.numel():
            out[idx.to(x.device)] = corrupt(x[idx.to(x.device)], kind, generator)
    return out
