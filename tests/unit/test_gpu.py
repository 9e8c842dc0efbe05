"""CUDA paths: nvJPEG batch decode, bf16 scoring and CUDA graph replay agree with the CPU and eager paths. Skipped
without CUDA."""

import logging
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from inspector.decode.jpeg import decode_jpeg
from inspector.decode.preprocess import DeviceJpegDecoder, decode_jpegs_on_device, to_tensor
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.runtime import ModelRunner
from inspector.model.scoring import ScoringConfig
from inspector.paths import DEFAULT_MODEL
from inspector.synthetic.bananas import render_scene

pytestmark = pytest.mark.gpu


def _jpegs(n: int = 4) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        shape = (240, 320, 3) if i % 2 == 0 else (64, 64, 3)  # two cameras: one resized group, one as-is
        img = cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (15, 15), 5)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return out


def test_nvjpeg_decode_matches_opencv():
    jpegs = _jpegs()
    gpu = decode_jpegs_on_device(jpegs, 64, torch.device("cuda")).cpu()
    cpu = to_tensor([decode_jpeg(j, size=64, max_bytes=1 << 22, max_pixels=1 << 22)[0] for j in jpegs])
    assert gpu.shape == cpu.shape == (4, 3, 64, 64)
    assert float((gpu - cpu).abs().mean()) < 0.02  # different IDCT and resize kernels, same picture


def test_bf16_scores_track_fp32():
    torch.manual_seed(0)
    art = ModelArtifact(Autoencoder(AutoencoderConfig(image_size=64, widths=(8, 16), latent_channels=4)))
    images = np.random.default_rng(1).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    fp32 = ModelRunner(art, torch.device("cuda"), bf16=False).score(images)[0]
    bf16 = ModelRunner(art, torch.device("cuda"), bf16=True).score(images)[0]
    assert np.allclose(fp32, bf16, rtol=0.05)


def test_decode_on_a_side_stream_in_a_thread_scores_like_the_default_stream():
    # The worker's overlap: its nvjpeg thread decodes on the decoder's stream, the model waits on the event.
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    art = ModelArtifact(Autoencoder(AutoencoderConfig(image_size=64, widths=(8, 16), latent_channels=4)))
    runner = ModelRunner(art, cuda, bf16=False)
    jpegs = _jpegs(8)
    decoder = DeviceJpegDecoder(cuda)
    with ThreadPoolExecutor(1) as thread:
        decoded = thread.submit(decoder.decode, jpegs).result()
    side = runner.score_tensor(decoder.to_batch(decoded, 64))[0]
    direct = runner.score_tensor(decode_jpegs_on_device(jpegs, 64, cuda))[0]
    assert side.shape == (8,)
    assert np.allclose(side, direct, rtol=1e-5)


def _bananas(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(rng, size, "brown_spots" if i % 3 == 0 else None).image for i in range(n)])


def test_cuda_graph_replay_scores_like_eager_and_leaves_earlier_maps_alone():
    cuda = torch.device("cuda")
    art = artifact_io.load(DEFAULT_MODEL, cuda)
    size = art.config.image_size
    graphed, eager = ModelRunner(art, cuda), ModelRunner(art, cuda, cuda_graphs=False)
    for runner in (graphed, eager):
        runner.warm_up(runner.batch_shapes(16))
    assert graphed.graphed_batch_sizes == (1, 2, 4, 8, 16) and eager.graphed_batch_sizes == ()
    for n in (1, 5, 16):
        images = _bananas(n, size, seed=n)
        scores, maps = graphed.score(images)
        eager_scores, eager_maps = eager.score(images)
        assert scores.shape == (n,) and maps.shape == (n, size, size)
        assert np.allclose(scores, eager_scores, rtol=0.02, atol=1e-3)  # both bf16; the same kernels, or near
        assert torch.allclose(maps, eager_maps, rtol=0.02, atol=0.02 * float(eager_maps.abs().max()))
        kept = maps.clone()
        graphed.score(_bananas(n, size, seed=100 + n))  # the next replay rewrites the graph's own outputs ...
        assert torch.equal(maps, kept)  # ... not the maps an earlier batch was given


class _SyncingAutoencoder(Autoencoder):
    """Reads a value back to the host in the middle of scoring, which a CUDA graph cannot capture."""

    def score(self, x: torch.Tensor, config: ScoringConfig) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = super().score(x, config)
        if float(maps.amax()) < 0:
            raise AssertionError("an error map is never negative")
        return scores, maps


def test_a_model_that_cannot_be_captured_scores_eagerly_after_one_warning(caplog):
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    art = ModelArtifact(_SyncingAutoencoder(AutoencoderConfig(image_size=64, widths=(8, 16), latent_channels=4)))
    runner = ModelRunner(art, cuda)
    with caplog.at_level(logging.WARNING, logger="inspector.model.cuda_graphs"):
        runner.warm_up(runner.batch_shapes(4))
    assert runner.graphed_batch_sizes == ()
    assert len(caplog.records) == 1 and "capture failed" in caplog.records[0].getMessage()
    images = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    expected = ModelRunner(art, cuda, cuda_graphs=False).score(images)[0]
    assert np.allclose(runner.score(images)[0], expected, rtol=1e-3)
