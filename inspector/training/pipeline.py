"""The `inspector train` pipeline: hold out a calibration split (or cross-fit), train the family the model config
names, calibrate, save; and the facts it records (data fingerprint) and the input size it chooses."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from inspector.decode.preprocess import resize_images
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import AutoencoderConfig
from inspector.model.family import AnomalyModel
from inspector.model.feature_reconstructor import FeatureReconstructorConfig
from inspector.model.registry import family_for_mode
from inspector.model.repair import RepairAutoencoderConfig
from inspector.model.scoring import ScoringConfig
from inspector.model.threshold import CalibrationStats
from inspector.model.tiling import Tiling, input_hw
from inspector.training.calibration import calibrate_artifact, highest_good_scores
from inspector.training.config import TrainConfig
from inspector.training.features import fit_feature_model
from inspector.training.image_autoencoders import train_model


def data_fingerprint(paths: list[Path]) -> str:
    """SHA-256 over file names and contents: which images a model was trained on."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def default_input_size(frame_sides: list[tuple[int, int]], mode: str) -> int:
    """The model input side for images of these (height, width)s (`frame_scale.frame_sample`): 256 px (128 for the from-scratch modes), 320 when the photos are
    large enough that small defects would shrink below the features' reach at 256 (the feature reconstructor's
    backbone input: with edge context, training shrinks the input by its ring)."""
    if mode != "features":
        return 128
    long_sides = [max(hw) for hw in frame_sides]
    long_side = float(np.median(long_sides)) if long_sides else 0.0
    return 320 if long_side >= 448 else 256


def split_for_calibration(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out calibration indices), a fixed random split."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = int(round(n * fraction)) if n > 1 else 0
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def train_and_calibrate(
    images: np.ndarray,
    paths: list[Path],
    out: Path,
    model_config: AutoencoderConfig | RepairAutoencoderConfig | FeatureReconstructorConfig,
    config: TrainConfig,
    device: torch.device,
    *,
    scoring: ScoringConfig | None = None,
    model_id: str = "banana-ae",
    model_version: str | None = None,
    defects: np.ndarray | None = None,
    tiling: Tiling | None = None,
    progress: bool = True,
) -> ModelArtifact:
    """The `inspector train` pipeline: hold out a calibration split (or cross-fit), train, calibrate, save.

    `model_config` picks the family; the scoring, unless given, is the one `config.mode` was measured with.
    Labelled defective images, where given, choose the feature reconstructor's global weight. With a `tiling`
    (feature reconstructor only), `images` are (N, h, w, 3) on its canvas: the model is fitted to their tiles, and
    the threshold set on held-out frames' scores (each its highest tile's), never cross-fitted, as tiles of one
    frame would fall on both sides of a fold."""
    t0 = time.time()
    train_idx, cal_idx = split_for_calibration(len(images), config.calibration_fraction, config.seed)
    if len(cal_idx) == 0:
        cal_idx = train_idx  # a handful of images: calibrate on what we have, and say so below
    scoring = scoring or family_for_mode(config.mode).scoring
    model: AnomalyModel
    calibration: CalibrationStats | None = None
    calibration_scores = "held out"
    pixel_choice: dict[str, float] = {}  # synthetic-defect AUROC of the two map variants, feature mode
    rank_choice: dict[str, float] = {}  # ... and of each global rank tried
    weight_choice: dict[str, float] = {}  # labelled defects' AUROC at each global weight tried
    backbone_choice: dict[str, float] = {}  # the same defects' AUROC with each backbone tried
    memory_choice: dict[str, float] = {}  # synthetic-defect AUROC at each memory weight tried (0: no memory)
    cross_fit_scores: np.ndarray | None = None  # each image's out-of-fold score, where the calibration is cross-fitted
    if isinstance(model_config, FeatureReconstructorConfig):
        fit_images, fit_train, fit_cal, fit_config = images, train_idx, cal_idx, config
        if tiling is not None:  # tile i of frame n is fit image n * T + i
            model_config = replace(model_config, location_tiles=tiling.count)
            fit_images, fit_config = tiling.cut(images), replace(config, cross_fit_folds=1)
            fit_frames = train_idx
            if len(train_idx) * tiling.count > config.max_train_tiles:  # whole frames, as many as fit in memory
                rng = np.random.default_rng(config.seed)
                fit_frames = np.sort(rng.choice(train_idx, config.max_train_tiles // tiling.count, replace=False))
            fit_train, fit_cal = ((idx[:, None] * tiling.count + np.arange(tiling.count)).ravel()
                                  for idx in (fit_frames, cal_idx))
        fit = fit_feature_model(fit_images, fit_train, fit_cal, model_config, fit_config, scoring, device,
                                defects=defects, progress=progress)
        del fit_images
        model, history, scoring, calibration = fit.model, fit.history, fit.scoring, fit.calibration
        if tiling is not None and tiling.tile != model.config.image_size:  # the fit took edge context
            tiling = tiling.resized(model.config.image_size)
        images = resize_images(images, input_hw(model.config.image_size, tiling))  # smaller where it took context
        pixel_choice, rank_choice, weight_choice = fit.pixel_choice, fit.rank_choice, fit.weight_choice
        backbone_choice, cross_fit_scores, memory_choice = fit.backbone_choice, fit.good_scores, fit.memory_choice
        if fit.cross_fitted:
            train_idx = cal_idx = np.arange(len(images))
            calibration_scores = f"out of fold ({config.cross_fit_folds} folds)"
    else:
        model, history = train_model(images[train_idx], model_config, config, device,
                                     checkpoint=out.with_suffix(".ckpt"), progress=progress)
    artifact = ModelArtifact(
        model=model.cpu(),
        scoring=scoring,
        model_id=model_id,
        model_version=model_version or time.strftime("%Y%m%d-%H%M%S"),
        training={
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "n_images": int(len(images)),
            "n_train": int(len(train_idx)),
            "n_calibration": int(len(cal_idx)),
            "calibration_held_out": bool(len(cal_idx) and not np.array_equal(cal_idx, train_idx))
            or calibration is not None,
            "calibration_scores": calibration_scores,
            "pixel_normalise_auroc": pixel_choice,
            "global_rank_auroc": rank_choice,
            "global_weight_auroc": weight_choice,
            "backbone_auroc": backbone_choice,
            "memory_weight_auroc": memory_choice,
            "tiling": tiling.to_dict() if tiling else None,
            "n_defect_examples": 0 if defects is None else int(len(defects)),
            "data_fingerprint": data_fingerprint(paths) if paths else "",
            "final_loss": history[-1] if history else None,
            "seconds": round(time.time() - t0, 1),
            "device": device.type,
        },
        tiling=tiling,
    )
    good_scores: np.ndarray | None
    if calibration is None:
        artifact, good_scores = calibrate_artifact(artifact, images[cal_idx], config.target_false_alarm, device,
                                                   camera_jpeg_quality=config.camera_jpeg_quality)
    else:
        artifact, good_scores = artifact.with_calibration(calibration), cross_fit_scores
    if good_scores is not None:
        names = [str(p) for p in paths] if len(paths) == len(images) else [f"image {i}" for i in range(len(images))]
        artifact.training["highest_good_scores"] = highest_good_scores([names[i] for i in cal_idx], good_scores)
    saved = artifact_io.save(artifact, out)
    checkpoint = out.with_suffix(".ckpt")
    if checkpoint.exists():
        checkpoint.unlink()  # the model file is complete: a rerun starts afresh
    return saved
