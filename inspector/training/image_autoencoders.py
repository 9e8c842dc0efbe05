"""Training the image autoencoders (plain, denoising, repair) on good images: the losses and the loop."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inspector.decode.preprocess import to_tensor
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.image_similarity import ssim_map
from inspector.model.repair import RepairAutoencoder, RepairAutoencoderConfig
from inspector.training.anomaly_synth import AnomalySynthConfig, synthesize_anomalies
from inspector.training.config import TrainConfig
from inspector.training.noise import corrupt_mixed

log = logging.getLogger(__name__)


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
            # The uniform window the image autoencoders were trained with; 1 - SSIM, averaged.
            loss = loss + w * ssim_map(recon, target, kernel="uniform").mean()
    return loss


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(3)
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(2)
    k = int(torch.randint(4, (), generator=g))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


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
