"""Training and calibration on good images only: the image autoencoders (plain, denoising, repair) here, the
feature reconstructor in `inspector.training.features`; `train_and_calibrate` is the `inspector train` pipeline."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inspector.decode.preprocess import to_tensor
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.networks import (
    Autoencoder,
    AutoencoderConfig,
    FeatureReconstructor,
    FeatureReconstructorConfig,
    RepairAutoencoder,
    RepairAutoencoderConfig,
)
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import ScoringConfig
from inspector.model.threshold import CalibrationStats, calibrate, pixel_sample
from inspector.training.anomaly_synth import AnomalySynthConfig, synthesize_anomalies
from inspector.training.features import fit_feature_model
from inspector.training.noise import NOISE_KINDS, corrupt_mixed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    # "features": reconstruct pretrained features (the default; see models/README.md for the measurements),
    # "repair": DRAEM-style, from scratch; "plain": the plain (or, with denoise, denoising) autoencoder.
    mode: Literal["features", "repair", "plain"] = "features"
    feature_steps: int = 1000  # optimiser steps of the feature reconstructor, each on feature_batch regions
    feature_batch: int = 2048
    # Feature mode: ranks of the global term tried; the one that ranks synthetic defects highest is kept.
    global_ranks: tuple[int, ...] = (8, 16, 32)
    # Feature mode: when fewer good images than this would be held out, every good image is scored by a model
    # that did not see it (cross_fit_folds folds) and the final model trains on all of them.
    cross_fit_below: int = 50
    cross_fit_folds: int = 5
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    loss: Literal["l2", "l1", "ssim", "l2+ssim", "l1+ssim"] = "l2+ssim"
    ssim_weight: float = 0.5
    denoise: bool = False  # noisy input -> clean target
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    augment: bool = True  # flips and 90-degree turns only: exact, and never hide a brown spot
    calibration_fraction: float = 0.2  # held out of training; the threshold is set on these
    target_false_alarm: float = 0.01
    seed: int = 0


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean structural similarity of two batches (B, C, H, W) in [0, 1] (uniform window)."""
    c1, c2 = 0.01**2, 0.03**2
    pad = window // 2
    mu_x = F.avg_pool2d(x, window, 1, pad, count_include_pad=False)
    mu_y = F.avg_pool2d(y, window, 1, pad, count_include_pad=False)
    var_x = F.avg_pool2d(x * x, window, 1, pad, count_include_pad=False) - mu_x**2
    var_y = F.avg_pool2d(y * y, window, 1, pad, count_include_pad=False) - mu_y**2
    cov = F.avg_pool2d(x * y, window, 1, pad, count_include_pad=False) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    parts = config.loss.split("+")
    loss = recon.new_zeros(())
    for part in parts:
        if part == "l2":
            loss = loss + F.mse_loss(recon, target)
        elif part == "l1":
            loss = loss + F.l1_loss(recon, target)
        elif part == "ssim":
            w = config.ssim_weight if len(parts) > 1 else 1.0
            loss = loss + w * (1 - ssim(recon, target))
    return loss


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(3)
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(2)
    k = int(torch.randint(4, (), generator=g))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def data_fingerprint(paths: list[Path]) -> str:
    """SHA-256 over file names and contents: which images a model was trained on."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def default_input_size(paths: list[Path], mode: str) -> int:
    """The model input side for these images: 256 px (128 for the from-scratch modes), 320 when the photos are
    large enough that small defects would shrink below the features' reach at 256."""
    import cv2

    sides = []
    for p in paths[:: max(1, len(paths) // 16)]:
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if image is not None:
            sides.append(max(image.shape[:2]))
    long_side = float(np.median(sides)) if sides else 0.0
    if mode != "features":
        return 128
    return 320 if long_side >= 448 else 256


def split_for_calibration(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out calibration indices), a fixed random split."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = int(round(n * fraction)) if n > 1 else 0
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of mask logits (B, 1, H, W) against a {0, 1} mask: the rare anomalous pixels are not drowned."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-bce)
    return ((1 - p_true) ** gamma * bce).mean()


def repair_loss(model: RepairAutoencoder, clean: torch.Tensor, config: TrainConfig,
                synth: AnomalySynthConfig, g: torch.Generator) -> torch.Tensor:
    """DRAEM's objective: rebuild the clean image from an anomalous one, and outline what was repaired."""
    anomalous, masks = synthesize_anomalies(clean, synth, g)  # (B, 3, H, W), (B, 1, H, W)
    recon = model(anomalous)
    return reconstruction_loss(recon, clean, config) + focal_loss(model.segment(anomalous, recon), masks)


def train_model(
    images: np.ndarray,
    model_config: AutoencoderConfig | RepairAutoencoderConfig,
    config: TrainConfig,
    device: torch.device,
    *,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> tuple[Autoencoder | RepairAutoencoder, list[float]]:
    """Fit an image autoencoder (plain, denoising or repair) to (N, S, S, 3) uint8 RGB good images; returns the
    model and loss per epoch.

    With `checkpoint`, the state is saved after every epoch (pickle-free: weights_only) and training
    resumes from it when the file exists.
    """
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    model: Autoencoder | RepairAutoencoder
    if isinstance(model_config, RepairAutoencoderConfig):
        model = RepairAutoencoder(model_config)
    else:
        model = Autoencoder(model_config)
    model = model.to(device).to(memory_format=torch.channels_last)
    synth = AnomalySynthConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-5)
    steps_per_epoch = max(1, math.ceil(len(images) / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    history: list[float] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = [float(v) for v in state["history"]]
        start_epoch = len(history)
        if state["scheduler"]["total_steps"] == config.epochs * steps_per_epoch:
            sched.load_state_dict(state["scheduler"])
        else:  # resumed with another epoch count: continue the new schedule from where we are
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler stepped before optimizer": intended
                for _ in range(min(start_epoch * steps_per_epoch, config.epochs * steps_per_epoch - 1)):
                    sched.step()
        g.set_state(state["generator"])
        log.info("resumed from %s at epoch %d", checkpoint, start_epoch)

    data = torch.from_numpy(images)  # (N, S, S, 3) uint8, converted per batch
    bar = tqdm(range(start_epoch, config.epochs), desc="train", unit="epoch", disable=not progress,
               initial=start_epoch, total=config.epochs)
    for _epoch in bar:
        model.train()
        order = torch.randperm(len(data), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(data), config.batch_size):
            clean = to_tensor(data[order[i : i + config.batch_size]].numpy(), device)  # (B, 3, S, S)
            if config.augment:
                clean = _augment(clean, g)
            if isinstance(model, RepairAutoencoder):
                loss = repair_loss(model, clean, config, synth, g)
            else:
                noisy = corrupt_mixed(clean, config.noise_kinds, g) if config.denoise else clean
                loss = reconstruction_loss(model(noisy), clean, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(clean)
            count += len(clean)
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.5f}")
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "history": history, "generator": g.get_state()}, checkpoint)
    model.eval()
    return model, history


def default_scoring(mode: str) -> ScoringConfig:
    """The scoring each mode was measured with (bench/RESULTS.md, "Model quality")."""
    if mode == "features":
        return ScoringConfig(smoothing_sigma=4.0, reduction="topk_mean", topk_fraction=0.01)
    if mode == "repair":
        return ScoringConfig(smoothing_sigma=2.0, reduction="max")
    return ScoringConfig()


def score_images(runner: ModelRunner, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, S, S)) for uint8 RGB images, with the serving code path."""
    scores, maps = [], []
    for i in range(0, len(images), batch_size):
        s, m = runner.score(images[i : i + batch_size])
        scores.append(s)
        maps.append(m.cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def calibrate_artifact(
    artifact: ModelArtifact,
    good_images: np.ndarray,
    target_false_alarm: float,
    device: torch.device,
    *,
    defect_images: np.ndarray | None = None,
) -> ModelArtifact:
    """Set the threshold from held-out good images (conformal), or F1-optimal when defects are given."""
    runner = ModelRunner(artifact, device)
    good_scores, good_maps = score_images(runner, good_images)
    defect_scores = score_images(runner, defect_images)[0] if defect_images is not None else None
    stats: CalibrationStats = calibrate(good_scores, pixel_sample(good_maps), target_false_alarm,
                                        defect_scores=defect_scores)
    return artifact.with_calibration(stats)


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
    progress: bool = True,
) -> ModelArtifact:
    """The `inspector train` pipeline: hold out a calibration split (or cross-fit), train, calibrate, save."""
    t0 = time.time()
    train_idx, cal_idx = split_for_calibration(len(images), config.calibration_fraction, config.seed)
    if len(cal_idx) == 0:
        cal_idx = train_idx  # a handful of images: calibrate on what we have, and say so below
    scoring = scoring or default_scoring(config.mode)
    model: Autoencoder | RepairAutoencoder | FeatureReconstructor
    calibration: CalibrationStats | None = None
    calibration_scores = "held out"
    pixel_choice: dict[str, float] = {}  # synthetic-defect AUROC of the two map variants, feature mode
    rank_choice: dict[str, float] = {}  # ... and of each global rank tried
    if isinstance(model_config, FeatureReconstructorConfig):
        fit = fit_feature_model(images, train_idx, cal_idx, model_config, config, scoring, device, progress=progress)
        model, history, scoring, calibration = fit.model, fit.history, fit.scoring, fit.calibration
        pixel_choice, rank_choice = fit.pixel_choice, fit.rank_choice
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
            "data_fingerprint": data_fingerprint(paths) if paths else "",
            "final_loss": history[-1] if history else None,
            "seconds": round(time.time() - t0, 1),
            "device": device.type,
        },
    )
    if calibration is None:
        artifact = calibrate_artifact(artifact, images[cal_idx], config.target_false_alarm, device)
    else:
        artifact = artifact.with_calibration(calibration)
    saved = artifact_io.save(artifact, out)
    checkpoint = out.with_suffix(".ckpt")
    if checkpoint.exists():
        checkpoint.unlink()  # the model file is complete: a rerun starts afresh
    return saved


