"""The anomaly map lies over the defect that caused it: the feature reconstructor's registration offset."""

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inspector.decode.preprocess import to_tensor
from inspector.model.autoencoder import AutoencoderConfig
from inspector.model.family import score_batch
from inspector.model.feature_reconstructor import FeatureReconstructor
from inspector.model.null import NullModel
from inspector.model.scoring import ScoringConfig, register
from inspector.synthetic.bananas import render_scene
from inspector.training.feature_choices import measure_map_offset

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "banana-ae-v1.safetensors"


def test_register_moves_what_lies_at_the_offset_back_and_replicates_the_edges() -> None:
    maps = torch.zeros(1, 32, 40)
    maps[0, 20, 25] = 1.0
    moved = register(maps, (5.0, 3.0))
    assert moved.shape == maps.shape and tuple(torch.nonzero(moved[0] > 0.99)[0].tolist()) == (17, 20)
    half = register(maps, (0.5, 0.0))[0]  # sub-pixel: split between the two neighbours
    assert float(half[20, 24]) == pytest.approx(0.5) and float(half[20, 25]) == pytest.approx(0.5)
    ramp = torch.arange(10.0).repeat(1, 4, 1)  # (1, 4, 10), value = x
    assert register(ramp, (3.0, 0.0))[0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
    assert register(maps, (0.0, 0.0)) is maps


def test_old_headers_have_no_offset_and_the_offset_survives_the_json_header() -> None:
    old = ScoringConfig().to_dict()
    del old["map_offset"]
    assert ScoringConfig.from_dict(old).map_offset == (0.0, 0.0)
    header = json.loads(json.dumps(ScoringConfig(map_offset=(12.05, 12.2)).to_dict()))
    assert ScoringConfig.from_dict(header) == ScoringConfig(map_offset=(12.05, 12.2))
    with pytest.raises(ValueError, match="dx, dy"):
        ScoringConfig(map_offset=(1.0,))  # type: ignore[arg-type]


def test_image_autoencoder_maps_ignore_the_offset() -> None:
    model = NullModel(AutoencoderConfig(image_size=32, widths=(8, 16)))
    x = torch.rand(2, 3, 32, 32)
    plain = score_batch(model, x, ScoringConfig(smoothing_sigma=1.0))
    shifted = score_batch(model, x, ScoringConfig(smoothing_sigma=1.0, map_offset=(7.0, 7.0)))
    assert all(torch.equal(a, b) for a, b in zip(plain, shifted))


def test_measure_map_offset_finds_where_the_response_lies() -> None:
    ys, xs = np.mgrid[:64, :64]
    masks, good, synth = [], [], []
    rng = np.random.default_rng(0)
    for cx, cy in rng.integers(16, 48, size=(9, 2)):
        masks.append((xs - cx) ** 2 + (ys - cy) ** 2 <= 9)
        good.append(rng.random((64, 64)) * 0.1)
        synth.append(good[-1] + np.exp(-((xs - cx - 5) ** 2 + (ys - cy + 3) ** 2) / 18))  # right 5, up 3
    good_maps, synth_maps = (torch.from_numpy(np.stack(m)).float() for m in (good, synth))
    assert measure_map_offset(good_maps, synth_maps, np.stack(masks)) == pytest.approx((5.0, -3.0), abs=0.3)
    assert measure_map_offset(good_maps[:2], synth_maps[:2], np.stack(masks[:2])) == (0.0, 0.0)  # too few to trust


@pytest.mark.parametrize("size", [256, 320])
def test_default_model_map_peaks_on_a_small_defect(size: int) -> None:
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"default model not present at {DEFAULT_MODEL}")
    from inspector.model.artifact import load

    artifact = load(DEFAULT_MODEL)
    model = artifact.model
    assert isinstance(model, FeatureReconstructor)
    if size != artifact.config.image_size:  # the same weights at another input size: the offset is in pixels
        model = FeatureReconstructor(replace(artifact.config, image_size=size))
        state = {k: v for k, v in artifact.model.state_dict().items() if not k.startswith("pixel_")}
        assert not model.load_state_dict(state, strict=False).unexpected_keys
        model.eval()
    rng = np.random.default_rng(5)
    images, centres = [], []
    for _ in range(4):  # a dark 13-px spot well inside a good banana
        scene = render_scene(rng, size, None)
        inner = np.nonzero(cv2.erode(scene.fruit, np.ones((25, 25), np.uint8)))
        j = int(rng.integers(len(inner[0])))
        centre = (int(inner[1][j]), int(inner[0][j]))
        image = np.ascontiguousarray(scene.image[:, :, ::-1])
        cv2.circle(image, centre, 6, (60, 40, 20), -1)
        images.append(image)
        centres.append(centre)
    x = to_tensor(np.stack(images))

    def peak_offsets(scoring: ScoringConfig) -> np.ndarray:
        maps = score_batch(model, x, scoring)[1].numpy()  # (4, S, S)
        peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
        return np.array([(px - cx, py - cy) for (py, px), (cx, cy) in zip(peaks, centres)])  # (4, 2) dx, dy

    registered = peak_offsets(artifact.scoring)
    assert np.all(np.abs(registered.mean(axis=0)) <= 2), registered
    assert np.all(np.abs(registered) <= 4), registered
    unregistered = peak_offsets(replace(artifact.scoring, map_offset=(0.0, 0.0)))
    assert np.all(unregistered.mean(axis=0) >= 8), unregistered  # the bias the offset removes
