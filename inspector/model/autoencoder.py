"""The plain (or denoising) convolutional autoencoder: its config, its module and its score (image error)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from inspector.model.family import AnomalyModel, config_from_dict
from inspector.model.scoring import ScoringConfig, error_maps, image_scores


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
    def from_dict(cls, data: dict[str, object]) -> AutoencoderConfig:
        return config_from_dict(cls, data)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.widths)


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, batch norm, SiLU: the autoencoders' building block (the runner folds each pair into one conv)."""
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
            conv_block(c_in, c_out),
            *[conv_block(c_out, c_out) for _ in range(extra_blocks)],
        )


class Autoencoder(AnomalyModel):
    """(B, C, H, W) in [0, 1] -> reconstruction (B, C, H, W) in [0, 1]."""

    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        config = config or AutoencoderConfig()
        self.config = config
        widths = config.widths
        encoder: list[nn.Module] = []
        c_prev = config.in_channels
        for width in widths:
            encoder.append(conv_block(c_prev, width, stride=2))
            encoder.extend(conv_block(width, width) for _ in range(config.blocks_per_stage))
            c_prev = width
        encoder.append(nn.Conv2d(c_prev, config.latent_channels, kernel_size=1))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [conv_block(config.latent_channels, widths[-1])]
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], widths[0]]):
            decoder.append(_Up(c_in, c_out, config.blocks_per_stage))
        decoder.append(nn.Conv2d(widths[0], config.in_channels, kernel_size=3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, latent_channels, S/2**depth, S/2**depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encode(x)))  # (B, C, H, W)

    def score(self, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The image error map of the reconstruction (`config.error`), smoothed; the score reduces it."""
        maps = error_maps(x, self(x), config)  # (B, H, W)
        return image_scores(maps, config), maps
