"""Training, calibration, evaluation and denoising on tiny generated data (seconds, CPU)."""

import json

import numpy as np
import pytest
import torch

from inspector.decode.preprocess import list_images, list_labelled_defects, load_images, to_tensor
from inspector.errors import ConfigError
from inspector.model import artifact as artifact_io
from inspector.model.autoencoder import AutoencoderConfig
from inspector.paths import DEFAULT_MODEL
from inspector.training.config import TrainConfig
from inspector.training.evaluation import denoise_folder, evaluate_folder
from inspector.training.image_autoencoders import train_model
from inspector.training.noise import NOISE_KINDS, corrupt
from inspector.training.pipeline import train_and_calibrate

TINY = AutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=8)


def _images(root, size=32):
    return load_images(list_images(root / "train" / "good"), size)


def test_a_few_steps_lower_the_loss(tiny_dataset):
    images = _images(tiny_dataset)
    _, history = train_model(images, TINY, TrainConfig(epochs=6, batch_size=8, lr=3e-3), torch.device("cpu"),
                             progress=False)
    assert history[-1] < history[0] * 0.8


def test_training_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    images = _images(tiny_dataset)
    ckpt = tmp_path / "m.ckpt"
    cfg = TrainConfig(epochs=2, batch_size=8)
    _, first = train_model(images, TINY, cfg, torch.device("cpu"), checkpoint=ckpt, progress=False)
    _, resumed = train_model(images, TINY, TrainConfig(epochs=3, batch_size=8), torch.device("cpu"),
                             checkpoint=ckpt, progress=False)
    assert len(first) == 2 and len(resumed) == 3 and resumed[:2] == first


def test_train_calibrate_evaluate_writes_a_self_describing_model_and_a_report(tiny_dataset, tmp_path):
    paths = list_images(tiny_dataset / "train" / "good")
    out = tmp_path / "tiny.safetensors"
    art = train_and_calibrate(load_images(paths, 32), paths, out, TINY, TrainConfig(epochs=2, batch_size=8),
                              torch.device("cpu"), model_version="t", progress=False)
    loaded = artifact_io.load(out)
    assert loaded.calibration is not None and loaded.calibration.n_good == art.training["n_calibration"] > 0
    assert loaded.training["data_fingerprint"] and not out.with_suffix(".ckpt").exists()

    report = evaluate_folder(out, tiny_dataset, tmp_path / "report", "cpu")
    for name in ("report.json", "report.html", "roc.png", "score_hist.png"):
        assert (tmp_path / "report" / name).is_file(), name
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert 0 <= data["image"]["auroc"] <= 1 and "pixel" in data and "colour_baseline" in data
    assert set(data["per_kind"]) == {"brown_spots", "bruise", "mould", "cut", "overripe_speckle", "rotten"}
    assert report["examples"]["false_alarms"] and report["examples"]["missed_defects"]
    # The calibration images that scored highest are named in the file and the report, highest first.
    highest = loaded.training["highest_good_scores"]
    assert 0 < len(highest) <= 5 and [h["score"] for h in highest] == sorted((h["score"] for h in highest), reverse=True)
    assert {h["image"] for h in highest} <= {str(p) for p in paths} and data["model"]["highest_good_scores"] == highest


def test_a_good_image_unlike_the_others_is_named_as_lifting_the_threshold(tiny_dataset, tmp_path):
    from inspector.training.calibration import above_threshold_note, calibrate_artifact, highest_good_scores

    paths = list_images(tiny_dataset / "train" / "good")
    images = load_images(paths, 32)
    art = train_and_calibrate(images, paths, tmp_path / "m.safetensors", TINY, TrainConfig(epochs=2, batch_size=8),
                              torch.device("cpu"), progress=False)
    drawing = images[:1].copy()
    drawing[:, 8:24, 8:24] = (20, 40, 230)  # a flat blue square: nothing like a banana
    calibrated, scores = calibrate_artifact(art, np.concatenate([images, drawing]), 0.01, torch.device("cpu"))
    highest = highest_good_scores([*paths, tmp_path / "drawing.png"], scores)
    assert highest[0]["image"] == str(tmp_path / "drawing.png") and len(highest) == 5
    assert calibrated.calibration is not None
    note = above_threshold_note(highest, min(h["score"] for h in highest) - 1e-9)
    assert note is not None and note.startswith("5 or more good images scored above the threshold")
    assert "drawing.png" in note and "train again" in note
    assert above_threshold_note(highest, highest[0]["score"]) is None  # none above: nothing to say
    assert above_threshold_note(None, 0.0) is None  # a file trained before the list was kept


