"""The model family: pure torch modules with dataclass configs (no I/O, no Kafka, no cv2).

- `Autoencoder`: the plain (or denoising) convolutional autoencoder.
- `RepairAutoencoder`: trained to repair synthetic anomalies, with a discriminative head that outlines them.
- `FeatureReconstructor`: reconstructs frozen pretrained features of good images (the default).

Each is trained on good produce only and rebuilds good produce well and defects badly; scoring (in
`inspector.model.scoring`) turns the reconstruction error into an anomaly map and score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from inspector.model.backbone import BLOCK_CHANNELS, EfficientNetLite0Features


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture; saved inside the model file so the module can be rebuilt from the file alone."""

    image_size: int = 128  # square input side, pixels; must be divisible by 2**len(widths)
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 64)  # channels at each stride-2 stage (depth = len(widths))
    latent_channels: int = 16  # spatial bottleneck: (latent_channels, size/2**depth, size/2**depth)
    blocks_per_stage: int = 0  # extra 3x3 conv blocks per stage (capacity without more downsampling)

    def __post_init__(self) -> None:
        if not self.widths:
            raise ValueError("widths must name at least one stage")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.widths)}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "AutoencoderConfig":
        return _from_dict(cls, data)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.widths)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(inplace=True),
    )


class _Up(nn.Sequential):
    # Nearest upsampling + conv instead of transposed conv: no checkerboard pattern in the reconstruction,
    # which would otherwise show up as error on every good frame.
    def __init__(self, c_in: int, c_out: int, extra_blocks: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv_block(c_in, c_out),
            *[_conv_block(c_out, c_out) for _ in range(extra_blocks)],
        )


class Autoencoder(nn.Module):
    """(B, C, H, W) in [0, 1] -> reconstruction (B, C, H, W) in [0, 1]."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        config = config or AutoencoderConfig()
        self.config = config
        widths = config.widths
        encoder: list[nn.Module] = []
        c_prev = config.in_channels
        for width in widths:
            encoder.append(_conv_block(c_prev, width, stride=2))
            encoder.extend(_conv_block(width, width) for _ in range(config.blocks_per_stage))
            c_prev = width
        encoder.append(nn.Conv2d(c_prev, config.latent_channels, kernel_size=1))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [_conv_block(config.latent_channels, widths[-1])]
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], widths[0]]):
            decoder.append(_Up(c_in, c_out, config.blocks_per_stage))
        decoder.append(nn.Conv2d(widths[0], config.in_channels, kernel_size=3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, latent_channels, S/2**depth, S/2**depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encode(x)))  # (B, C, H, W)


class NullModel(nn.Module):
    """Returns its input: every score is 0. Used by benchmarks to expose transport and decode cost."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class RepairAutoencoderConfig:
    """A DRAEM-style pair: the autoencoder (repairs synthetic anomalies) and a discriminative head on
    [input, reconstruction] that outlines what was repaired. Trained from scratch."""

    image_size: int = 128
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 64)
    latent_channels: int = 16
    blocks_per_stage: int = 0
    head_widths: tuple[int, ...] = (16, 32, 64)  # the head's U-Net stages

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "head_widths", tuple(int(w) for w in self.head_widths))
        self.autoencoder  # noqa: B018 - validates the shared fields
        if self.image_size % (2 ** len(self.head_widths)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.head_widths)}")

    @property
    def autoencoder(self) -> AutoencoderConfig:
        return AutoencoderConfig(self.image_size, self.in_channels, self.widths, self.latent_channels,
                                 self.blocks_per_stage)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "widths": list(self.widths), "head_widths": list(self.head_widths)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "RepairAutoencoderConfig":
        return _from_dict(cls, data)


class DiscriminativeHead(nn.Module):
    """A small U-Net: (B, 2C, H, W) [input, reconstruction] -> (B, 1, H, W) anomaly logits."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = in_channels
        for width in widths:
            self.down.append(nn.Sequential(_conv_block(c_prev, width), _conv_block(width, width)))
            c_prev = width
        self.middle = _conv_block(c_prev, c_prev)
        self.up = nn.ModuleList(
            nn.Sequential(_conv_block(c_in + skip, skip), _conv_block(skip, skip))
            for c_in, skip in zip((widths[-1], *widths[:0:-1]), widths[::-1])
        )
        self.out = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for stage, skip in zip(self.up, skips[::-1]):
            x = stage(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.out(x)


class RepairAutoencoder(nn.Module):
    """(B, C, H, W) in [0, 1] -> reconstruction; `segment` gives the head's anomaly logits (B, 1, H, W)."""

    def __init__(self, config: RepairAutoencoderConfig | None = None) -> None:
        super().__init__()
        config = config or RepairAutoencoderConfig()
        self.config = config
        self.reconstructive = Autoencoder(config.autoencoder)
        self.head = DiscriminativeHead(2 * config.in_channels, config.head_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstructive(x)

    def segment(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([x, recon], dim=1))


@dataclass(frozen=True)
class FeatureReconstructorConfig:
    """Reconstruction in a pretrained feature space: frozen EfficientNet-Lite0 features of each image region
    are squeezed through a bottleneck and rebuilt; what the bottleneck of good images cannot rebuild is the
    anomaly. A linear autoencoder does the same for the mean feature vector of a deeper block (whole-object
    changes: rot, bruising, a wrong colour)."""

    image_size: int = 256
    in_channels: int = 3
    blocks: tuple[int, ...] = (4, 10)  # backbone blocks whose outputs are joined (stride 8 and 16)
    neighbourhood: int = 3  # local average of features, in feature cells: a region, not a pixel
    hidden_channels: int = 128
    latent_channels: int = 32  # the bottleneck of the per-region autoencoder
    global_components: int = 32  # rank of the linear autoencoder of the mean feature vector (training chooses it)
    # The block whose mean feature vector the global term rebuilds; 0 = the mean of the local features (files
    # written before block 15 was used). Block 15 ranks held-out rotten oranges 0.987 against 0.973 for block 10.
    global_block: int = 15

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.blocks or any(b not in BLOCK_CHANNELS for b in self.blocks):
            raise ValueError(f"blocks must be taken from {sorted(BLOCK_CHANNELS)}, got {self.blocks}")
        if self.global_block and self.global_block not in BLOCK_CHANNELS:
            raise ValueError(f"global_block must be 0 or one of {sorted(BLOCK_CHANNELS)}, got {self.global_block}")
        if self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} is not divisible by 16")

    @property
    def feature_channels(self) -> int:
        return sum(BLOCK_CHANNELS[b][0] for b in self.blocks)

    @property
    def global_channels(self) -> int:
        return BLOCK_CHANNELS[self.global_block][0] if self.global_block else self.feature_channels

    @property
    def feature_size(self) -> int:
        return self.image_size // min(BLOCK_CHANNELS[b][1] for b in self.blocks)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "FeatureReconstructorConfig":
        return _from_dict(cls, {"global_block": 0, **data})  # a file without the field pooled the local features


