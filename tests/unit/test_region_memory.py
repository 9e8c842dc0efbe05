"""The feature reconstructor's memory of good regions: the coreset, the nearest-region distance, the choice of its
weight by synthetic defects, and a trained model's file with and without it."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from inspector.model import artifact as artifact_io
from inspector.model.feature_reconstructor import (
    FeatureReconstruction,
    FeatureReconstructor,
    FeatureReconstructorConfig,
    memory_maps,
)
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import ScoringConfig
from inspector.training.config import TrainConfig
from inspector.training.feature_choices import choose_memory_weight
from inspector.training.feature_terms import region_coreset
from inspector.training.pipeline import train_and_calibrate


def test_the_coreset_keeps_its_size_and_takes_one_region_of_every_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 50, (5, 16))
    regions = torch.from_numpy(np.concatenate([c + rng.normal(0, 1, (200, 16)) for c in centres])).float()
    picked = region_coreset(regions, 5, seed=0)
    assert picked.shape == (5, 16)
    nearest_centre = torch.cdist(picked.double(), torch.from_numpy(centres)).argmin(dim=1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2, 3, 4]
    assert region_coreset(regions, 50, seed=0).shape == (50, 16)
    assert region_coreset(regions, 5_000, seed=0, sample=300).shape == (300, 16)  # never more than it sampled


def test_a_regions_memory_term_is_its_distance_to_the_nearest_good_region() -> None:
    config = FeatureReconstructorConfig(image_size=64, blocks=(4,), memory_size=2)
    model = FeatureReconstructor(config)
    c = config.feature_channels
    model.memory = torch.zeros(2, c)
    model.memory[1, 0] = 10.0
    local = torch.zeros(2, c, 8, 8)
    local[0, 0] = 3.0  # 3 from the first memory region, 7 from the second
    local[1, 1] = 4.0  # 4 from the first, sqrt(116) from the second
    out = FeatureReconstruction(local, local, torch.zeros(2, 1), torch.zeros(2, 1))
    maps = memory_maps(model, out, 64, ScoringConfig(smoothing_sigma=0))
    assert maps.shape == (2, 64, 64)
    assert torch.allclose(maps[0], torch.full((64, 64), 3.0)) and torch.allclose(maps[1], torch.full((64, 64), 4.0))
    model.memory = model.memory[:0]
    assert memory_maps(model, out, 64, ScoringConfig()).abs().max() == 0  # no memory: no term


def test_the_memory_is_kept_only_where_synthetic_defects_rank_clearly_higher_with_it() -> None:
    rng = np.random.default_rng(0)
    local, glob = rng.normal(1, 0.2, 60), rng.normal(1, 0.2, 60)
    synth_local, synth_glob = local + rng.normal(0.2, 0.3, 60), glob.copy()  # the model's terms half separate
    scoring = replace(ScoringConfig(), local_reference=1.6, global_reference=1.6)
    good_memory = rng.normal(1, 0.1, 60)
    helpful = choose_memory_weight(scoring, TrainConfig(), (local, glob, good_memory),
                                   (synth_local, synth_glob, good_memory + 1.0))
    assert helpful[0].memory_weight in TrainConfig().memory_weights and helpful[0].memory_reference > 1
    assert max(helpful[1].values()) == helpful[1][f"{helpful[0].memory_weight:g}"] > helpful[1]["0"] + 0.005
    useless = choose_memory_weight(scoring, TrainConfig(), (local, glob, good_memory),
                                   (synth_local, synth_glob, rng.normal(1, 0.1, 60)))
    assert useless[0] == scoring and set(useless[1]) == {"0", "0.5", "1", "2"}


def test_a_trained_memory_is_in_the_file_only_where_it_is_used(tmp_path: Path) -> None:
    good = np.clip(np.array([200, 180, 140]) + np.random.default_rng(1).normal(0, 8, (24, 128, 128, 3)), 0, 255)
    good = good.astype(np.uint8)
    config = FeatureReconstructorConfig(image_size=128, hidden_channels=32, latent_channels=8)
    for margin in (-1.0, 1.0):  # -1: the memory is always kept; 1: never (AUROCs differ by less)
        train = TrainConfig(feature_steps=50, feature_batch=512, backbones=("efficientnet-lite0",),
                            memory_size=64, memory_margin=margin)
        out = tmp_path / f"m{margin}.safetensors"
        art = train_and_calibrate(good, [], out, config, train, torch.device("cpu"), progress=False)
        loaded = artifact_io.load(out)
        assert loaded.scoring == art.scoring and set(art.training["memory_weight_auroc"]) == {"0", "0.5", "1", "2"}
        kept = margin < 0
        assert (loaded.scoring.memory_weight > 0) == kept and loaded.config.memory_size == (64 if kept else 0)
        assert loaded.model.memory.shape == (64 if kept else 0, config.feature_channels)
        scores, _ = ModelRunner(loaded, torch.device("cpu")).score(good[:2])
        assert np.allclose(scores, ModelRunner(art, torch.device("cpu")).score(good[:2])[0], rtol=1e-4)
