"""The convolutional autoencoder: a pure torch module and its dataclass config (no I/O, no Kafka, no cv2).

Trained on good produce only, it reconstructs good produce well and defects badly; scoring (in
`inspector.scoring`) turns the reconstruction error into an anomaly map and score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


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
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config fields: {sorted(unknown)}")
        values = dict(data)
        if "widths" in values:
            values["widths"] = tuple(values["widths"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

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
