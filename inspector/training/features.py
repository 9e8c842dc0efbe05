"""Fitting the feature reconstructor: backbone features (with JPEG and mirror copies), the two bottlenecks, the
references that weigh its local and global terms, per-location normalisation and the global term's rank chosen
and the map's offset measured by synthetic defects, and cross-fitted calibration for small sets.
`inspector.training.pipeline.train_and_calibrate` calls `fit_feature_model`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inspector.decode.preprocess import resize_images, to_tensor
from inspector.model.backbone import load_pretrained
from inspector.model.feature_reconstructor import (
    FeatureReconstructor,
    FeatureReconstructorConfig,
    combined_scores,
    feature_maps,
    normalise_per_location,
)
from inspector.model.runtime import fuse_conv_bn
from inspector.model.scoring import ScoringConfig, image_scores, register
from inspector.model.threshold import CalibrationStats, calibrate, pixel_sample
from inspector.training.anomaly_synth import AnomalySynthConfig, synthesize_anomalies
from inspector.training.config import TrainConfig
from inspector.training.quality_metrics import auroc

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
    good_scores: np.ndarray | None = None  # (N,) the calibration's out-of-fold score of each image, when cross-fitted

    @property
    def cross_fitted(self) -> bool:
        return self.calibration is not None

    @property
    def defect_auroc(self) -> float:
        """How well the fitted model ranks the defects that chose its options above good images."""
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
    model_config = replace(model_config, global_components=max(ranks))  # truncated to the chosen rank below
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
        fit = images[train_idx][:: max(1, len(train_idx) // 200)]  # the spread of up to 200 training images' errors
        fit_pixel_statistics(model, _feature_terms(model, fit, raw, device, ranks).maps)
        good = _feature_terms(model, images[cal_idx], raw, device, ranks)
        synthetic, synth_masks = synthetic_copies(images[cal_idx], config.seed)
        synth = _feature_terms(model, synthetic, raw, device, ranks)
        through_camera = []  # calibrated on held-out images by the pipeline
    chosen, pixel_choice = choose_pixel_normalise(model, good.maps, synth.maps, scoring)
    scoring = replace(scoring, pixel_normalise=scoring.pixel_normalise and chosen)
    maps, synth_maps = (_scoring_maps(model, t.maps, scoring) for t in (good, synth))
    scoring = replace(scoring, map_offset=measure_map_offset(maps, synth_maps, synth_masks))
    local, synth_local = (image_scores(m, scoring).double().numpy() for m in (maps, synth_maps))
    rank, rank_choice = choose_global_rank(scoring, local, good.glob, synth_local, synth.glob)
    truncate_global_basis(model, rank)
    glob = good.glob[rank]
    scoring = with_references(scoring, local, glob)
    weight_choice: dict[str, float] = {}
    if defects is not None and len(defects):
        held_out = images if good.out_of_fold else images[cal_idx]
        weight, weight_choice = choose_global_weight(model, scoring, config, device, held_out, defects,
                                                     FeatureTerms(good.maps, {rank: glob}),
                                                     through_camera[0] if through_camera else None)
        scoring = replace(scoring, global_weight=weight)
    if not good.out_of_fold:
        return FeatureFit(model, history, scoring, None, pixel_choice, rank_choice, weight_choice)
    good_scores = combined_scores(scoring, local, glob)
    for camera_terms in through_camera:  # each image's higher score of as-is and as the camera delivers it
        camera_maps = _scoring_maps(model, camera_terms.maps, scoring)
        good_scores = np.maximum(good_scores, combined_scores(scoring, image_scores(camera_maps, scoring).double()
                                                              .numpy(), camera_terms.glob[rank]))
    calibration = calibrate(good_scores, pixel_sample(register(maps, scoring.map_offset).numpy()),
                            config.target_false_alarm)
    return FeatureFit(model, history, scoring, calibration, pixel_choice, rank_choice, weight_choice,
                      good_scores=good_scores)


class BackboneFeatures(NamedTuple):
    """Pretrained features of V views of N images, not yet standardised."""

    local: torch.Tensor  # (V, N, C, h, w)
    pooled: torch.Tensor  # (V, N, G) the global block's mean feature vectors

    def subset(self, index: np.ndarray) -> "BackboneFeatures":
        return BackboneFeatures(self.local[:, index], self.pooled[:, index])


@torch.no_grad()
def _backbone_features(model: FeatureReconstructor, images: np.ndarray, device: torch.device,
                       batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S, 3) uint8 -> ((N, C, h, w), (N, G)) float32 on the CPU, with the model's standardisation."""
    model.eval()
    parts = [model.features(to_tensor(images[i : i + batch], device)) for i in range(0, len(images), batch)]
    return torch.cat([p[0].float().cpu() for p in parts]), torch.cat([p[1].float().cpu() for p in parts])


