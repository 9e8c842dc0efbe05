import numpy as np
import pytest
import torch

from inspector.contracts import Box
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.family import score_batch
from inspector.model.null import NullModel
from inspector.model.scoring import ScoringConfig, defect_box, error_maps, image_scores
from inspector.model.threshold import defects_flagged, is_defect


def test_autoencoder_shapes_and_range():
    cfg = AutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        y = Autoencoder(cfg).eval()(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError):
        AutoencoderConfig(image_size=30, widths=(8, 16))


@pytest.mark.parametrize("reduction", ["max", "topk_mean", "mean"])
def test_score_batch_shapes_and_a_local_defect_scores_higher(reduction):
    cfg = ScoringConfig(reduction=reduction, smoothing_sigma=1.0)
    model = NullModel(AutoencoderConfig(image_size=32, widths=(8, 16)))
    x = torch.full((2, 3, 32, 32), 0.5)
    scores, maps = score_batch(model, x, cfg)
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)
    assert torch.all(scores == 0)
    recon = x.clone()
    recon[1, :, 10:14, 10:14] = 0.0  # a dark 4x4 patch the "model" could not reproduce
    maps = error_maps(x, recon, cfg)
    s = image_scores(maps, cfg)
    assert s[1] > s[0]
    assert int(maps[1].argmax()) // 32 in range(9, 15)


def test_defect_box_in_frame_coordinates():
    amap = np.zeros((32, 32), np.float32)
    amap[4:8, 20:30] = 1.0  # the larger region
    amap[25:27, 2:4] = 1.0
    box = defect_box(amap, 0.5, frame_hw=(480, 640))
    assert isinstance(box, Box)  # the alert's own type: one home for a box
    assert (box.x0, box.y0, box.x1, box.y1) == (400, 60, 600, 120)
    assert box.area_fraction == pytest.approx(40 / 1024, abs=1e-6)
    assert defect_box(np.zeros((8, 8), np.float32), 0.5, (8, 8)) is None


def test_threshold_comparison_is_strict():
    assert is_defect(0.2, 0.1) and not is_defect(0.1, 0.1) and not is_defect(0.05, 0.1)
    # The array form that evaluation and the quality metrics use is the same comparison.
    assert defects_flagged(np.array([0.2, 0.1, 0.05]), 0.1).tolist() == [True, False, False]
