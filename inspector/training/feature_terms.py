"""What the feature reconstructor makes of images while it is fitted: the backbone's features (computed once for
every fold, with JPEG and mirror copies), the two bottlenecks' training, and the raw terms (region-error maps and
global errors) of images scored in or out of fold. `inspector.training.features` puts them together."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inspector.decode.preprocess import to_tensor
from inspector.model.backbone import load_pretrained
from inspector.model.feature_reconstructor import (
    FeatureReconstructor,
    FeatureReconstructorConfig,
    feature_maps,
    memory_maps,
    normalise_per_location,
)
from inspector.model.runtime import fuse_conv_bn
from inspector.model.scoring import ScoringConfig, image_scores
from inspector.training.config import TrainConfig

log = logging.getLogger(__name__)


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
    if model_config.memory_size:
        model.memory = region_coreset(regions, model_config.memory_size, config.seed).to(device)
        model.config = replace(model.config, memory_size=len(model.memory))
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


def region_coreset(regions: torch.Tensor, size: int, seed: int, sample: int = 20_000) -> torch.Tensor:
    """(R, C) region features -> (size, C) of them that cover the rest (greedy k-centre: each next one the
    farthest from those chosen), picked from a random sample of them: the cost is bounded whatever the set."""
    g = torch.Generator().manual_seed(seed)
    x = regions[torch.randperm(len(regions), generator=g)[:sample]].float()
    size = min(size, len(x))
    squared = x.square().sum(dim=1)
    chosen = [0]
    dist = (squared - 2 * x @ x[0] + squared[0]).clamp_min(0)  # (sample,) squared distance to the nearest chosen
    for _ in range(size - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, squared - 2 * x @ x[i] + squared[i])
    return x[chosen].clone()


class FeatureTerms(NamedTuple):
    """What a feature reconstructor makes of N images, before the references are applied."""

    maps: np.ndarray  # (N, S, S) region-error maps, with `pixel_normalise` as the scoring config given says
    glob: dict[int, np.ndarray]  # global rank -> (N,) errors of the mean feature vector through that many directions
    out_of_fold: bool = False  # scored by models that did not see the images (cross-fitting)
    memory: np.ndarray | None = None  # (N,) memory scores: the image score of the nearest-memory distance map


@torch.inference_mode()
def feature_terms(model: FeatureReconstructor, images: np.ndarray, scoring: ScoringConfig,
                   device: torch.device, ranks: list[int] | None = None, batch: int = 32, *,
                   with_memory: bool = True) -> FeatureTerms:
    """The maps and, at each of `ranks` (the model's own when None), the global errors, and the memory scores
    where the model has a memory (and `with_memory`): one backbone pass per image."""
    fused = fuse_conv_bn(model)
    maps, pooled, memory = [], [], []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch], device)
        out = fused(x)
        maps.append(feature_maps(fused, out, x.shape[-1], scoring).float().cpu())
        pooled.append(out.pooled.double().cpu())
        if with_memory and len(model.memory):
            memory.append(image_scores(memory_maps(fused, out, x.shape[-1], scoring), scoring).double().cpu())
    every = torch.cat(pooled)  # (N, G) standardised mean feature vectors
    glob = {r: pooled_errors(model, every, r) for r in (ranks or [model.config.global_components])}
    return FeatureTerms(torch.cat(maps).numpy(), glob, memory=torch.cat(memory).numpy() if memory else None)


def pooled_errors(model: FeatureReconstructor, pooled: torch.Tensor, rank: int) -> np.ndarray:
    """(N, G) standardised mean feature vectors -> (N,) their squared errors rebuilt through the first `rank`
    directions of the model's global basis (what `FeatureReconstructor.reconstruct_pooled` does with all of them)."""
    basis = model.global_basis[:rank].double().cpu()  # rows sorted by singular value, so any prefix is a PCA
    centred = pooled.double() - model.global_mean.double().cpu()
    return (centred - (centred @ basis.T) @ basis).square().mean(dim=1).numpy()


def scoring_maps(model: FeatureReconstructor, raw_maps: np.ndarray, scoring: ScoringConfig) -> torch.Tensor:
    """Raw region-error maps (N, S, S) as the scoring config scores them (normalised per location or not), not
    yet registered."""
    maps = torch.from_numpy(raw_maps)
    if scoring.pixel_normalise:
        maps = normalise_per_location(maps, model.pixel_mean.cpu(), model.pixel_std.cpu())
    return maps


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
        memory = np.zeros(len(images)) if model_config.memory_size else None
        terms.append(FeatureTerms(maps, {r: np.zeros(len(images)) for r in ranks}, True, memory))
    for k, fold in enumerate(folds):
        rest = np.setdiff1d(np.arange(len(images)), fold)
        log.info("cross-fitting: fold %d of %d", k + 1, len(folds))
        model, _ = train_feature_model(images[rest], model_config, config, device, features=features.subset(rest),
                                       progress=progress)
        for source, whole in zip(sources, terms, strict=True):
            part = feature_terms(model, source[fold], scoring, device, ranks)
            whole.maps[fold] = part.maps
            for r in ranks:
                whole.glob[r][fold] = part.glob[r]
            if whole.memory is not None and part.memory is not None:
                whole.memory[fold] = part.memory
    return terms


def fit_pixel_statistics(model: FeatureReconstructor, maps: np.ndarray) -> None:
    """Store the per-location mean and spread of good images' raw region-error maps (N, S, S) in the model (per
    tile position where it is tiled: the maps are then whole frames' tiles in order)."""
    t = torch.from_numpy(maps).double()
    if model.pixel_mean.dim() == 3:
        t = t.reshape(-1, *model.pixel_mean.shape)  # (frames, T, S, S)
    model.pixel_mean.copy_(t.mean(dim=0).float())
    model.pixel_std.copy_(t.std(dim=0).float() if len(t) > 1 else torch.zeros_like(t[0]).float())
