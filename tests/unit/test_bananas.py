"""Synthetic banana scenes: shapes, masks, determinism, the data set layout, and that colour alone does not solve it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.synthetic.bananas import DEFECT_KINDS, MIN_DEFECT_AREA_FRACTION, Scene, render_scene, write_dataset
from inspector.training.colour_baseline import colour_baseline_scores, colour_features
from inspector.training.quality_metrics import auroc


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def test_good_scene_has_expected_shapes_and_an_empty_mask() -> None:
    scene = render_scene(_rng(1), size=96)
    assert isinstance(scene, Scene)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.mask.shape == (96, 96) and scene.mask.dtype == np.uint8
    assert scene.defect is None
    assert not scene.mask.any()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_mask_is_large_enough_binary_and_on_the_banana(kind: str) -> None:
    for i in range(5):
        scene = render_scene(_rng(2, i), size=96, defect=kind)
        assert scene.defect == kind
        assert set(np.unique(scene.mask)) <= {0, 255}
        on = scene.mask > 0
        assert on.mean() >= MIN_DEFECT_AREA_FRACTION
        # The same generator state without a defect renders the same banana: under the mask it must be
        # fruit (saturated yellow, green or brown), not the grey belt.
        twin = render_scene(_rng(2, i), size=96, defect=None)
        saturation = cv2.cvtColor(twin.image, cv2.COLOR_BGR2HSV)[..., 1]
        assert (saturation[on] > 90).mean() > 0.9
        # And the defect changes what the pixels look like there.
        diff = np.abs(scene.image.astype(int) - twin.image.astype(int)).sum(axis=2)
        assert np.median(diff[on]) > 40


def test_unknown_defect_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown defect"):
        render_scene(_rng(0), size=64, defect="bananas_in_pyjamas")


def test_same_seed_same_scene_and_different_seeds_differ() -> None:
    a = render_scene(_rng(7), size=64, defect="bruise")
    b = render_scene(_rng(7), size=64, defect="bruise")
    c = render_scene(_rng(8), size=64, defect="bruise")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_write_dataset_writes_the_documented_layout(tmp_path: Path) -> None:
    counts = write_dataset(tmp_path, n_train=4, n_test_good=2, n_test_per_defect=1, size=64, n_calibration=2)
    assert counts["train/good"] == 4 and counts["test/good"] == 2 and counts["calibration/good"] == 2
    for folder, n in (("train/good", 4), ("test/good", 2), ("calibration/good", 2)):
        files = sorted((tmp_path / folder).glob("*.png"))
        assert len(files) == n
        for f in files:
            image = cv2.imread(str(f))
            assert image is not None and image.shape == (64, 64, 3)
    for kind in DEFECT_KINDS:
        assert counts[f"test/{kind}"] == 1
        (image_path,) = sorted((tmp_path / "test" / kind).glob("*.png"))
        mask_path = tmp_path / "ground_truth" / kind / f"{image_path.stem}_mask.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.shape == (64, 64) and mask.max() == 255


def _read(path: Path) -> bytes:
    return cv2.imread(str(path)).tobytes()


def test_write_dataset_is_deterministic_and_splits_do_not_repeat(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n_train=3, n_test_good=3, n_test_per_defect=0, size=48, seed=5)
    write_dataset(tmp_path / "b", n_train=3, n_test_good=3, n_test_per_defect=0, size=48, seed=5)
    a_files = sorted((tmp_path / "a").rglob("*.png"))
    assert [_read(p) for p in a_files] == [_read(tmp_path / "b" / p.relative_to(tmp_path / "a")) for p in a_files]
    assert len({_read(p) for p in a_files}) == len(a_files)  # train and test never share an image


def test_colour_features_shape() -> None:
    images = [render_scene(_rng(3, i), size=48).image for i in range(3)]
    features = colour_features(images)
    assert features.shape[0] == 3 and features.ndim == 2
    assert np.isfinite(features).all()


def test_colour_baseline_does_not_solve_the_task() -> None:
    size = 96
    train = [render_scene(_rng(4, 0, i), size=size).image for i in range(60)]
    good = [render_scene(_rng(4, 1, i), size=size).image for i in range(20)]
    bad = [
        render_scene(_rng(4, 2, j, i), size=size, defect=kind).image
        for j, kind in enumerate(DEFECT_KINDS)
        for i in range(4)
    ]
    scores = colour_baseline_scores(train, good + bad)
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    assert scores.shape == (len(good) + len(bad),)
    assert auroc(labels, scores) < 0.95
