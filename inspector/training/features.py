"""Fitting the feature reconstructor: each backbone tried, the edge context where maps are not per location,
the options chosen (`feature_choices`) on its terms (`feature_terms`), and cross-fitted calibration for small sets.
`inspector.training.pipeline.train_and_calibrate` calls `fit_feature_model`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from inspector.decode.preprocess import resize_images
from inspector.model.feature_reconstructor import (
    FeatureReconstructor,
    FeatureReconstructorConfig,
    combined_scores,
)
from inspector.model.scoring import ScoringConfig, image_scores, register
from inspector.model.threshold import CalibrationStats, calibrate, pixel_sample
from inspector.training.config import TrainConfig
from inspector.training.feature_choices import (
    choose_global_rank,
    choose_global_weight,
    choose_memory_weight,
    choose_pixel_normalise,
    drop_memory,
    far_out,
    measure_map_offset,
    synthetic_copies,
    truncate_global_basis,
    with_references,
)
from inspector.training.feature_terms import (
    FeatureTerms,
    backbone_features,
    cross_fitted_terms,
    feature_terms,
    fit_pixel_statistics,
    jpeg_copies,
    scoring_maps,
    train_feature_model,
)

log = logging.getLogger(__name__)


@dataclass
class FeatureFit:
    """What `fit_feature_model` gives `train_and_calibrate`."""

    model: FeatureReconstructor
    history: list[float]  # loss per 100 steps
    scoring: ScoringConfig  # with its references and the per-location choice
    calibration: CalibrationStats | None  # set when cross-fitted (out-of-fold scores); else calibrate held out
    pixel_choice: dict[str, float] = field(default_factory=dict)  # synthetic-defect AUROC of both map variants
    rank_choice: dict[str, float] = field(default_factory=dict)  # synthetic-defect AUROC per global rank tried
    weight_choice: dict[str, float] = field(default_factory=dict)  # labelled defects' AUROC per global weight tried
    backbone_choice: dict[str, float] = field(default_factory=dict)  # the same defects' AUROC per backbone tried
    memory_choice: dict[str, float] = field(default_factory=dict)  # synthetic-defect AUROC per memory weight tried
    good_scores: np.ndarray | None = None  # (N,) the calibration's out-of-fold score of each image, when cross-fitted

    @property
    def cross_fitted(self) -> bool:
        return self.calibration is not None

    @property
    def defect_auroc(self) -> float:
        """How well the fitted model ranks the defects that chose its options above good images."""
        if not self.weight_choice and self.scoring.memory_weight:
            return self.memory_choice[f"{self.scoring.memory_weight:g}"]
        return max((self.weight_choice or self.rank_choice).values(), default=0.0)


def fit_feature_model(images: np.ndarray, train_idx: np.ndarray, cal_idx: np.ndarray,
                      model_config: FeatureReconstructorConfig, config: TrainConfig, scoring: ScoringConfig,
                      device: torch.device, *, defects: np.ndarray | None = None,
                      progress: bool = True) -> FeatureFit:
    """Fit once with each of `config.backbones` and keep the first, unless a later one ranks the defects that chose
    the model's options (labelled ones where given, else synthetic) at least `config.backbone_margin` higher in
    AUROC: the wider backbone costs a fifth of the frames/s, and on some sets loses on real defects what it gains on
    synthetic ones by less than the margin (bench/HISTORY.md, "A wider backbone where it earns its cost")."""
    backbones = config.backbones or (model_config.backbone,)
    chosen: FeatureFit | None = None
    by_backbone: dict[str, float] = {}
    for name in backbones:
        if len(backbones) > 1:
            log.info("fitting with the %s backbone (%d of %d)", name, len(by_backbone) + 1, len(backbones))
        fit = _fit_with_edge_context(images, train_idx, cal_idx, replace(model_config, backbone=name), config,
                                     scoring, device, defects=defects, progress=progress)
        by_backbone[name] = fit.defect_auroc
        if chosen is None or fit.defect_auroc >= chosen.defect_auroc + config.backbone_margin:
            chosen = fit
    assert chosen is not None
    if len(backbones) > 1:
        log.info("backbone %s (AUROC on the defects that chose it: %s)", chosen.model.config.backbone,
                 ", ".join(f"{k} {v:.4f}" for k, v in by_backbone.items()))
    chosen.backbone_choice = by_backbone
    return chosen


def _fit_with_edge_context(images: np.ndarray, train_idx: np.ndarray, cal_idx: np.ndarray,
                           model_config: FeatureReconstructorConfig, config: TrainConfig, scoring: ScoringConfig,
                           device: torch.device, *, defects: np.ndarray | None = None,
                           progress: bool = True) -> FeatureFit:
    """Fit to the (N, S, S, 3) images with the backbone seeing S px (see `_fit_feature_model`). The model config's
    edge context is used where the map is not normalised per location: there good parts lie anywhere, so the
    zero-padded frame edge's response changes with what lies near it and only context removes it; where
    per-location statistics are chosen (aligned parts), they learn the edge as it is. With the context, the
    input shrinks by its ring (the images are resized), so that the backbone's cost stays."""
    context = model_config.edge_context
    fit = _fit_feature_model(images, train_idx, cal_idx, replace(model_config, edge_context=0), config, scoring,
                             device, defects=defects, progress=progress)
    if not context or fit.scoring.pixel_normalise:
        return fit
    size = model_config.image_size - 2 * context
    log.info("parts lie anywhere (no per-location maps): refitting at %d px with %d px of edge context", size, context)
    return _fit_feature_model(resize_images(images, size), train_idx, cal_idx, replace(model_config, image_size=size),
                              config, scoring, device,
                              defects=None if defects is None else resize_images(defects, size), progress=progress)


