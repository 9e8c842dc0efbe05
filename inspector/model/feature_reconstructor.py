"""The feature reconstructor (the default family): reconstruction in a pretrained feature space. Its config,
its module (frozen EfficientNet-Lite features rebuilt through two bottlenecks) and its score: the region error
map, normalised per location and registered to the image, and the local and global terms combined."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspector.model.backbone import (
    BACKBONES,
    BLOCK_STAGES,
    DEFAULT_BACKBONE,
    BackboneVariant,
    EfficientNetLiteFeatures,
)
from inspector.model.family import AnomalyModel, config_from_dict
from inspector.model.scoring import ScoringConfig, image_scores, register, smooth

_Terms = TypeVar("_Terms", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class FeatureReconstructorConfig:
    """Reconstruction in a pretrained feature space: frozen EfficientNet-Lite features of each image region
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
    # Pixels of replicated border around the input that the backbone sees and the features are cropped from: a
    # region at the frame's edge is computed as if inside the frame. The convolutions' zero padding made good belt
    # frames' edges the hottest regions of their maps (synthetic bananas through JPEG: detected at the 99 % good
    # quantile 0.90 -> 0.97 with the local term alone; bench/HISTORY.md, "The frame's edge"). Training keeps it
    # only where maps are not normalised per location (`training.features.fit_feature_model`).
    edge_context: int = 16
    # The pretrained feature extractor (backbone.BACKBONES): Lite0 is the fast one; training tries Lite2 as well and
    # keeps it where synthetic defects say it earns its 1.5x FLOPs (`training.features.fit_feature_model`).
    backbone: str = DEFAULT_BACKBONE
    # Regions in the memory of good region features (a coreset of the training regions, standardised): each
    # region's distance to its nearest one is a third term. 0 = no memory; training keeps one only where synthetic
    # defects say it ranks them clearly better (`training.feature_choices.choose_memory_weight`).
    memory_size: int = 0
    # A tiled model's tiles per frame (inspector.model.tiling): its per-location statistics are kept per tile
    # position, as an aligned part's left end is not its middle; 1 = one square input.
    location_tiles: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.blocks or any(b not in BLOCK_STAGES for b in self.blocks):
            raise ValueError(f"blocks must be taken from {sorted(BLOCK_STAGES)}, got {self.blocks}")
        if self.global_block and self.global_block not in BLOCK_STAGES:
            raise ValueError(f"global_block must be 0 or one of {sorted(BLOCK_STAGES)}, got {self.global_block}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} is not divisible by 16")
        if self.edge_context < 0 or self.edge_context % 16:
            raise ValueError(f"edge_context {self.edge_context} is not a non-negative multiple of 16")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}")
        if self.location_tiles < 1:
            raise ValueError(f"location_tiles must be >= 1, got {self.location_tiles}")

    @property
    def variant(self) -> BackboneVariant:
        return BACKBONES[self.backbone]

    @property
    def feature_channels(self) -> int:
        return sum(self.variant.block_channels(b)[0] for b in self.blocks)

    @property
    def global_channels(self) -> int:
        return self.variant.block_channels(self.global_block)[0] if self.global_block else self.feature_channels

    @property
    def feature_size(self) -> int:
        return self.image_size // min(self.variant.block_channels(b)[1] for b in self.blocks)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureReconstructorConfig:
        # A file without global_block pooled the local features; one without edge_context padded with zeros; one
        # without backbone used Lite0.
        return config_from_dict(cls, {"global_block": 0, "edge_context": 0, "backbone": DEFAULT_BACKBONE, **data})


class FeatureReconstruction(NamedTuple):
    local: torch.Tensor  # (B, C, h, w) standardised features
    local_recon: torch.Tensor  # (B, C, h, w)
    pooled: torch.Tensor  # (B, G) standardised mean feature vector of the global block
    pooled_recon: torch.Tensor  # (B, G)


