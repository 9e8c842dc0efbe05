"""The feature reconstructor's options, chosen on defects it never trained on: synthetic ones painted on good
images (per-location maps, the global term's rank, the map's offset) or labelled ones (the global term's weight),
and the references that weigh its two terms."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from inspector.decode.preprocess import to_tensor
from inspector.model.feature_reconstructor import (
    FeatureReconstructor,
    combined_scores,
    normalise_per_location,
)
from inspector.model.scoring import ScoringConfig, image_scores
from inspector.training.anomaly_synth import AnomalySynthConfig, synthesize_anomalies
from inspector.training.config import TrainConfig
from inspector.training.feature_terms import FeatureTerms, feature_terms, jpeg_copies, scoring_maps
from inspector.training.quality_metrics import auroc

log = logging.getLogger(__name__)


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
    views = [feature_terms(model, defects, raw, device)]
    good_views = [good_terms]
    if quality:
        views.append(feature_terms(model, jpeg_copies(defects, seed=0, qualities=(quality, quality)), raw, device))
        good_views.append(good_camera or feature_terms(model, jpeg_copies(good, seed=0, qualities=(quality, quality)),
                                                        raw, device))
    rank = model.config.global_components

    def scores(terms: list[FeatureTerms], weight: float) -> np.ndarray:
        weighted = replace(scoring, global_weight=weight)
        return np.max([combined_scores(weighted, image_scores(scoring_maps(model, t.maps, scoring), scoring)
                                       .double().numpy(), t.glob[rank], t.memory) for t in terms], axis=0)

    labels = np.r_[np.zeros(len(good), bool), np.ones(len(defects), bool)]
    by_weight = {f"{w:g}": round(auroc(labels, np.r_[scores(good_views, w), scores(views, w)]), 4)
                 for w in config.global_weights}
    best = max(by_weight.values())
    weight = min((float(w) for w, a in by_weight.items() if a == best), key=lambda w: abs(w - scoring.global_weight))
    log.info("global weight %g from %d labelled defects against %d held-out good images (AUROC by weight: %s)",
             weight, len(defects), len(good), by_weight)
    return weight, by_weight


def choose_memory_weight(scoring: ScoringConfig, config: TrainConfig, good: tuple[np.ndarray, ...],
                         synth: tuple[np.ndarray, ...]) -> tuple[ScoringConfig, dict[str, float]]:
    """The scoring config with the memory term's reference and weight (of `config.memory_weights`) where one
    ranks synthetic defects of good images `config.memory_margin` higher in AUROC than the model without it;
    else unchanged. `good` and `synth` are each (local scores, global errors, memory scores), with the references
    of the first two already in `scoring`. The margin: the lookup costs a fifth of the frames/s, and on ball screws
    the memory lifts synthetic defects (0.947 -> 0.956) and not the real pits (bench/HISTORY.md, "A memory of good
    regions as a term")."""
    labels = np.r_[np.zeros(len(good[0]), bool), np.ones(len(synth[0]), bool)]
    with_memory = replace(scoring, memory_reference=reference(good[2]))
    by_weight = {"0": round(auroc(labels, np.r_[combined_scores(scoring, *good[:2]),
                                                  combined_scores(scoring, *synth[:2])]), 4)}
    for w in config.memory_weights:
        weighted = replace(with_memory, memory_weight=w)
        by_weight[f"{w:g}"] = round(auroc(labels, np.r_[combined_scores(weighted, *good),
                                                        combined_scores(weighted, *synth)]), 4)
    best = max((f"{w:g}" for w in config.memory_weights), key=lambda w: (by_weight[w], -float(w)), default="0")
    if best == "0" or by_weight[best] < by_weight["0"] + config.memory_margin:
        return scoring, by_weight
    return replace(with_memory, memory_weight=float(best)), by_weight


def drop_memory(model: FeatureReconstructor) -> None:
    """Forget the model's memory of good regions (its term is not used): no lookup, and a smaller file."""
    model.register_buffer("memory", model.memory[:0].clone(), persistent=False)
    model.config = replace(model.config, memory_size=0)


def truncate_global_basis(model: FeatureReconstructor, rank: int) -> None:
    """Keep the first `rank` directions of the global term (fewer when the model was fitted with fewer)."""
    rank = min(rank, model.config.global_components)
    model.global_basis = model.global_basis[:rank].clone()
    model.config = replace(model.config, global_components=rank)


def with_references(scoring: ScoringConfig, local: np.ndarray, glob: np.ndarray) -> ScoringConfig:
    """The scoring config with the two references (mean + 3 std of good images' local and global scores, the
    far-out ones left out), so that neither term's units decide which one raises the alert. The global errors are
    squared and heavy-tailed: on orange the few photos unlike the rest (a drawing, stock photos) tripled the global
    reference, so the term weighed a third of what its weight says (detected 64 %; 76 % with them left out)."""

    return replace(scoring, local_reference=reference(local), global_reference=reference(glob))


def reference(scores: np.ndarray) -> float:
    """A term's good level: mean + 3 std of good images' scores of it, the far-out ones left out."""
    typical = scores[~far_out(scores)]
    return float(max(typical.mean() + 3 * typical.std(), 1e-12))


def far_out(values: np.ndarray) -> np.ndarray:
    """(N,) -> (N,) bool: the values beyond Tukey's outer fence, Q3 + 3 IQR (of orange's 155 out-of-fold
    scores, 14 in one term or the other)."""
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return values > q3 + 3 * (q3 - q1)
