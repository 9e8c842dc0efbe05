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
