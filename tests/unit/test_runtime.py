"""The inference copy of a model: Conv2d+BatchNorm2d folded, same function, artifact untouched."""

import numpy as np
import torch

from inspector.decode.preprocess import to_tensor
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.family import score_batch
from inspector.model.runtime import ModelRunner, fuse_conv_bn, gflop_per_frame


def _trained_looking_model() -> Autoencoder:
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4, blocks_per_stage=1))
    for m in model.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_folded_model_computes_the_same_without_batchnorm():
    model = _trained_looking_model()
    fused = fuse_conv_bn(model)
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), fused(x), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 9  # the original is untouched


def test_runner_scores_match_the_unfolded_model():
    model = _trained_looking_model()
    art = ModelArtifact(model)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    scores = ModelRunner(art, torch.device("cpu")).score(images)[0]

    with torch.inference_mode():
        expected = score_batch(model, to_tensor(images), art.scoring)[0].numpy()
    assert np.allclose(scores, expected, rtol=1e-4, atol=1e-7)


def test_gflop_per_frame_counts_a_conv_and_grows_with_the_frame() -> None:
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: 8 out x 3 in x 9 taps x 32 x 32 outputs.
    assert gflop_per_frame(conv, 32) == 2 * 8 * 3 * 9 * 32 * 32 / 1e9
    assert gflop_per_frame(conv, 64) == 4 * gflop_per_frame(conv, 32)
    assert gflop_per_frame(torch.nn.Linear(2, 2), 32) is None  # a model it cannot run: no figure, no failure
