"""`inspector evaluate` on a tiny generated set whose defects differ from good images only in colour (CPU, seconds)."""

import html
import json

import cv2
import numpy as np
import pytest
import torch

from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.threshold import calibrate
from inspector.training import evaluation
from inspector.training.evaluation import evaluate_folder

CFG = AutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4)
ORANGE = np.array([40, 120, 200], np.float64)  # BGR


def _texture(rng: np.random.Generator) -> np.ndarray:
    """(32, 32, 3) uint8 BGR: an orange surface with grain of a random strength."""
    grain = rng.normal(0, rng.uniform(4, 30), (32, 32, 1))
    return np.clip(ORANGE + grain, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """train/good and test/good are orange; test/tinted and test/recoloured are test/good's own images with
    their channels permuted (blue, purple), so only global colour tells them apart. Half of `tinted` has masks
    (written at 64 px, twice the model's input), `recoloured` has none."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    for folder in ("train/good", "test/good", "test/tinted", "test/recoloured", "ground_truth/tinted"):
        (root / folder).mkdir(parents=True)
    for i in range(16):
        cv2.imwrite(str(root / "train" / "good" / f"{i:02d}.png"), _texture(rng))
    mask = np.zeros((64, 64), np.uint8)
    mask[:32] = 255  # top half
    for i in range(8):
        good = _texture(rng)
        cv2.imwrite(str(root / "test" / "good" / f"{i:02d}.png"), good)
        cv2.imwrite(str(root / "test" / "tinted" / f"{i:02d}.png"), good[..., ::-1])
        cv2.imwrite(str(root / "test" / "recoloured" / f"{i:02d}.png"), good[..., [1, 2, 0]])
        if i % 2 == 0:
            cv2.imwrite(str(root / "ground_truth" / "tinted" / f"{i:02d}_mask.png"), mask)
    return root


@pytest.fixture(scope="module")
def colour_blind_model(tmp_path_factory):
    """All weights zero: the reconstruction is one constant grey, and the per-pixel error is a channel mean,
    so an image and its channel permutation get the same map; the model cannot beat chance here."""
    model = Autoencoder(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    art = ModelArtifact(model, calibration=calibrate(np.linspace(0, 1, 20), np.linspace(0, 1, 100), 0.1),
                        model_version="t")
    path = tmp_path_factory.mktemp("model") / "blind.safetensors"
    artifact_io.save(art, path)
    return path


def test_report_warns_when_colour_alone_beats_the_model(colour_set, colour_blind_model, tmp_path):
    report = evaluate_folder(colour_blind_model, colour_set, tmp_path, "cpu")
    assert report["colour_baseline"]["auroc"] == 1.0  # blue and purple vs orange: colour separates every image
    assert report["colour_baseline"]["auroc"] > report["image"]["auroc"]
    assert len(report["warnings"]) == 1
    warning = report["warnings"][0]
    assert warning.startswith("the colour-statistics baseline (AUROC 1.000) beats the model (")

    page = (tmp_path / "report.html").read_text()
    assert html.escape(warning) in page and warning not in page  # escaped: the text has an apostrophe
    assert page.index("Warning:") < page.index("<h2>")  # at the top
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == [warning]


def test_report_has_per_kind_pixel_auroc_where_masks_exist(colour_set, colour_blind_model, tmp_path):
    report = evaluate_folder(colour_blind_model, colour_set, tmp_path, "cpu", baseline=False)
    tinted, recoloured = report["per_kind"]["tinted"], report["per_kind"]["recoloured"]
    assert 0 <= tinted["pixel_auroc"] <= 1 and tinted["pixel_n_masks"] == 4
    assert "pixel_auroc" not in recoloured
    assert 0 <= report["pixel"]["auroc"] <= 1 and report["pixel"]["n_images"] == 4 + 8
    method = artifact_io.load(colour_blind_model).calibration.method  # whichever `calibrate` picked
    assert report["image"]["threshold_method"] == method and method
    assert report["warnings"] == []  # no baseline, nothing to compare
    page = (tmp_path / "report.html").read_text()
    assert f"<td>{tinted['pixel_auroc']:.4f}</td>" in page and "<td>—</td>" in page


def test_maps_of_another_shape_than_the_image_size_masks_and_heat_maps(colour_set, colour_blind_model, tmp_path,
                                                                        monkeypatch):
    real = evaluation.score_images

    def rectangular(runner, images):
        scores, maps = real(runner, images)  # maps (N, 32, 32)
        return scores, np.stack([cv2.resize(m, (40, 24)) for m in maps])  # (N, 24, 40)

    monkeypatch.setattr(evaluation, "score_images", rectangular)
    report = evaluate_folder(colour_blind_model, colour_set, tmp_path, "cpu", baseline=False)
    assert 0 <= report["per_kind"]["tinted"]["pixel_auroc"] <= 1
    example = cv2.imread(str(tmp_path / report["examples"]["missed_defects"][0]["file"]))
    assert example.shape == (24, 80, 3)  # image and heat map side by side, each at the map's (h, w)


def test_the_report_warns_only_when_false_alarms_are_clearly_above_the_stated_bound():
    assert evaluation._bound_warnings(0.025, 1, 38) == []  # 2.6 %: within chance of a rate at most 2.5 %
    assert evaluation._bound_warnings(None, 30, 38) == []  # a file calibrated before bounds were stated
    (warning,) = evaluation._bound_warnings(0.025, 12, 142)  # 8.5 %: at least 4.9 % with 95 % confidence
    assert "12 of 142" in warning and "2.5%" in warning and "--from-line" in warning


def test_camera_scores_take_the_images_through_jpeg(colour_set, colour_blind_model):
    from inspector.decode.preprocess import list_images, load_images
    from inspector.model.runtime import ModelRunner, score_images
    from inspector.training.calibration import calibrate_artifact, camera_scores

    model = artifact_io.load(colour_blind_model)
    images = load_images(list_images(colour_set / "test" / "good"), model.config.image_size)
    runner = ModelRunner(model, torch.device("cpu"))
    as_is = score_images(runner, images)[0]
    through_jpeg = camera_scores(runner, images, 20)  # a harsh camera: its blocks raise every error
    assert not np.array_equal(as_is, through_jpeg)
    plain = calibrate_artifact(model, images, 0.01, torch.device("cpu")).artifact
    camera = calibrate_artifact(model, images, 0.01, torch.device("cpu"), camera_jpeg_quality=20).artifact
    assert plain.calibration is not None and camera.calibration is not None
    # Set on each image's higher score: every statistic of the good scores is at least the as-is one.
    assert camera.calibration.good_mean > plain.calibration.good_mean
    assert camera.calibration.good_quantiles["max"] >= plain.calibration.good_quantiles["max"]
    assert camera.calibration.false_alarm_bound is not None
