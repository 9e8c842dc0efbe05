import pickle

import numpy as np
import pytest
import torch

from inspector.errors import ModelFileError
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.model.autoencoder import Autoencoder, AutoencoderConfig
from inspector.model.threshold import calibrate

CFG = AutoencoderConfig(image_size=32, widths=(8, 16), latent_channels=4)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    art = ModelArtifact(Autoencoder(CFG), calibration=calibrate(np.arange(100.0), np.arange(10.0), 0.05),
                        model_version="7", training={"data_fingerprint": "abc"})
    path = tmp_path / "m.safetensors"
    return artifact_io.save(art, path), path


def test_round_trip_keeps_weights_and_description(saved):
    art, path = saved
    loaded = artifact_io.load(path)
    assert loaded.config == CFG and loaded.model_version == "7" and loaded.checksum == art.checksum
    assert loaded.threshold == art.threshold and loaded.training["data_fingerprint"] == "abc"
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.model(x), art.model.eval()(x))


def test_truncated_file_is_refused(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        artifact_io.load(path)


def test_tampered_weights_are_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        artifact_io.load(path)


def test_pickle_and_foreign_files_are_refused(tmp_path):
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelFileError):
        artifact_io.load(evil)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelFileError, match="not an inspector model"):
        artifact_io.load(foreign)
    with pytest.raises(ModelFileError, match="not found"):
        artifact_io.load(tmp_path / "missing.safetensors")


def test_uncalibrated_model_cannot_give_a_threshold(tmp_path):
    art = artifact_io.save(ModelArtifact(Autoencoder(CFG)), tmp_path / "u.safetensors")
    with pytest.raises(ModelFileError, match="calibrate"):
        _ = artifact_io.load(tmp_path / "u.safetensors").threshold
    assert art.calibration is None


def test_a_saved_model_is_readable_by_other_users_as_the_umask_allows(saved):
    """mkstemp's private 0600 would keep a worker running as uid 10001 (the container) from loading it."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    _, path = saved
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_camera_thresholds_from_the_line_are_saved_and_in_force_unless_the_settings_override(saved, tmp_path):
    from dataclasses import replace

    from prometheus_client import CollectorRegistry

    from inspector.settings import ModelSettings
    from inspector.stream.metrics import build_metrics

    art, _ = saved
    assert art.calibration is not None
    line = art.with_calibration(replace(art.calibration, camera_thresholds={"cam-bright": 120.0, "cam-2": 80.0}))
    artifact_io.save(line, tmp_path / "line.safetensors")
    loaded = artifact_io.load(tmp_path / "line.safetensors")
    assert loaded.threshold_for("cam-bright") == 120.0 and loaded.threshold_for("cam-other") == loaded.threshold
    assert loaded.threshold_for(None) == loaded.threshold
    settings = ModelSettings(camera_thresholds={"cam-2": 90.0})
    assert settings.threshold_for("cam-2", loaded.threshold_for("cam-2")) == 90.0  # the settings win
    assert settings.threshold_for("cam-bright", loaded.threshold_for("cam-bright")) == 120.0
    registry = CollectorRegistry()
    build_metrics(registry).show_model(loaded, settings)
    shown = {camera: registry.get_sample_value("inspector_threshold", {"camera": camera})
             for camera in ("default", "cam-bright", "cam-2")}
    assert shown == {"default": loaded.threshold, "cam-bright": 120.0, "cam-2": 90.0}
