"""The model family: each architecture trains, scores and survives its model file; the repair head learns."""

from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.errors import ModelFileError
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.feature_reconstructor import FeatureReconstructor, FeatureReconstructorConfig
from inspector.model.repair import RepairAutoencoder, RepairAutoencoderConfig
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import ScoringConfig
from inspector.training.anomaly_synth import AnomalySynthConfig
from inspector.training.config import TrainConfig
from inspector.training.feature_choices import choose_global_rank, far_out, with_references
from inspector.training.image_autoencoders import repair_loss
from inspector.training.pipeline import train_and_calibrate

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _textures(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: a warm paper-like texture with mild noise."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 180, 140], np.float32)
    return np.clip(base + rng.normal(0, 8, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_repair_head_loss_falls_in_a_few_steps() -> None:
    torch.manual_seed(0)
    model = RepairAutoencoder(RepairAutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4,
                                                      head_widths=(8, 16)))
    clean = torch.from_numpy(_textures(8, 32, 0)).permute(0, 3, 1, 2).float() / 255
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    synth = AnomalySynthConfig(probability=1.0, min_opacity=0.8)
    losses = []
    for step in range(30):
        loss = repair_loss(model, clean, TrainConfig(mode="repair"), synth, torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def _blobs(images: np.ndarray) -> np.ndarray:
    blob = images.copy()
    blob[:, 40:64, 56:80] = (40, 30, 20)  # a dark impurity
    return blob


def test_feature_model_trains_calibrates_round_trips_and_flags_a_blob(tmp_path: Path) -> None:
    good = _textures(24, 128, 1)
    out = tmp_path / "f.safetensors"
    config = FeatureReconstructorConfig(image_size=128, hidden_channels=32, latent_channels=8)
    train = TrainConfig(feature_steps=100, feature_batch=512)
    art = train_and_calibrate(good, [], out, config, train, torch.device("cpu"), defects=_blobs(_textures(6, 128, 3)),
                              progress=False)
    assert art.scoring.local_reference > 0 and art.scoring.global_reference > 0
    # The labelled defects chose the global weight: the best AUROC, ties to the weight nearest the default 2.
    by_weight = art.training["global_weight_auroc"]
    assert set(by_weight) == {f"{w:g}" for w in train.global_weights} and art.training["n_defect_examples"] == 6
    best = [float(w) for w, a in by_weight.items() if a == max(by_weight.values())]
    assert art.scoring.global_weight == min(best, key=lambda w: abs(w - 2.0))
    assert art.calibration is not None and art.calibration.method == "fitted_tail"
    loaded = artifact_io.load(out)
    assert type(loaded.model).__name__ == "FeatureReconstructor" and loaded.scoring == art.scoring
    # The global rank chosen from (8, 16, 32), capped at half the 24 images, is what the file holds.
    assert set(art.training["global_rank_auroc"]) == {"8", "16", "32"}
    rank = loaded.model.config.global_components
    assert rank in (8, 12) and loaded.model.global_basis.shape[0] == rank
    test_good = _textures(4, 128, 2)
    scores, maps = ModelRunner(loaded, torch.device("cpu")).score(np.concatenate([test_good, _blobs(test_good)]))
    assert scores[4:].min() > scores[:4].max()
    for m in maps[4:].numpy():  # the map's peak is on the impurity (within one feature cell of it)
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert 32 <= y < 72 and 48 <= x < 88


def test_the_global_rank_that_separates_synthetic_defects_is_chosen_and_ties_go_to_fewer_directions() -> None:
    rng = np.random.default_rng(0)
    local, synth_local = rng.normal(1, 0.1, 50), rng.normal(1, 0.1, 50)  # the local term separates nothing
    noise = {r: rng.gamma(2, 1, 50) for r in (8, 16, 32)}
    synth = {8: noise[8] + 3, 16: noise[16] + 0.5, 32: rng.gamma(2, 1, 50)}  # defects stand out at rank 8 only
    rank, by_rank = choose_global_rank(ScoringConfig(), local, noise, synth_local, synth)
    assert rank == 8 and by_rank["8"] > by_rank["16"] > by_rank["32"]
    same = {r: noise[8] for r in (8, 16, 32)}
    assert choose_global_rank(ScoringConfig(), local, same, synth_local, {r: synth[8] for r in same})[0] == 8


def test_one_odd_good_image_does_not_set_a_terms_reference() -> None:
    rng = np.random.default_rng(0)
    local, glob = rng.lognormal(0, 0.5, 150), rng.lognormal(0, 0.5, 150)
    typical = with_references(ScoringConfig(), local, glob)
    with_drawing = with_references(ScoringConfig(), np.r_[local, 40.0], np.r_[glob, 60.0])  # a drawing among them
    assert with_drawing.local_reference == pytest.approx(typical.local_reference, rel=0.02)
    assert with_drawing.global_reference == pytest.approx(typical.global_reference, rel=0.02)
    assert far_out(np.r_[local, 40.0])[-1] and far_out(local).mean() < 0.02  # typical spread: a few at most
    assert not far_out(np.ones(10)).any()


def test_repair_model_round_trips(tmp_path: Path) -> None:
    config = RepairAutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4, head_widths=(8, 16))
    art = train_and_calibrate(_textures(10, 32, 3), [], tmp_path / "r.safetensors", config,
                              TrainConfig(mode="repair", epochs=1, batch_size=8), torch.device("cpu"), progress=False)
    loaded = artifact_io.load(tmp_path / "r.safetensors")
    assert isinstance(loaded.model, RepairAutoencoder) and loaded.threshold == art.threshold
    scores, maps = ModelRunner(loaded, torch.device("cpu")).score(_textures(3, 32, 4))
    assert scores.shape == (3,) and maps.shape == (3, 32, 32) and float(maps.min()) >= 0


def test_unknown_error_map_and_future_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown error map"):
        ScoringConfig(error="l2+psnr")
    from inspector.model.autoencoder import Autoencoder, AutoencoderConfig

    path = tmp_path / "m.safetensors"
    artifact_io.save(ModelArtifact(Autoencoder(AutoencoderConfig(image_size=32, widths=(8, 16)))), path)
    assert artifact_io.load(path).scoring.error == "l2"
    original = artifact_io.FORMAT_VERSION
    try:
        artifact_io.FORMAT_VERSION = 99
        artifact_io.save(ModelArtifact(Autoencoder(AutoencoderConfig(image_size=32, widths=(8, 16)))), path)
    finally:
        artifact_io.FORMAT_VERSION = original
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        artifact_io.load(path)


def test_feature_files_written_before_the_global_block_score_as_they_did() -> None:
    header = FeatureReconstructorConfig(image_size=64).to_dict()
    del header["global_block"]
    config = FeatureReconstructorConfig.from_dict(header)
    model = FeatureReconstructor(config)
    # The old layout exactly: backbone up to block 10, no pooled statistics, the basis over the local channels.
    assert config.global_block == 0 and len(model.backbone._blocks) == 11
    assert "pooled_mean" not in model.state_dict() and model.global_basis.shape[1] == config.feature_channels
    assert model(torch.rand(2, 3, 64, 64)).pooled.shape == (2, config.feature_channels)
    scoring = ScoringConfig().to_dict()
    del scoring["global_weight"]
    assert ScoringConfig.from_dict(scoring).global_weight == 1.0
    new = FeatureReconstructor(FeatureReconstructorConfig(image_size=64))
    assert new(torch.rand(2, 3, 64, 64)).pooled.shape == (2, 320)


def test_the_edge_context_makes_a_plain_frame_s_edge_look_like_its_middle() -> None:
    from inspector.model.backbone import load_pretrained

    plain = torch.full((1, 3, 128, 128), 0.3)
    spread = {}
    for context in (0, 16):
        model = FeatureReconstructor(FeatureReconstructorConfig(image_size=128, edge_context=context))
        load_pretrained(model.backbone)
        with torch.no_grad():
            local, _ = model.features(plain)  # (1, C, 16, 16)
        assert local.shape[-2:] == (16, 16)
        middle = local[..., 8, 8][..., None, None]
        spread[context] = (local - middle).abs().mean().item()
    # Zero padding makes a frame's edge a feature of its own (the receptive fields reach across a 128-px frame);
    # replicated context takes much of it away: 2.8 -> 1.6 on average.
    assert spread[16] < 0.7 * spread[0]


def test_each_backbone_loads_its_pinned_weights_and_gives_its_stages_at_the_config_s_block_ids() -> None:
    from inspector.model.backbone import BACKBONES, BLOCK_STAGES, EfficientNetLiteFeatures, load_pretrained

    x = torch.rand(1, 3, 64, 64)
    for variant in BACKBONES.values():
        backbone = load_pretrained(EfficientNetLiteFeatures(variant, last_block=15))  # strict: every weight named
        with torch.no_grad():
            outs = backbone(x, tuple(BLOCK_STAGES))
        assert [(o.shape[1], 64 // o.shape[-1]) for o in outs] == [variant.block_channels(b) for b in BLOCK_STAGES]
    lite0, lite2 = BACKBONES["efficientnet-lite0"], BACKBONES["efficientnet-lite2"]
    assert all(lite0.own_block(b) == b for b in BLOCK_STAGES)  # the ids are Lite0's block indices
    assert [lite2.own_block(b) for b in BLOCK_STAGES] == [6, 10, 14, 19, 20]
    header = FeatureReconstructorConfig(image_size=64, backbone="efficientnet-lite2").to_dict()
    assert FeatureReconstructorConfig.from_dict(header).feature_channels == 48 + 120
    del header["backbone"]  # a file written before the choice: Lite0
    assert FeatureReconstructorConfig.from_dict(header).backbone == "efficientnet-lite0"
    with pytest.raises(ValueError, match="backbone must be one of"):
        FeatureReconstructorConfig(backbone="resnet50")


def test_training_keeps_the_wider_backbone_only_where_it_ranks_the_defects_clearly_higher(tmp_path: Path) -> None:
    good = _textures(24, 128, 1)
    config = FeatureReconstructorConfig(image_size=128, hidden_channels=32, latent_channels=8)
    chosen = {}
    for margin in (-1.0, 1.0):  # -1: a later backbone is always kept; 1: never (AUROCs differ by less)
        train = TrainConfig(feature_steps=50, feature_batch=512, backbone_margin=margin)
        out = tmp_path / f"m{margin}.safetensors"
        art = train_and_calibrate(good, [], out, config, train, torch.device("cpu"), progress=False)
        by_backbone = art.training["backbone_auroc"]
        assert list(by_backbone) == list(train.backbones) and all(0 <= a <= 1 for a in by_backbone.values())
        loaded = artifact_io.load(out)
        assert loaded.config.backbone == art.config.backbone and loaded.scoring == art.scoring
        scores, _ = ModelRunner(loaded, torch.device("cpu")).score(good[:2])
        assert np.allclose(scores, ModelRunner(art, torch.device("cpu")).score(good[:2])[0], rtol=1e-4)
        chosen[margin] = art.config.backbone
    assert chosen == {-1.0: "efficientnet-lite2", 1.0: "efficientnet-lite0"}


def test_feature_files_written_before_the_edge_context_score_as_they_did() -> None:
    header = FeatureReconstructorConfig(image_size=64).to_dict()
    assert header["edge_context"] == 16
    del header["edge_context"]
    assert FeatureReconstructorConfig.from_dict(header).edge_context == 0
    with pytest.raises(ValueError, match="edge_context 8"):
        FeatureReconstructorConfig(edge_context=8)


def test_a_global_term_weighted_zero_is_not_computed_and_scores_the_same(default_model_path: Path) -> None:
    from dataclasses import replace

    from inspector.model.feature_reconstructor import combined_scores, feature_terms

    art = artifact_io.load(default_model_path)
    model = art.model.eval()
    x = torch.from_numpy(_textures(3, art.config.image_size, 4)).permute(0, 3, 1, 2).float() / 255
    calls: list[int] = []
    model.backbone._blocks[15].register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        for weight in (0.0, 2.0):
            scoring = replace(art.scoring, global_weight=weight)
            calls.clear()
            scores, maps = model.score(x, scoring)
            assert bool(calls) == (weight > 0)  # the backbone stops at block 10 when the global term weighs nothing
            local, glob, _, full_maps = feature_terms(model, x, scoring)
            assert glob.min() > 0
            assert torch.allclose(scores, combined_scores(scoring, local, glob)) and torch.equal(maps, full_maps)


@pytest.mark.slow
def test_training_on_one_real_paper_type(tmp_path: Path) -> None:
    root = DATASETS / "paper" / "flr01_tl"
    if not root.is_dir():
        pytest.skip(f"real-photo sets not present at {DATASETS} (see the project README)")
    from inspector.decode.preprocess import list_images, load_images
    from inspector.training.evaluation import evaluate_folder

    paths = list_images(root / "train" / "good")
    out = tmp_path / "paper.safetensors"
    # Lite0 alone: both backbones take twice the minutes; the choice between them is tested on textures above.
    train_and_calibrate(load_images(paths, 256), paths, out, FeatureReconstructorConfig(),
                        TrainConfig(backbones=("efficientnet-lite0",)), torch.device("cpu"), progress=False)
    report = evaluate_folder(out, root, tmp_path / "report", "cpu", baseline=False)
    assert report["image"]["auroc"] >= 0.9
    assert report["pixel"]["auroc"] >= 0.8
    # Cross-fitted (few images): the training images with the highest out-of-fold scores are named.
    highest = report["model"]["highest_good_scores"]
    assert len(highest) == 5 and {h["image"] for h in highest} <= {str(p) for p in paths}
    assert highest[0]["score"] == pytest.approx(report["model"]["calibration"]["good_quantiles"]["max"])