def backbone_features(images: np.ndarray, model_config: FeatureReconstructorConfig, config: TrainConfig,
                      device: torch.device) -> BackboneFeatures:
    """Pretrained features of the images, of JPEG copies of them, and, for a small set, of their mirror images
    (exact, and cheap next to a second photo shoot)."""
    extractor = FeatureReconstructor(replace(model_config, global_components=1))
    load_pretrained(extractor.backbone)
    extractor.to(device)
    # Cameras publish JPEG: its 8x8 blocks line up with the stride-8 features, and a model that never saw them
    # scores every compressed good frame as a defect (ten times the threshold on synthetic bananas at q90).
    views = [images, jpeg_copies(images, config.seed)]
    if config.augment and len(images) < 200:
        views += [np.ascontiguousarray(images[:, :, ::-1]), np.ascontiguousarray(images[:, ::-1])]
    local, pooled = zip(*(_backbone_features(extractor, v, device) for v in views))
    return BackboneFeatures(torch.stack(local), torch.stack(pooled))


def jpeg_copies(images: np.ndarray, seed: int, qualities: tuple[int, int] = (60, 95)) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB -> the same images through JPEG at a random quality each (the cameras' range)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        quality = int(rng.integers(qualities[0], qualities[1] + 1))
        data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert decoded is not None  # what imencode has just written decodes
        out[i] = decoded[:, :, ::-1]
    return out


def train_feature_model(
    images: np.ndarray,
    model_config: FeatureReconstructorConfig,
    config: TrainConfig,
    device: torch.device,
    *,
    features: BackboneFeatures | None = None,
    progress: bool = True,
) -> tuple[FeatureReconstructor, list[float]]:
    """Fit the feature reconstructor to (N, S, S, 3) uint8 RGB good images; returns it and the loss per 100 steps.

    1. frozen backbone features of every image (`features`, from `backbone_features`, when already computed),
    2. per-channel standardisation and the linear autoencoder of the global block's mean vector (closed form,
       by SVD, on the originals and their JPEG copies),
    3. the per-region autoencoder on random regions of all images (its cost does not grow with the set).
    """
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    rank = min(model_config.global_components, max(1, len(images) // 2))  # fewer directions than images
    model_config = replace(model_config, global_components=rank)
    model = FeatureReconstructor(model_config)
    load_pretrained(model.backbone)
    model.to(device)
    if features is None:
        features = backbone_features(images, model_config, config, device)
    feats = features.local.flatten(0, 1)  # (V*N, C, h, w)
    mean = feats.mean(dim=(0, 2, 3), keepdim=True)
    std = feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    model.feature_mean.copy_(mean.to(device))
    model.feature_std.copy_(std.to(device))
    feats = (feats - mean) / std
    if model_config.global_block:
        pooled = features.pooled[:2].flatten(0, 1).double()  # (2N, G): originals and their JPEG copies
        pooled_mean, pooled_std = pooled.mean(dim=0), pooled.std(dim=0).clamp_min(1e-6)
        model.pooled_mean.copy_(pooled_mean.float().to(device))
        model.pooled_std.copy_(pooled_std.float().to(device))
        pooled = (pooled - pooled_mean) / pooled_std
    else:
        pooled = feats[: 2 * len(images)].mean(dim=(2, 3)).double()
    centre = pooled.mean(dim=0)
    _, _, vh = torch.linalg.svd(pooled - centre, full_matrices=False)
    model.global_mean.copy_(centre.float().to(device))
    model.global_basis.copy_(vh[:rank].float().to(device))

    regions = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])  # (V*N*h*w, C)
    local = model.local.train()
    opt = torch.optim.AdamW(local.parameters(), lr=config.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.feature_steps)
    history: list[float] = []
    running = 0.0
    bar = tqdm(range(config.feature_steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        batch = regions[torch.randint(len(regions), (config.feature_batch,), generator=g)].to(device)
        batch = batch[:, :, None, None]  # (B, C, 1, 1): the 1x1 convolutions see one region each
        loss = F.mse_loss(local(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == config.feature_steps:
            history.append(running / (step % 100 + 1))
            running = 0.0
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return model, history


class FeatureTerms(NamedTuple):
    """What a feature reconstructor makes of N images, before the references are applied."""

    maps: np.ndarray  # (N, S, S) region-error maps, with `pixel_normalise` as the scoring config given says
    glob: dict[int, np.ndarray]  # global rank -> (N,) errors of the mean feature vector through that many directions
    out_of_fold: bool = False  # scored by models that did not see the images (cross-fitting)


@torch.inference_mode()
def _feature_terms(model: FeatureReconstructor, images: np.ndarray, scoring: ScoringConfig,
                   device: torch.device, ranks: list[int] | None = None, batch: int = 32) -> FeatureTerms:
    """The maps and, at each of `ranks` (the model's own when None), the global errors: one backbone pass per
    image."""
    fused = fuse_conv_bn(model)
    maps, pooled = [], []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch], device)
        out = fused(x)
        maps.append(feature_maps(fused, out, x.shape[-1], scoring).float().cpu())
        pooled.append(out.pooled.double().cpu())
    every = torch.cat(pooled)  # (N, G) standardised mean feature vectors
    glob = {r: pooled_errors(model, every, r) for r in (ranks or [model.config.global_components])}
    return FeatureTerms(torch.cat(maps).numpy(), glob)


def pooled_errors(model: FeatureReconstructor, pooled: torch.Tensor, rank: int) -> np.ndarray:
    """(N, G) standardised mean feature vectors -> (N,) their squared errors rebuilt through the first `rank`
    directions of the model's global basis (what `FeatureReconstructor.reconstruct_pooled` does with all of them)."""
    basis = model.global_basis[:rank].double().cpu()  # rows sorted by singular value, so any prefix is a PCA
    centred = pooled.double() - model.global_mean.double().cpu()
    return (centred - (centred @ basis.T) @ basis).square().mean(dim=1).numpy()


def _scoring_maps(model: FeatureReconstructor, raw_maps: np.ndarray, scoring: ScoringConfig) -> torch.Tensor:
    """Raw region-error maps (N, S, S) as the scoring config scores them (normalised per location or not), not
    yet registered."""
    maps = torch.from_numpy(raw_maps)
    if scoring.pixel_normalise:
        maps = normalise_per_location(maps, model.pixel_mean.cpu(), model.pixel_std.cpu())
    return maps


def measure_map_offset(good_maps: torch.Tensor, synth_maps: torch.Tensor, masks: np.ndarray,
                       min_pairs: int = 5) -> tuple[float, float]:
    """(dx, dy) by which maps' content lies right of and below the defects that caused it: the median, over
    images, of the centroid of what one synthetic defect adds to an image's map (its upper half: what a
    threshold keeps) minus the centroid of the defect's mask. (N, S, S) maps of the images and of their
    synthetic copies, unregistered, and the copies' (N, S, S) masks; (0, 0) with fewer than `min_pairs` usable."""
    added = (synth_maps - good_maps).clamp_min(0).double().numpy()  # (N, S, S): the defect's own response
    ys, xs = np.mgrid[: added.shape[1], : added.shape[2]]
    offsets = []
    for response, mask in zip(added, masks):
        peak = response.max()
        if peak <= 0 or not mask.any():
            continue
        w = response * (response > 0.5 * peak)
        offsets.append(((w * xs).sum() / w.sum() - xs[mask].mean(), (w * ys).sum() / w.sum() - ys[mask].mean()))
    if len(offsets) < min_pairs:
        log.warning("map offset not measured: %d usable synthetic defects of %d", len(offsets), len(masks))
        return 0.0, 0.0
    dx, dy = np.median(np.array(offsets), axis=0)
    log.info("map offset (%.2f, %.2f) px from %d synthetic defects", dx, dy, len(offsets))
    return round(float(dx), 2), round(float(dy), 2)


def choose_global_rank(scoring: ScoringConfig, local: np.ndarray, glob: dict[int, np.ndarray],
                       synth_local: np.ndarray, synth_glob: dict[int, np.ndarray]) -> tuple[int, dict[str, float]]:
    """The global term's rank that ranks synthetic defects of good images highest in the combined score: few
    directions where good parts vary little (aligned spindles: 16 instead of 32 lifts real pits 0.950 -> 0.955), more
    where scenes vary (the bananas). Ties go to the fewer directions."""
    labels = np.r_[np.zeros(len(local), bool), np.ones(len(synth_local), bool)]
    by_rank: dict[str, float] = {}
    for rank in sorted(glob):
        refs = with_references(scoring, local, glob[rank])
        scores = np.r_[combined_scores(refs, local, glob[rank]), combined_scores(refs, synth_local, synth_glob[rank])]
        by_rank[str(rank)] = round(auroc(labels, scores), 4)
    best = max(by_rank.values())
    return min(int(r) for r, a in by_rank.items() if a == best), by_rank


def choose_global_weight(model: FeatureReconstructor, scoring: ScoringConfig, config: TrainConfig,
                         device: torch.device, good: np.ndarray, defects: np.ndarray, good_terms: FeatureTerms,
                         good_camera: FeatureTerms | None) -> tuple[float, dict[str, float]]:
    """The weight of the global term (of `config.global_weights`) under which labelled defective images score
    highest above the held-out good images (AUROC), each image scored as calibration scores it: the higher of
    as-is and through the camera's JPEG. Which term a line's defects move is the line's: whole-fruit rot moves the
    global term, a bruise the local one, and synthetic defects cannot tell (bench/HISTORY.md). Ties go to the
    weight nearest the default. `good_terms` are the held-out images' raw terms at the model's rank;
    `good_camera` their camera copies' when already scored out of fold."""
    raw = replace(scoring, pixel_normalise=False)
    quality = config.camera_jpeg_quality
    views = [_feature_terms(model, defects, raw, device)]
    good_views = [good_terms]
    if quality:
        views.append(_feature_terms(model, jpeg_copies(defects, seed=0, qualities=(quality, quality)), raw, device))
        good_views.append(good_camera or _feature_terms(model, jpeg_copies(good, seed=0, qualities=(quality, quality)),
                                                        raw, device))
    rank = model.config.global_components

    def scores(terms: list[FeatureTerms], weight: float) -> np.ndarray:
        weighted = replace(scoring, global_weight=weight)
        return np.max([combined_scores(weighted, image_scores(_scoring_maps(model, t.maps, scoring), scoring)
                                       .double().numpy(), t.glob[rank]) for t in terms], axis=0)

    labels = np.r_[np.zeros(len(good), bool), np.ones(len(defects), bool)]
    by_weight = {f"{w:g}": round(auroc(labels, np.r_[scores(good_views, w), scores(views, w)]), 4)
                 for w in config.global_weights}
    best = max(by_weight.values())
    weight = min((float(w) for w, a in by_weight.items() if a == best), key=lambda w: abs(w - scoring.global_weight))
    log.info("global weight %g from %d labelled defects against %d held-out good images (AUROC by weight: %s)",
             weight, len(defects), len(good), by_weight)
    return weight, by_weight


def truncate_global_basis(model: FeatureReconstructor, rank: int) -> None:
    """Keep the first `rank` directions of the global term (fewer when the model was fitted with fewer)."""
    rank = min(rank, model.config.global_components)
    model.global_basis = model.global_basis[:rank].clone()
    model.config = replace(model.config, global_components=rank)


def with_references(scoring: ScoringConfig, local: np.ndarray, glob: np.ndarray) -> ScoringConfig:
    """The scoring config with the two references (mean + 3 std of good images' local and global scores), so
    that neither term's units decide which one raises the alert."""

    def reference(s: np.ndarray) -> float:
        return float(max(s.mean() + 3 * s.std(), 1e-12))

    return replace(scoring, local_reference=reference(local), global_reference=reference(glob))


def cross_fitted_terms(sources: tuple[np.ndarray, ...], model_config: FeatureReconstructorConfig,
                       config: TrainConfig, scoring: ScoringConfig, device: torch.device, features: BackboneFeatures,
                       ranks: list[int], *, progress: bool = True) -> list[FeatureTerms]:
    """Out-of-fold terms of every image of each source: the good images first (whose `features` the folds are fitted
    to), then copies of them in the same order (synthetic anomalies, the camera's JPEG); each fold scored by a
    model fitted to the others' features (the backbone runs once for all folds)."""
    images = sources[0]
    folds = np.array_split(np.random.default_rng(config.seed).permutation(len(images)), config.cross_fit_folds)
    terms: list[FeatureTerms] = []
    for _ in sources:
        maps = np.zeros((len(images), *images.shape[1:3]), np.float32)
        terms.append(FeatureTerms(maps, {r: np.zeros(len(images)) for r in ranks}, out_of_fold=True))
    for k, fold in enumerate(folds):
        rest = np.setdiff1d(np.arange(len(images)), fold)
        log.info("cross-fitting: fold %d of %d", k + 1, len(folds))
        model, _ = train_feature_model(images[rest], model_config, config, device, features=features.subset(rest),
                                       progress=progress)
        for source, whole in zip(sources, terms, strict=True):
            part = _feature_terms(model, source[fold], scoring, device, ranks)
            whole.maps[fold] = part.maps
            for r in ranks:
                whole.glob[r][fold] = part.glob[r]
    return terms


def synthetic_copies(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 -> each image with one small synthetic defect (a blob of another image's recoloured
    texture, a flat colour or noise), and the (N, S, S) bool masks of the defects: to choose between scoring
    variants and to measure the map's offset without real defects."""
    config = AnomalySynthConfig(probability=1.0, min_opacity=0.3, max_opacity=0.9, shape_share=1.0,
                                shape_max_area=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    out, masks = [], []
    for i in range(0, len(images), 32):
        clean = to_tensor(images[i : i + 32], "cpu", channels_last=False)  # (B, 3, S, S)
        anomalous, mask = synthesize_anomalies(clean, config, g)
        out.append((anomalous * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        masks.append(mask[:, 0].numpy() > 0.5)
    return np.concatenate(out), np.concatenate(masks)


def choose_pixel_normalise(model: FeatureReconstructor, good_maps: np.ndarray, synth_maps: np.ndarray,
                           scoring: ScoringConfig) -> tuple[bool, dict[str, float]]:
    """Per-location normalisation helps where parts are aligned (a spindle, a sheet) and hurts where produce
    lies anywhere on the belt: keep it only if it ranks synthetic defects of good images clearly better."""
    labels = np.r_[np.zeros(len(good_maps), bool), np.ones(len(synth_maps), bool)]
    both = torch.from_numpy(np.concatenate([good_maps, synth_maps]))
    raw = auroc(labels, image_scores(both, scoring).numpy())
    normalised = auroc(labels, image_scores(normalise_per_location(both, model.pixel_mean.cpu(),
                                                                   model.pixel_std.cpu()), scoring).numpy())
    return bool(normalised > raw + 0.005), {"raw": round(raw, 4), "per_location": round(normalised, 4)}


def fit_pixel_statistics(model: FeatureReconstructor, maps: np.ndarray) -> None:
    """Store the per-location mean and spread of good images' raw region-error maps (N, S, S) in the model."""
    t = torch.from_numpy(maps).double()
    model.pixel_mean.copy_(t.mean(dim=0).float())
    model.pixel_std.copy_(t.std(dim=0).float() if len(maps) > 1 else torch.zeros_like(t[0]).float())