class FeatureReconstructor(AnomalyModel):
    """(B, 3, S, S) in [0, 1] -> FeatureReconstruction: features and their reconstructions, local and global."""

    config: FeatureReconstructorConfig
    # The buffers registered in __init__, declared for the type checker: (1, C, 1, 1), (S, S) (a tiled model's
    # (T, S, S)), (G,), (K, G).
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    pooled_mean: torch.Tensor
    pooled_std: torch.Tensor
    global_mean: torch.Tensor
    global_basis: torch.Tensor
    memory: torch.Tensor  # (M, C)

    def __init__(self, config: FeatureReconstructorConfig | None = None) -> None:
        super().__init__()
        config = config or FeatureReconstructorConfig()
        self.config = config
        c = config.feature_channels
        self.backbone = EfficientNetLiteFeatures(config.variant, last_block=max(*config.blocks, config.global_block))
        self.register_buffer("feature_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, c, 1, 1))
        h, z = config.hidden_channels, config.latent_channels
        # 1x1 convolutions: each region's feature vector is rebuilt from its own bottleneck code, so a defect
        # cannot borrow good texture from its neighbours.
        self.local = nn.Sequential(
            nn.Conv2d(c, h, 1), nn.SiLU(), nn.Conv2d(h, z, 1), nn.SiLU(),
            nn.Conv2d(z, h, 1), nn.SiLU(), nn.Conv2d(h, c, 1),
        )
        # Per-location level and spread of good images' region errors (S, S), or per tile position (T, S, S); zero
        # spread = not fitted.
        locations: tuple[int, ...] = (config.image_size, config.image_size)
        if config.location_tiles > 1:
            locations = (config.location_tiles, *locations)
        self.register_buffer("pixel_mean", torch.zeros(locations))
        self.register_buffer("pixel_std", torch.zeros(locations))
        g = config.global_channels
        if config.global_block:
            self.register_buffer("pooled_mean", torch.zeros(g))
            self.register_buffer("pooled_std", torch.ones(g))
        self.register_buffer("global_mean", torch.zeros(g))
        self.register_buffer("global_basis", torch.zeros(config.global_components, g))  # orthonormal rows
        # Standardised good region features; in the file only where there is a memory (files before it had none).
        self.register_buffer("memory", torch.zeros(config.memory_size, c), persistent=config.memory_size > 0)

    def features(self, x: torch.Tensor, with_global: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (local: (B, C, S/8, S/8) standardised, neighbourhood-averaged backbone features,
        pooled: (B, G) the global block's mean feature vector, standardised; zeros without `with_global`, when the
        backbone stops at the last local block)."""
        wanted = sorted({*self.config.blocks, self.config.global_block if with_global else 0} - {0})
        by_block = dict(zip(wanted, self._backbone_blocks(x, tuple(wanted))))
        maps = [by_block[b] for b in self.config.blocks]
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        f = torch.cat(maps, dim=1)
        k = self.config.neighbourhood
        if k > 1:
            f = F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False)
        f = (f - self.feature_mean) / self.feature_std
        if not with_global:
            return f, f.new_zeros((f.shape[0], self.config.global_channels))
        if not self.config.global_block:
            return f, f.mean(dim=(2, 3))
        return f, (by_block[self.config.global_block].mean(dim=(2, 3)) - self.pooled_mean) / self.pooled_std

    def _backbone_blocks(self, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
        """(B, 3, S, S) -> each block's features of the input alone, computed with the edge context around it."""
        pad = self.config.edge_context
        if not pad:
            return self.backbone(x, blocks)
        outs = self.backbone(F.pad(x, (pad, pad, pad, pad), mode="replicate"), blocks)
        size = x.shape[-1]
        cropped = []
        for out in outs:
            stride = (size + 2 * pad) // out.shape[-1]
            first = pad // stride  # at stride 32 a 16-px context is half a cell: the crop keeps the first cells
            cropped.append(out[..., first : first + size // stride, first : first + size // stride])
        return cropped

    def reconstruct_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        centred = pooled - self.global_mean
        return self.global_mean + (centred @ self.global_basis.T) @ self.global_basis  # (B, C)

    def forward(self, x: torch.Tensor, with_global: bool = True) -> FeatureReconstruction:
        f, pooled = self.features(x, with_global)
        return FeatureReconstruction(f, self.local(f), pooled, self.reconstruct_pooled(pooled) if with_global else pooled)

    def score(self, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """Local scores alone while the references are unset (as training first scores), else both terms
        combined; the map registered to the image."""
        # A global term weighted 0 (chosen so by labelled defects) is not computed: the backbone stops at block 10.
        uses_global = bool(config.local_reference and config.global_reference and config.global_weight)
        local, pooled_err, memory, maps = feature_terms(self, x, config, global_term=uses_global)
        if not config.local_reference:
            return local, maps
        return combined_scores(config, local, pooled_err, memory), maps


def feature_maps(model: FeatureReconstructor, out: FeatureReconstruction, size: int,
                 config: ScoringConfig) -> torch.Tensor:
    """Per-region feature reconstruction error, upsampled to the model input, smoothed and (when the model
    has the statistics and the config asks) normalised per location -> (B, S, S), >= 0, not yet registered to
    the image (`register` with `config.map_offset`)."""
    err = (out.local.float() - out.local_recon.float()).square().mean(dim=1, keepdim=True)  # (B, 1, h, w)
    maps = smooth(F.interpolate(err, size=(size, size), mode="bilinear", align_corners=False)[:, 0],
                  config.smoothing_sigma)
    if config.pixel_normalise:
        maps = normalise_per_location(maps, model.pixel_mean, model.pixel_std)
    return maps


def memory_maps(model: FeatureReconstructor, out: FeatureReconstruction, size: int,
                config: ScoringConfig) -> torch.Tensor:
    """Each region's distance to its nearest region in the model's memory, upsampled to the model input and
    smoothed as the error map is -> (B, S, S), >= 0, not yet registered; zeros for a model without a memory."""
    f = out.local.float()
    b, c, h, w = f.shape
    memory = model.memory.float()
    if not len(memory):
        return f.new_zeros((b, size, size))
    regions = f.permute(0, 2, 3, 1).reshape(-1, c)
    squared = memory.square().sum(dim=1)
    # |r - m|^2 = |r|^2 + |m|^2 - 2 r.m, in chunks: (8192, M) floats at a time whatever the batch; in float32
    # under bf16 autocast too, as the difference of terms near 150 would lose the small distances.
    with torch.autocast(f.device.type, enabled=False):
        nearest = torch.cat([(part.square().sum(dim=1, keepdim=True) + squared - 2 * part @ memory.T).amin(dim=1)
                             for part in regions.split(8192)])
    dist = nearest.clamp_min(0).sqrt().reshape(b, 1, h, w)
    return smooth(F.interpolate(dist, size=(size, size), mode="bilinear", align_corners=False)[:, 0],
                  config.smoothing_sigma)


def normalise_per_location(maps: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, S, S) error maps -> their excess over good images' level, in units of the spread there; maps as they
    are while the statistics are not fitted (zero spread). With (T, S, S) statistics the maps are the tiles of
    whole frames in order (map i is tile i mod T), padding after them."""
    if mean.dim() == 3:
        position = torch.arange(maps.shape[0], device=maps.device) % mean.shape[0]
        mean, std = mean[position], std[position]  # (B, S, S)
    scale = std.float().mean()
    # Decided on the device: a branch on the host would wait for the GPU, which a CUDA graph cannot capture.
    fitted = scale > 0
    floor = torch.where(fitted, 0.1 * scale, 1.0)  # 1 while not fitted keeps the unused branch finite
    normalised = ((maps - mean.float()) / (std.float() + floor)).clamp_min(0)
    return torch.where(fitted, normalised, maps)


def combined_scores(config: ScoringConfig, local: _Terms, glob: _Terms, memory: _Terms | None = None) -> _Terms:
    """A feature reconstructor's image scores from its terms (tensors, or arrays at training time): each divided
    by its reference, the global and memory ones weighted, summed."""
    scores = local / config.local_reference
    if config.global_reference:
        scores = scores + config.global_weight * glob / config.global_reference
    if memory is not None and config.memory_reference and config.memory_weight:
        scores = scores + config.memory_weight * memory / config.memory_reference
    return scores


def feature_terms(model: FeatureReconstructor, x: torch.Tensor, config: ScoringConfig, *,
                  global_term: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One pass of a feature reconstructor -> (local scores (B,), global errors (B,) (zeros without
    `global_term`), memory scores (B,) (None where the config weighs no memory), maps (B, S, S) registered to
    the image), before the references that `FeatureReconstructor.score` divides them by."""
    out = model(x, with_global=global_term)
    maps = feature_maps(model, out, x.shape[-1], config)
    pooled_err = (out.pooled.float() - out.pooled_recon.float()).square().mean(dim=1)  # (B,), zeros without it
    memory = (image_scores(memory_maps(model, out, x.shape[-1], config), config)
              if config.memory_weight and len(model.memory) else None)
    # Scored before registration: moving the map must not move the score, and the edge the move replicates would
    # (on paper, good images' top pixels lie along the bottom and right edges).
    return image_scores(maps, config), pooled_err, memory, register(maps, config.map_offset)
