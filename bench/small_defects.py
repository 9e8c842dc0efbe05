"""Issue 29's first measurements: would a memory of good region features, native-resolution tiles or the scoring's
knobs lift the feature reconstructor on a development set? Each experiment reads a model trained by
`inspector train` on the set (every option at its default) and prints image AUROCs on the set's test images.

    .venv/bin/inspector train --data ../shared/datasets/ballscrew/train/good --out /tmp/ballscrew.safetensors
    .venv/bin/python bench/small_defects.py memory  /tmp/ballscrew.safetensors ../shared/datasets/ballscrew
    .venv/bin/python bench/small_defects.py knobs   /tmp/ballscrew.safetensors ../shared/datasets/ballscrew
    .venv/bin/python bench/small_defects.py tile    ../shared/datasets/ballscrew /tmp/ballscrew-tiles  # then train
    .venv/bin/python bench/small_defects.py tiled   /tmp/ballscrew-tiles.safetensors /tmp/ballscrew-tiles
    .venv/bin/inspector synth --out /tmp/bananas-test --train 0 --test-good 400 --test-per-defect 40 --seed 2
    .venv/bin/python bench/small_defects.py terms   models/banana-ae-v1.safetensors /tmp/bananas-test --jpeg 90
    .venv/bin/python bench/small_defects.py global  models/banana-ae-v1.safetensors /tmp/bananas-test \
        --train data/bananas/train/good   # after `make model`

`memory`: the nearest-neighbour distance of each region's features to a memory of training regions (a random
sample or a greedy coreset, PatchCore's selection on a random projection), alone and added to the model's terms.
`knobs`: the smoothing, the top-k share and the global term's weight. `tile`: square tiles of each image at its
own resolution (a set to train on); `tiled`: a tiled model's image score as the highest of its tiles'.
`terms`: the local and global terms summed at each global weight, and their maximum, per defect kind: image AUROC
and the share detected above the 99 % quantile of the good test images' scores (optionally through JPEG, as a
camera sends them). `global`: the global term as the model computes it (the squared residual of the mean feature
vector after its first directions) against Mahalanobis distances (every direction divided by its good variance,
shrunk towards the mean variance), the basis refitted on 80 % of the first 600 training images and their JPEG
copies, the reference on the other 20 %.
See bench/HISTORY.md ("Small defects: first measurements").
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.decode.preprocess import IMAGE_SUFFIXES, list_images, load_images, to_tensor
from inspector.model.artifact import load
from inspector.model.feature_reconstructor import (
    FeatureReconstructor,
    feature_maps,
    feature_terms,
    normalise_per_location,
)
from inspector.model.scoring import ScoringConfig, image_scores, smooth
from inspector.training.evaluation import _test_sets
from inspector.training.feature_terms import jpeg_copies
from inspector.training.quality_metrics import auroc

BATCH = 16


def _model(path: Path) -> tuple[FeatureReconstructor, ScoringConfig]:
    artifact = load(path)
    if not isinstance(artifact.model, FeatureReconstructor):
        raise SystemExit(f"{path} is not a feature reconstructor")
    return artifact.model.eval(), artifact.scoring


def _test_images(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    sets = _test_sets(root)
    paths = [p for kind in sets for p in sets[kind]]
    labels = np.array([kind != "good" for kind in sets for _ in sets[kind]])
    return load_images(paths, size), labels


@torch.inference_mode()
def _terms(model: FeatureReconstructor, scoring: ScoringConfig, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local scores, global errors) before the references, (N,) each."""
    local, glob = [], []
    for i in range(0, len(images), BATCH):
        part_local, part_glob, _, _ = feature_terms(model, to_tensor(images[i : i + BATCH], "cpu"), scoring)
        local.append(part_local)
        glob.append(part_glob)
    return torch.cat(local).numpy(), torch.cat(glob).numpy()


@torch.inference_mode()
def _regions(model: FeatureReconstructor, images: np.ndarray) -> torch.Tensor:
    """(N*h*w, C) standardised region features of the images."""
    parts = [model.features(to_tensor(images[i : i + BATCH], "cpu"))[0] for i in range(0, len(images), BATCH)]
    f = torch.cat(parts).float()
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


