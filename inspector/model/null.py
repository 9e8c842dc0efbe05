"""The null model of the benchmarks: no model, no maps; what is left is transport, decode and the hot loop."""

from __future__ import annotations

import torch

from inspector.model.family import AnomalyModel, ModelConfig
from inspector.model.scoring import ScoringConfig


class NullModel(AnomalyModel):
    """Returns its input, and scores every image 0 with an all-zero map. Never written to a model file."""

    reads_pixels = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def score(self, x: torch.Tensor,
              config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ARG002 - nothing to score
        n, size = x.shape[0], self.config.image_size
        # One zero broadcast over every pixel: nothing is computed or allocated per pixel.
        return x.new_zeros(n, dtype=torch.float32), x.new_zeros((n, 1, 1), dtype=torch.float32).expand(n, size, size)
