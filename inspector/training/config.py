"""`TrainConfig`: how `inspector train` trains and calibrates; the CLI's defaults are its fields' defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inspector.model.registry import TrainingMode
from inspector.training.noise import NOISE_KINDS


@dataclass(frozen=True)
class TrainConfig:
    """Training and calibration settings; written into the model file's `training` section."""

    # "features": reconstruct pretrained features (the default; see models/README.md for the measurements),
    # "repair": DRAEM-style, from scratch; "plain": the plain (or, with denoise, denoising) autoencoder.
    mode: TrainingMode = "features"
    feature_steps: int = 1000  # optimiser steps of the feature reconstructor, each on feature_batch regions
    feature_batch: int = 2048
    # Feature mode: ranks of the global term tried; the one that ranks synthetic defects highest is kept.
    global_ranks: tuple[int, ...] = (8, 16, 32)
    # Feature mode: the pretrained backbones tried, in order of preference (backbone.BACKBONES); a later one is kept
    # only where it ranks the defects that choose the options (synthetic, or labelled) backbone_margin higher.
    backbones: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-lite2")
    backbone_margin: float = 0.005
    # Feature mode, with labelled defects (`inspector train --defects`): the global term's weights tried.
    global_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    # Feature mode: regions in the memory of good region features (0 = none), and the weights of its term tried; a
    # memory is kept only where synthetic defects rank memory_margin higher with it (its lookup costs frames/s).
    memory_size: int = 1024
    memory_weights: tuple[float, ...] = (0.5, 1.0, 2.0)
    memory_margin: float = 0.005
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
    # A tiled model is fitted to at most this many tiles (those of a random share of the training frames): the
    # backbone features of every tile are held at once, about 2 MB each at 320 px.
    max_train_tiles: int = 1200
    target_false_alarm: float = 0.01
    # The cameras' JPEG quality (the producer's default): the threshold is set on good images' scores as a camera
    # delivers them, each image's higher score of as-is and through JPEG at this quality (the synthetic camera's
    # JPEG frames false-alarmed at 1.5x the rate of the PNG renders calibrated on); 0 = images as they are.
    camera_jpeg_quality: int = 90
    seed: int = 0