def test_denoiser_lowers_the_error_of_noisy_inputs(tiny_dataset):
    images = _images(tiny_dataset)
    cfg = TrainConfig(epochs=20, batch_size=8, lr=3e-3, denoise=True, noise_kinds=("gaussian",), loss="l2")
    wide = AutoencoderConfig(image_size=32, widths=(16, 32), latent_channels=32)
    model, _ = train_model(images, wide, cfg, torch.device("cpu"), progress=False)
    g = torch.Generator().manual_seed(1)
    clean = to_tensor(images)
    noisy = corrupt(clean, "gaussian", g)  # sigma 0.05
    with torch.no_grad():
        denoised = model(noisy)
    assert torch.mean((denoised - clean) ** 2) < torch.mean((noisy - clean) ** 2)


def test_noise_kinds_change_the_image_and_stay_in_range():
    x = torch.rand(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    for kind in NOISE_KINDS:
        y = corrupt(x, kind, g)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert not torch.allclose(y, x)


def test_denoise_command_writes_one_image_per_input(tiny_dataset, tmp_path):
    paths = list_images(tiny_dataset / "train" / "good")
    out = tmp_path / "m.safetensors"
    train_and_calibrate(load_images(paths, 32), paths, out, TINY, TrainConfig(epochs=1, batch_size=8),
                        torch.device("cpu"), progress=False)
    n = denoise_folder(out, tiny_dataset / "test" / "good", tmp_path / "clean", "cpu")
    assert n == len(list((tmp_path / "clean").glob("*.png"))) > 0


def test_labelled_defects_are_a_folder_or_a_test_folder_s_kinds_without_its_good_images(tiny_dataset, tmp_path):
    test = tiny_dataset / "test"
    found = list_labelled_defects(test)
    assert len(found) == 6 * 2 and not any(p.parent.name == "good" for p in found)
    assert list_labelled_defects(test / "bruise") == list_images(test / "bruise")
    (tmp_path / "good").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        list_labelled_defects(tmp_path)


def test_train_refuses_a_missing_defects_folder_defects_without_a_global_term_unknown_backbones_and_a_negative_memory(
        tiny_dataset, tmp_path, capsys):
    from inspector.__main__ import main

    data, out = str(tiny_dataset / "train" / "good"), str(tmp_path / "m.safetensors")
    assert main(["train", "--data", data, "--out", out, "--defects", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"image folder not found: {tmp_path / 'none'}")
    assert main(["train", "--data", data, "--out", out, "--mode", "plain", "--defects", str(tiny_dataset / "test")]) == 2
    assert "--defects chooses the features mode's global weight" in capsys.readouterr().err
    assert main(["train", "--data", data, "--out", out, "--backbones", "efficientnet-lite0", "resnet50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("--backbones: unknown resnet50 (known: efficientnet-lite0, "
                                                  "efficientnet-lite2)")
    assert main(["train", "--data", data, "--out", out, "--memory-size", "-1"]) == 2
    assert capsys.readouterr().err.strip().endswith("--memory-size must be 0 (no memory) or more, got -1")
    assert not (tmp_path / "m.safetensors").exists()


def test_an_output_that_cannot_be_written_is_one_clear_line_before_any_work(tiny_dataset, tmp_path, capsys):
    from inspector.__main__ import main

    blocker = tmp_path / "a-file"  # a file where a folder is wanted: refused even to root
    blocker.write_text("x")
    data = str(tiny_dataset / "train" / "good")
    commands = {
        "train": ["train", "--data", data, "--out", str(blocker / "m.safetensors")],
        "train into a folder": ["train", "--data", data, "--out", str(tmp_path)],
        "evaluate": ["evaluate", "--model", str(DEFAULT_MODEL), "--data", str(tiny_dataset),
                     "--out", str(blocker / "report")],
        "calibrate": ["calibrate", "--good", str(tiny_dataset / "test" / "good"), "--out", str(blocker / "m.safetensors")],
        "synth": ["synth", "--out", str(blocker / "set"), "--train", "1"],
    }
    for what, argv in commands.items():
        assert main(argv) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("cannot write" in err or "is a folder" in err), (what, err)