def _fit_feature_model(images: np.ndarray, train_idx: np.ndarray, cal_idx: np.ndarray,
                       model_config: FeatureReconstructorConfig, config: TrainConfig, scoring: ScoringConfig,
                       device: torch.device, *, defects: np.ndarray | None = None,
                       progress: bool = True) -> FeatureFit:
    """Fit on `train_idx` and set the references on `cal_idx`; or, when fewer than `config.cross_fit_below`
    images would be held out, cross-fit: every image scored out of fold, the final model fitted to all. With
    labelled `defects`, the global term's weight is the one that ranks them highest above the held-out images."""
    ranks = sorted(set(config.global_ranks)) or [model_config.global_components]
    # Truncated to the chosen rank below, and the memory dropped where its term does not earn its lookup.
    model_config = replace(model_config, global_components=max(ranks), memory_size=config.memory_size)
    raw = replace(scoring, pixel_normalise=False)
    if (config.cross_fit_folds > 1 and 0 < len(cal_idx) < config.cross_fit_below
            and len(images) >= 2 * config.cross_fit_folds):
        features = backbone_features(images, model_config, config, device)
        synthetic, synth_masks = synthetic_copies(images, config.seed)
        camera = (jpeg_copies(images, seed=0, qualities=(config.camera_jpeg_quality,) * 2)
                  if config.camera_jpeg_quality else None)
        good, synth, *through_camera = cross_fitted_terms(
            (images, synthetic, *([] if camera is None else [camera])), model_config, config, raw, device, features,
            ranks, progress=progress)
        model, history = train_feature_model(images, model_config, config, device, features=features,
                                             progress=progress)
        del features
        fit_pixel_statistics(model, good.maps)
    else:
        model, history = train_feature_model(images[train_idx], model_config, config, device, progress=progress)
        tiles = model_config.location_tiles  # whole frames' tiles, where tiled
        frames = train_idx.reshape(-1, tiles)
        fit = images[frames[:: max(1, len(frames) // 200)].ravel()]  # the spread of up to 200 training images' errors
        fit_pixel_statistics(model, feature_terms(model, fit, raw, device, ranks, with_memory=False).maps)
        good = feature_terms(model, images[cal_idx], raw, device, ranks)
        synthetic, synth_masks = synthetic_copies(images[cal_idx], config.seed)
        synth = feature_terms(model, synthetic, raw, device, ranks)
        through_camera = []  # calibrated on held-out images by the pipeline
    chosen, pixel_choice = choose_pixel_normalise(model, good.maps, synth.maps, scoring)
    scoring = replace(scoring, pixel_normalise=scoring.pixel_normalise and chosen)
    maps, synth_maps = (scoring_maps(model, t.maps, scoring) for t in (good, synth))
    scoring = replace(scoring, map_offset=measure_map_offset(maps, synth_maps, synth_masks))
    local, synth_local = (image_scores(m, scoring).double().numpy() for m in (maps, synth_maps))
    rank, rank_choice = choose_global_rank(scoring, local, good.glob, synth_local, synth.glob)
    truncate_global_basis(model, rank)
    glob = good.glob[rank]
    scoring = with_references(scoring, local, glob)
    if (far := far_out(local) | far_out(glob)).any():
        log.info("the terms' references leave out %d of %d good images (far out in one term or both)", far.sum(), len(far))
    memory_choice: dict[str, float] = {}
    if good.memory is not None and synth.memory is not None:
        scoring, memory_choice = choose_memory_weight(scoring, config, (local, glob, good.memory),
                                                      (synth_local, synth.glob[rank], synth.memory))
        log.info("memory of %d good regions %s (synthetic-defect AUROC by its weight: %s)", len(model.memory),
                 f"kept, weight {scoring.memory_weight:g}" if scoring.memory_weight else "not kept", memory_choice)
    if not scoring.memory_weight:
        drop_memory(model)
    memory = good.memory if scoring.memory_weight else None
    weight_choice: dict[str, float] = {}
    if defects is not None and len(defects):
        held_out = images if good.out_of_fold else images[cal_idx]
        weight, weight_choice = choose_global_weight(model, scoring, config, device, held_out, defects,
                                                     FeatureTerms(good.maps, {rank: glob}, memory=memory),
                                                     through_camera[0] if through_camera else None)
        scoring = replace(scoring, global_weight=weight)
    if not good.out_of_fold:
        return FeatureFit(model, history, scoring, None, pixel_choice, rank_choice, weight_choice,
                          memory_choice=memory_choice)
    good_scores = combined_scores(scoring, local, glob, memory)
    for camera_terms in through_camera:  # each image's higher score of as-is and as the camera delivers it
        camera_maps = scoring_maps(model, camera_terms.maps, scoring)
        good_scores = np.maximum(good_scores, combined_scores(scoring, image_scores(camera_maps, scoring).double()
                                                              .numpy(), camera_terms.glob[rank],
                                                              camera_terms.memory if memory is not None else None))
    calibration = calibrate(good_scores, pixel_sample(register(maps, scoring.map_offset).numpy()),
                            config.target_false_alarm)
    return FeatureFit(model, history, scoring, calibration, pixel_choice, rank_choice, weight_choice,
                      memory_choice=memory_choice, good_scores=good_scores)