class FeatureReconstruction(NamedTuple):
    local: torch.Tensor  # (B, C, h, w) standardised features
    local_recon: torch.Tensor  # (B, C, h, w)
    pooled: torch.Tensor  # (B, G) standardised mean feature vector of the global block
    pooled_recon: torch.Tensor  # (B, G)


class FeatureReconstructor(nn.Module):
    """(B, 3, S, S) in [0, 1] -> FeatureReconstruction: features and their reconstructions, local and global."""

    # The buffers registered in __init__, declared for the type checker: (1, C, 1, 1), (S, S), (G,), (K, G).
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    pooled_mean: torch.Tensor
    pooled_std: torch.Tensor
    global_mean: torch.Tensor
    global_basis: torch.Tensor

    def __init__(self, config: FeatureReconstructorConfig | None = None) -> None:
        super().__init__()
        config = config or FeatureReconstructorConfig()
        self.config = config
        c = config.feature_channels
        self.backbone = EfficientNetLite0Features(last_block=max(*config.blocks, config.global_block))
        self.register_buffer("feature_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, c, 1, 1))
        h, z = config.hidden_channels, config.latent_channels
        # 1x1 convolutions: each region's feature vector is rebuilt from its own bottleneck code, so a defect
        # cannot borrow good texture from its neighbours.
        self.local = nn.Sequential(
            nn.Conv2d(c, h, 1), nn.SiLU(), nn.Conv2d(h, z, 1), nn.SiLU(),
            nn.Conv2d(z, h, 1), nn.SiLU(), nn.Conv2d(h, c, 1),
        )
        # Per-location level and spread of good images' region errors (S, S); zero spread = not fitted.
        self.register_buffer("pixel_mean", torch.zeros(config.image_size, config.image_size))
        self.register_buffer("pixel_std", torch.zeros(config.image_size, config.image_size))
        g = config.global_channels
        if config.global_block:
            self.register_buffer("pooled_mean", torch.zeros(g))
            self.register_buffer("pooled_std", torch.ones(g))
        self.register_buffer("global_mean", torch.zeros(g))
        self.register_buffer("global_basis", torch.zeros(config.global_components, g))  # orthonormal rows

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (local: (B, C, S/8, S/8) standardised, neighbourhood-averaged backbone features,
        pooled: (B, G) the global block's mean feature vector, standardised)."""
        wanted = sorted({*self.config.blocks, self.config.global_block} - {0})
        by_block = dict(zip(wanted, self.backbone(x, tuple(wanted))))
        maps = [by_block[b] for b in self.config.blocks]
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        f = torch.cat(maps, dim=1)
        k = self.config.neighbourhood
        if k > 1:
            f = F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False)
        f = (f - self.feature_mean) / self.feature_std
        if not self.config.global_block:
            return f, f.mean(dim=(2, 3))
        return f, (by_block[self.config.global_block].mean(dim=(2, 3)) - self.pooled_mean) / self.pooled_std

    def reconstruct_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        centred = pooled - self.global_mean
        return self.global_mean + (centred @ self.global_basis.T) @ self.global_basis  # (B, C)

    def forward(self, x: torch.Tensor) -> FeatureReconstruction:
        f, pooled = self.features(x)
        return FeatureReconstruction(f, self.local(f), pooled, self.reconstruct_pooled(pooled))


def _from_dict(cls, data: dict[str, object]):  # shared by the config dataclasses
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**data)


# Architecture name (as a model file writes it) -> the module, built from the file's config fields.
ARCHITECTURES: dict[str, Callable[[dict[str, object]], Autoencoder | RepairAutoencoder | FeatureReconstructor]] = {
    "Autoencoder": lambda arch: Autoencoder(AutoencoderConfig.from_dict(arch)),
    "RepairAutoencoder": lambda arch: RepairAutoencoder(RepairAutoencoderConfig.from_dict(arch)),
    "FeatureReconstructor": lambda arch: FeatureReconstructor(FeatureReconstructorConfig.from_dict(arch)),
}
