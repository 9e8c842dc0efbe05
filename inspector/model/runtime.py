"""Runs a model artifact on a device: device choice, channels_last, bf16 autocast, optional torch.compile,
warm-up, CUDA graphs. Shared by the worker, the scoring benchmark and evaluation."""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from typing import TypeVar

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inspector.decode.jpeg import size_hw
from inspector.decode.preprocess import to_tensor
from inspector.errors import ConfigError
from inspector.model.artifact import ModelArtifact
from inspector.model.cuda_graphs import (
    BatchGraphs,
    CudaGraphBackend,
    GraphBackend,
    Scored,
    ScoreFn,
    capture_graphs,
    padded_size,
)
from inspector.model.family import AnomalyModel, score_batch
from inspector.model.scoring import ScoringConfig
from inspector.model.tiling import tiles_per_frame

log = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def pick_device(name: str) -> torch.device:
    """"auto" -> CUDA when present, else CPU; "cuda" without CUDA is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but CUDA is not available on this machine")
    return torch.device(name)


def gflop_per_frame(model: torch.nn.Module, size: int, device: torch.device | str = "cpu",
                    scoring: ScoringConfig | None = None, tiles: int = 1) -> float | None:
    """The model's forward pass on one size x size frame (a tiled model's `tiles` of that size), in GFLOP (torch's
    FLOP counter), or with `scoring` its `score` as the worker runs it (a memory lookup included); None where it
    cannot count (informative only, never a reason to fail)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(tiles, 3, size, size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            if scoring is not None and isinstance(model, AnomalyModel):
                model.score(x, scoring)
            else:
                model(x)
        return counter.get_total_flops() / 1e9
    except Exception:  # counting is informative only
        return None


def fuse_conv_bn(model: ModuleT) -> ModuleT:
    """An inference copy of `model` with every Conv2d -> BatchNorm2d pair folded into one Conv2d.

    In eval mode BatchNorm is a per-channel affine map, so it folds into the conv's weights and bias: the same
    function (to float rounding) without a pass over every activation, which was 13 % of the model's time on
    the CPU. The artifact's own module is left as it is.
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = torch.nn.Identity()
    for module in list(model.modules()):
        fold_batchnorm = getattr(module, "fold_batchnorm", None)
        if fold_batchnorm is not None:  # the backbone's blocks, whose pairs are named, not sequenced
            fold_batchnorm()
    return model


class ModelRunner:
    """Scores uint8 RGB batches with one artifact; swap artifacts with `load()` between batches."""

    def __init__(self, artifact: ModelArtifact, device: torch.device, *, bf16: bool = True,
                 compile: bool = False, cpu_streams: int = 1, cuda_graphs: bool = True,
                 graph_backend: GraphBackend | None = None) -> None:
        self.device = device
        # Batches this runner scores at once, each from a thread of its own. On the CPU each gets an equal share
        # of torch's intra-op threads (a process-wide setting): on 2 cores one thread per batch wastes nothing
        # in the barriers between parallel regions, where two threads per batch idled a third of the time.
        self.streams = cpu_streams if device.type == "cpu" else 1
        if self.streams > 1:
            torch.set_num_threads(max(1, torch.get_num_threads() // self.streams))
        self.bf16 = bf16 and device.type == "cuda"
        self.compile = compile
        # On CUDA, `warm_up` captures the scoring of each padded batch size as a CUDA graph, which each batch of that
        # size replays (inspector.model.cuda_graphs). Not with compile, which wins: its max-autotune mode replays the
        # forward through CUDA graphs of its own, and a capture cannot hold those. A stand-in backend (tests) turns
        # the graph path on anywhere.
        if graph_backend is None and cuda_graphs and device.type == "cuda" and not compile:
            graph_backend = CudaGraphBackend(device)
        self._graph_backend = graph_backend
        # Pad every batch to a power of two, so the model sees a handful of batch shapes, all met during
        # warm-up: a compiled model specialises (recompiles) per shape, and on CUDA cuDNN plans its kernels per
        # shape too. Unpadded, a GPU worker fed at a steady rate met a new batch size every few batches and
        # stalled on each (score p99 5.3 s, end-to-end p50 4.6 s at half capacity). On the CPU padding would
        # cost compute the model is bound by, and oneDNN's per-shape set-up is cheap.
        self.pad = compile or device.type == "cuda" or graph_backend is not None
        self.artifact = artifact
        self._model = self._prepare(artifact)
        self._graphs: BatchGraphs | None = None  # the current model's, once warmed up
        self._warm_sizes: tuple[int, ...] = (1, 8, 32)

    @property
    def size(self) -> int | tuple[int, int]:
        """What frames are decoded to: the model's square side, or a tiled model's canvas (h, w)."""
        return self.artifact.input_size

    @property
    def graphed_batch_sizes(self) -> tuple[int, ...]:
        """The padded batch sizes the current model scores through a CUDA graph; () for none."""
        return self._graphs.batch_sizes if self._graphs is not None else ()

    def _prepare(self, artifact: ModelArtifact) -> AnomalyModel:
        model = fuse_conv_bn(artifact.model.to(self.device).eval())
        # channels_last: the convolutions' fast layout on CUDA (tensor cores) and on CPU (oneDNN), ~2x here.
        model = model.to(memory_format=torch.channels_last)
        if self.compile:
            # In place, not torch.compile's wrapper: the family's own `score` then calls the compiled forward.
            model.compile(mode="max-autotune" if self.device.type == "cuda" else "default")
        return model

    def batch_shapes(self, max_batch: int) -> tuple[int, ...]:
        """The batch sizes this runner will see for batches of 1..max_batch frames: when it pads, every power
        of two it pads to (each a compiled graph, a captured CUDA graph or a set of cuDNN plans), otherwise the
        two ends."""
        if not self.pad:
            return (1, max_batch)
        top = 1 << (max_batch - 1).bit_length()
        return tuple(1 << i for i in range(top.bit_length()))

    def load(self, artifact: ModelArtifact) -> None:
        """Switch to another artifact (hot reload): warm it up and capture its graphs, on the same batch shapes and
        in the calling thread, before it serves."""
        model = self._prepare(artifact)
        graphs = self._warm(model, artifact, self._warm_sizes)
        self.artifact, self._model, self._graphs = artifact, model, graphs

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> float:
        """Run a few batches so kernels are chosen (and compiled) before the first real frame, then capture a CUDA
        graph per padded batch size where graphs are on; seconds taken, the capture included. Call from the thread
        that will score: graphs replay in the thread that captured them."""
        t0 = time.perf_counter()
        self._warm_sizes = batch_sizes
        self._graphs = self._warm(self._model, self.artifact, batch_sizes)
        return time.perf_counter() - t0

    def _warm(self, model: AnomalyModel, artifact: ModelArtifact, batch_sizes: tuple[int, ...]) -> BatchGraphs | None:
        size, tiles = artifact.config.image_size, tiles_per_frame(artifact.tiling)
        for b in batch_sizes:
            self._score(np.zeros((b, *size_hw(artifact.input_size), 3), np.uint8), model, artifact, None)
        graphs = None
        # The null model launches next to nothing, and its maps are one broadcast zero a copy-out would fill in.
        if self._graph_backend is not None and model.reads_pixels:  # a tiled model's graphs score batches of tiles
            graphs = capture_graphs(self._score_fn(model, artifact), self._graph_backend,
                                    sorted({padded_size(b * tiles) for b in batch_sizes}), (3, size, size),
                                    self.device, f"model {artifact.model_id}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return graphs

    def score(self, images: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """(B, H, W, 3) uint8 RGB at `size` -> (scores (B,) float32 on the host, maps (B, H, W) float32 on the
        device); a tiled model scores each frame's tiles and gives the highest tile score and the stitched map.

        Maps stay on the device: the worker copies back only the few it draws a defect box from."""
        return self._score(images, self._model, self.artifact, self._graphs)

    def score_tensor(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Like `score`, for a batch already on the device: (B, 3, H, W) float in [0, 1] at `size`."""
        return self._score(x, self._model, self.artifact, self._graphs)

    def _score(self, images: np.ndarray | torch.Tensor, model: AnomalyModel, artifact: ModelArtifact,
               graphs: BatchGraphs | None) -> tuple[np.ndarray, torch.Tensor]:
        if isinstance(images, torch.Tensor):
            x = images
        elif model.reads_pixels:
            x = to_tensor(images, self.device)
        else:  # a batch of the right length that holds no pixels
            x = torch.empty((len(images), 3, 0, 0), device=self.device)
        tiling = artifact.tiling if model.reads_pixels else None
        if tiling is None:
            return self._score_inputs(x, model, artifact, graphs)
        scores, maps = self._score_inputs(tiling.cut(x).contiguous(memory_format=torch.channels_last), model,
                                          artifact, graphs)
        return tiling.frame_scores(torch.from_numpy(scores)).numpy(), tiling.stitch(maps)

    def _score_inputs(self, x: torch.Tensor, model: AnomalyModel, artifact: ModelArtifact,
                      graphs: BatchGraphs | None) -> tuple[np.ndarray, torch.Tensor]:
        """(B, 3, S, S) model inputs -> (scores (B,) on the host, maps (B, S, S) on the device)."""
        if graphs is not None:
            replayed = graphs.score(x)  # None for a batch larger than every graph
            if replayed is not None:
                return replayed
        n = x.shape[0]
        if self.pad:  # see __init__: a handful of shapes, all warmed up
            padded = 1 << (n - 1).bit_length()
            if padded != n:
                x = torch.cat([x, x.new_zeros((padded - n, *x.shape[1:]))]).contiguous(
                    memory_format=torch.channels_last)
        scores, maps = self._score_fn(model, artifact)(x)
        return scores[:n].cpu().numpy(), maps[:n]

    def _score_fn(self, model: AnomalyModel, artifact: ModelArtifact) -> ScoreFn:
        """What a batch goes through, eagerly or captured: the family's scoring, under bf16 autocast where on (its
        cast cache off, as a capture must not keep casts made outside it)."""
        def score(x: torch.Tensor) -> Scored:
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if self.bf16 else nullcontext():
                return score_batch(model, x, artifact.scoring)
        return score


def score_images(runner: ModelRunner, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, H, W)) on the host for (N, H, W, 3) uint8 RGB images at the runner's `size`, in
    batches, with the serving code path: what training, calibration and evaluation score with."""
    scores, maps = [], []
    for i in range(0, len(images), batch_size):
        batch_scores, batch_maps = runner.score(images[i : i + batch_size])
        scores.append(batch_scores)
        maps.append(batch_maps.cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)
