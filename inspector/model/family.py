"""What every model family shares: the config contract, the module base that scores its own batch, `score_batch`.

A family is one module (`autoencoder`, `repair`, `feature_reconstructor`, `null`) holding its config dataclass,
its pure torch module and that module's `score`; `inspector.model.registry` maps the names a model file writes
to the families, so a new family touches its own module and the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from inspector.model.scoring import ScoringConfig

ConfigT = TypeVar("ConfigT")


class ModelConfig(Protocol):
    """A family's architecture config: saved inside the model file, so the module is rebuilt from the file alone."""

    @property
    def image_size(self) -> int: ...  # square input side, pixels

    def to_dict(self) -> dict[str, object]: ...


class AnomalyModel(nn.Module):
    """A pure torch model of good images that turns a batch into its own anomaly maps and scores.

    `forward` returns what the family reconstructs (an image, or features); `score` is the family's scoring.
    """

    config: ModelConfig
    # False for a model that scores a batch without reading its pixels (the benchmarks' null model): the runner then
    # skips preprocessing, which would otherwise be most of what a null worker measures.
    reads_pixels: ClassVar[bool] = True

    def score(self, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) in [0, 1] -> (scores (B,), maps (B, S, S)), in the dtype the model ran in."""
        raise NotImplementedError(f"{type(self).__name__} does not score")


@torch.inference_mode()
def score_batch(model: AnomalyModel, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a preprocessed batch (B, C, H, W) in [0, 1] -> (scores (B,), maps (B, H, W)), float32."""
    scores, maps = model.score(x, config)
    return scores.float(), maps.float()


def config_from_dict(config_type: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """A config dataclass from a model file's architecture fields; ValueError names fields this build lacks."""
    unknown = set(data) - set(config_type.__dataclass_fields__)  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(f"unknown {config_type.__name__} fields: {sorted(unknown)}")
    return config_type(**data)
