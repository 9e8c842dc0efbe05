"""CUDA paths: nvJPEG batch decode and bf16 scoring agree with the CPU path. Skipped without CUDA."""

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from inspector.decode.jpeg import decode_jpeg
from inspector.decode.preprocess import DeviceJpegDecoder, decode_jpegs_on_device, to_tensor
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.runtime import ModelRunner

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