def _greedy_coreset(regions: torch.Tensor, size: int, rng: np.random.Generator, candidates: int = 60_000,
                    dims: int = 64) -> torch.Tensor:
    """PatchCore's greedy k-centre selection, on a random projection of a random sample of the regions."""
    pool = regions[torch.from_numpy(rng.choice(len(regions), min(candidates, len(regions)), replace=False))]
    projected = pool @ (torch.randn(pool.shape[1], dims, generator=torch.Generator().manual_seed(0)) / dims**0.5)
    chosen = [0]
    distance = (projected - projected[0]).square().sum(1)
    for _ in range(size - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (projected - projected[chosen[-1]]).square().sum(1))
    return pool[chosen]


@torch.inference_mode()
def _memory_scores(model: FeatureReconstructor, scoring: ScoringConfig, images: np.ndarray,
                   memory: torch.Tensor) -> np.ndarray:
    """(N,) image scores of the nearest-neighbour distance maps, smoothed and reduced as the model's own maps."""
    size, norms, scores = model.config.image_size, memory.square().sum(1), []
    for i in range(0, len(images), 8):
        f = model.features(to_tensor(images[i : i + 8], "cpu"))[0].float()
        b, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, c)
        nearest = (q.square().sum(1, keepdim=True) - 2 * q @ memory.T + norms).clamp_min(0).amin(1)
        maps = F.interpolate(nearest.reshape(b, 1, h, w), size=(size, size), mode="bilinear", align_corners=False)
        scores.append(image_scores(smooth(maps[:, 0], scoring.smoothing_sigma), scoring))
    return torch.cat(scores).numpy()


def _reference(scores: np.ndarray) -> float:
    return float(scores.mean() + 3 * scores.std())


def memory(args: argparse.Namespace) -> None:
    model, scoring = _model(args.model)
    size, rng = model.config.image_size, np.random.default_rng(0)
    paths = list_images(args.set / "train" / "good")
    order = rng.permutation(len(paths))
    held = max(8, len(paths) // 5)  # scored for the memory term's reference, never in the memory
    reference_images = load_images([paths[i] for i in order[:held]], size)
    t0 = time.time()
    regions = _regions(model, load_images([paths[i] for i in order[held:]], size))
    print(f"{len(regions)} training regions of {regions.shape[1]} channels ({time.time() - t0:.0f} s)")
    images, labels = _test_images(args.set, size)
    local, glob = _terms(model, scoring, images)
    local, glob = local / scoring.local_reference, scoring.global_weight * glob / scoring.global_reference
    print(f"the model: {auroc(labels, local + glob):.4f} (local term {auroc(labels, local):.4f}, global "
          f"{auroc(labels, glob):.4f})")
    for size_ in args.sizes:
        for name, bank in (("random", regions[torch.from_numpy(rng.choice(len(regions), size_, replace=False))]),
                           ("coreset", _greedy_coreset(regions, size_, rng))):
            t0 = time.time()
            knn = _memory_scores(model, scoring, images, bank)
            ms = 1000 * (time.time() - t0) / len(images)
            knn = knn / _reference(_memory_scores(model, scoring, reference_images, bank))
            print(f"memory {name} {size_}: alone {auroc(labels, knn):.4f}, + global {auroc(labels, knn + glob):.4f}, "
                  f"+ local {auroc(labels, knn + local):.4f}, all three {auroc(labels, knn + local + glob):.4f} "
                  f"({ms:.0f} ms per image on the CPU)")


def knobs(args: argparse.Namespace) -> None:
    model, scoring = _model(args.model)
    size = model.config.image_size
    images, labels = _test_images(args.set, size)
    raw, glob = [], []
    with torch.inference_mode():
        for i in range(0, len(images), BATCH):
            out = model(to_tensor(images[i : i + BATCH], "cpu"))
            error = (out.local - out.local_recon).square().mean(dim=1, keepdim=True)
            raw.append(F.interpolate(error, size=(size, size), mode="bilinear", align_corners=False)[:, 0])
            glob.append((out.pooled - out.pooled_recon).square().mean(dim=1))
    maps, global_term = torch.cat(raw), torch.cat(glob).numpy() / scoring.global_reference
    print(f"stored: sigma {scoring.smoothing_sigma}, top-k {scoring.topk_fraction}, global weight "
          f"{scoring.global_weight}, per-location {scoring.pixel_normalise}; cells: local alone / with the global term")
    for sigma in (2.0, 3.5, 5.0, 8.0):
        smoothed = smooth(maps, sigma)
        if scoring.pixel_normalise:  # the stored spread was fitted at the stored sigma: near enough to rank
            smoothed = normalise_per_location(smoothed, model.pixel_mean, model.pixel_std)
        cells = []
        for share in (0.0005, 0.002, 0.005, 0.01, 0.02):
            local = image_scores(smoothed, replace(scoring, topk_fraction=share)).numpy()
            local = local / _reference(local[~labels])  # the test set's good images: a scale, not a choice
            cells.append(f"{share}: {auroc(labels, local):.4f}/"
                         f"{auroc(labels, local + scoring.global_weight * global_term):.4f}")
        print(f"sigma {sigma}: " + "  ".join(cells))
    local, _ = _terms(model, scoring, images)
    local = local / scoring.local_reference
    print("global weight: " + "  ".join(f"{w}: {auroc(labels, local + w * global_term):.4f}"
                                        for w in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)))


