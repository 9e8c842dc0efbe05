"""The DRAEM-style repair autoencoder: an autoencoder that repairs synthetic anomalies and a discriminative
head that outlines what it repaired; its config, its module and its score (the head's map). Trained from scratch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inspector.model.autoencoder import Autoencoder, AutoencoderConfig, conv_block
from inspector.model.family import AnomalyModel, config_from_dict
from inspector.model.scoring import ScoringConfig, image_scores, smooth


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
    def from_dict(cls, data: dict[str, object]) -> RepairAutoencoderConfig:
        return config_from_dict(cls, data)


class DiscriminativeHead(nn.Module):
    """A small U-Net: (B, 2C, H, W) [input, reconstruction] -> (B, 1, H, W) anomaly logits."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = in_channels
        for width in widths:
            self.down.append(nn.Sequential(conv_block(c_prev, width), conv_block(width, width)))
            c_prev = width
        self.middle = conv_block(c_prev, c_prev)
        self.up = nn.ModuleList(
            nn.Sequential(conv_block(c_in + skip, skip), conv_block(skip, skip))
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


class RepairAutoencoder(AnomalyModel):
    """(B, C, H, W) in [0, 1] -> reconstruction; `segment` gives the head's anomaly logits (B, 1, H, W)."""

    config: RepairAutoencoderConfig

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

    def score(self, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's anomaly probability per pixel, smoothed; the score reduces it (the image error is unused)."""
        maps = smooth(torch.sigmoid(self.segment(x, self(x)).float())[:, 0], config.smoothing_sigma)  # (B, H, W)
        return image_scores(maps, config), maps
