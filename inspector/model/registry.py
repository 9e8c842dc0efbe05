"""The model families by the architecture name a model file writes: the one place that knows them all.

Loading a file, the `inspector train` modes and the scoring a mode starts from all read this table; a new family
is its own module plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self

from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.family import AnomalyModel, ModelConfig
from inspector.model.feature_reconstructor import FeatureReconstructor, FeatureReconstructorConfig
from inspector.model.repair import RepairAutoencoder, RepairAutoencoderConfig
from inspector.model.scoring import ScoringConfig

TrainingMode = Literal["features", "repair", "plain"]


class StoredConfig(ModelConfig, Protocol):
    """A config a model file can hold: written by `to_dict`, read back by `from_dict`."""

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Self: ...


@dataclass(frozen=True)
class Family:
    """One model family: how a model file names it, its module and config, and how `inspector train` makes one."""

    name: str  # the model file's `architecture.name`: never renamed, files in the field carry it
    module: Callable[[Any], AnomalyModel]  # built from an instance of `config`
    config: type[StoredConfig]
    mode: TrainingMode  # `inspector train --mode`
    scoring: ScoringConfig  # the scoring the mode was measured with (bench/RESULTS.md, "Model quality")

    def build(self, fields: dict[str, object]) -> AnomalyModel:
        """The module, untrained, from a model file's architecture fields (ValueError on unknown fields)."""
        return self.module(self.config.from_dict(fields))


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("FeatureReconstructor", FeatureReconstructor, FeatureReconstructorConfig, "features",
           ScoringConfig(smoothing_sigma=4.0, reduction="topk_mean", topk_fraction=0.01)),
    Family("RepairAutoencoder", RepairAutoencoder, RepairAutoencoderConfig, "repair",
           ScoringConfig(smoothing_sigma=2.0, reduction="max")),
    Family("Autoencoder", Autoencoder, AutoencoderConfig, "plain", ScoringConfig()),
)}


def family_for_mode(mode: str) -> Family:
    """The family `inspector train --mode MODE` trains."""
    for family in FAMILIES.values():
        if family.mode == mode:
            return family
    raise ValueError(f"unknown training mode {mode!r} (this build knows {[f.mode for f in FAMILIES.values()]})")


def family_of(config: ModelConfig) -> Family:
    """The family whose config `config` is."""
    for family in FAMILIES.values():
        if type(config) is family.config:
            return family
    raise ValueError(f"{type(config).__name__} is no model family's config (known: {sorted(FAMILIES)})")