def tile(args: argparse.Namespace) -> None:
    import cv2

    written = 0
    for path in sorted(args.set.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or "ground_truth" in path.parts:
            continue
        image = cv2.imread(str(path))
        if image is None:
            continue
        h, w = image.shape[:2]
        side = min(h, w)
        count = -(-max(h, w) // side)
        out = args.out / path.parent.relative_to(args.set)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            start = round(k * (max(h, w) - side) / max(1, count - 1))
            square = image[:, start : start + side] if w >= h else image[start : start + side]
            cv2.imwrite(str(out / f"{path.stem}__t{k}.png"), square)
            written += 1
    print(f"{written} tiles in {args.out}; train on {args.out}/train/good, then `small_defects.py tiled`")


def tiled(args: argparse.Namespace) -> None:
    model, scoring = _model(args.model)
    by_image: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind in sorted(p for p in (args.set / "test").iterdir() if p.is_dir()):
        paths = list_images(kind)
        with torch.inference_mode():
            for i in range(0, len(paths), BATCH):
                batch = paths[i : i + BATCH]
                scores, _ = model.score(to_tensor(load_images(batch, model.config.image_size), "cpu"), scoring)
                for path, score in zip(batch, scores.tolist()):
                    by_image[(kind.name, re.sub(r"__t\d+$", "", path.stem))].append(score)
    keys = sorted(by_image)
    labels = np.array([kind != "good" for kind, _ in keys])
    print(f"{len(keys)} images, {np.mean([len(by_image[k]) for k in keys]):.1f} tiles each: image AUROC "
          f"(the highest tile) {auroc(labels, np.array([max(by_image[k]) for k in keys])):.4f}")


def terms(args: argparse.Namespace) -> None:
    model, scoring = _model(args.model)
    sets = _test_sets(args.set)
    images = load_images([p for kind in sets for p in sets[kind]], model.config.image_size)
    kinds = np.array([kind for kind in sets for _ in sets[kind]])
    if args.jpeg:
        images = jpeg_copies(images, 0, (args.jpeg, args.jpeg))
    local, glob = _terms(model, scoring, images)
    local, glob = local / scoring.local_reference, glob / scoring.global_reference
    good = kinds == "good"
    combinations = {f"local + {w} x global": local + w * glob for w in (0.0, 0.5, 1.0, 2.0, 4.0)}
    combinations["max(local, global)"] = np.maximum(local, glob)
    print(f"{args.set}: {good.sum()} good, {(~good).sum()} defective test images"
          + (f" through JPEG q{args.jpeg}" if args.jpeg else "") + f"; stored weight {scoring.global_weight}")
    print("cells: image AUROC / detected above the 99 % quantile of good scores")
    for name, scores in combinations.items():
        threshold = np.quantile(scores[good], 0.99)
        per_kind = "  ".join(f"{kind} {np.mean(scores[kinds == kind] > threshold):.2f}"
                             for kind in sets if kind != "good")
        print(f"{name:20s} {auroc(~good, scores):.4f} / {np.mean(scores[~good] > threshold):.3f}   {per_kind}")


def global_term(args: argparse.Namespace) -> None:
    model, scoring = _model(args.model)
    size, rank = model.config.image_size, model.config.global_components
    train = load_images(list_images(args.train)[:600], size)
    order = np.random.default_rng(0).permutation(len(train))
    fit, held_out = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
    fit_pooled, _ = _pooled_and_local(model, scoring, np.concatenate([train[fit], jpeg_copies(train[fit], 0)]))
    reference_pooled, _ = _pooled_and_local(model, scoring, train[held_out])
    mean = fit_pooled.mean(axis=0)
    _, singular, basis = np.linalg.svd(fit_pooled - mean, full_matrices=False)  # basis (K, G), rows by variance
    variance = singular**2 / len(fit_pooled)

    def residual(pooled: np.ndarray) -> np.ndarray:
        centred = pooled - mean
        return ((centred - (centred @ basis[:rank].T) @ basis[:rank]) ** 2).mean(axis=1)

    def mahalanobis(shrink: float) -> Callable[[np.ndarray], np.ndarray]:
        floor = shrink * variance.sum() / basis.shape[1]  # of the mean variance over all G channels

        def distance(pooled: np.ndarray) -> np.ndarray:
            projected = (pooled - mean) @ basis.T
            # With fewer fitted rows than channels, what lies outside their span has only the floor's variance.
            outside = np.maximum(0.0, ((pooled - mean) ** 2).sum(axis=1) - (projected**2).sum(axis=1))
            return ((projected**2 / (variance + floor)).sum(axis=1) + outside / floor) / basis.shape[1]

        return distance

    lw = ledoit_wolf_shrinkage(fit_pooled - mean)
    variants = {f"residual after {rank} directions (the model's)": residual,
                **{f"Mahalanobis, shrinkage {lam}": mahalanobis(lam) for lam in (0.01, 0.1, 1.0)},
                f"Mahalanobis, Ledoit-Wolf ({lw:.3f})": mahalanobis(lw / max(1e-9, 1 - lw))}
    images, defective = _test_images(args.set, size)
    good = ~defective
    views = {q: _pooled_and_local(model, scoring, jpeg_copies(images, 0, (q, q)) if q else images)
             for q in (0, args.jpeg)}
    print(f"{args.set}: {good.sum()} good, {(~good).sum()} defective; cells: image AUROC / detected above the 99 % "
          f"quantile of good scores, local + w x global, as they are and through JPEG q{args.jpeg}")
    for name, term in variants.items():
        scale = term(reference_pooled)
        reference = scale.mean() + 3 * scale.std()
        cells = []
        for q, (pooled, local) in views.items():
            for weight in (0.5, 2.0, 4.0):
                scores = local + weight * term(pooled) / reference
                threshold = np.quantile(scores[good], 0.99)
                cells.append(f"q{q} w{weight:g} {auroc(~good, scores):.4f}/{np.mean(scores[~good] > threshold):.3f}")
        print(f"{name:36s} " + "  ".join(cells))


def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """The weight of the scaled identity in Ledoit and Wolf's shrunk covariance of (N, G) centred rows: the
    sample covariance's expected error over its distance from the identity, in [0, 1]."""
    n, g = centred.shape
    covariance = centred.T @ centred / n
    mu = np.trace(covariance) / g
    distance = np.sum((covariance - mu * np.eye(g)) ** 2) / g
    squared_norms = np.sum(centred**2, axis=1)
    # The mean of ||x xT - S||_F^2 over rows, without forming each outer product.
    spread = (np.sum(squared_norms**2) / n - np.sum(covariance**2)) / g
    return float(min(spread / n, distance) / distance)


@torch.inference_mode()
def _pooled_and_local(model: FeatureReconstructor, scoring: ScoringConfig,
                      images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(standardised mean feature vectors (N, G), local scores over their reference (N,)): one backbone pass."""
    pooled, local = [], []
    for i in range(0, len(images), BATCH):
        x = to_tensor(images[i : i + BATCH], "cpu")
        out = model(x)
        pooled.append(out.pooled.double())
        local.append(image_scores(feature_maps(model, out, x.shape[-1], scoring), scoring).double())
    return torch.cat(pooled).numpy(), torch.cat(local).numpy() / scoring.local_reference


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="experiment", required=True)
    for name in ("memory", "knobs", "tiled", "terms", "global"):
        sp = sub.add_parser(name)
        sp.add_argument("model", type=Path)
        sp.add_argument("set", type=Path)
        if name == "memory":
            sp.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
        if name == "terms":
            sp.add_argument("--jpeg", type=int, default=0, metavar="Q", help="through JPEG at quality Q first")
        if name == "global":
            sp.add_argument("--train", type=Path, required=True, help="the good images the model was trained on")
            sp.add_argument("--jpeg", type=int, default=90, metavar="Q", help="also through JPEG at quality Q")
    sp = sub.add_parser("tile")
    sp.add_argument("set", type=Path)
    sp.add_argument("out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    {"memory": memory, "knobs": knobs, "tile": tile, "tiled": tiled, "terms": terms, "global": global_term}[args.experiment](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
