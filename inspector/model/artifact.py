"""The self-describing model file: safetensors weights + one JSON header, never pickle.

The header (safetensors metadata key "inspector") holds the format version, architecture config,
preprocessing, scoring config, threshold and calibration statistics, training facts, and a SHA-256 over
the weights and the rest of the header, so a truncated, tampered or foreign file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from inspector.errors import ModelFileError
from inspector.model.family import AnomalyModel, ModelConfig
from inspector.model.registry import FAMILIES
from inspector.model.scoring import ScoringConfig
from inspector.model.threshold import CalibrationStats
from inspector.model.tiling import Tiling

FORMAT_NAME = "inspector-autoencoder"
FORMAT_VERSION = 2  # 2: the model family (architecture name picks the module); 1 files still load
READABLE_VERSIONS = (1, 2)
_META_KEY = "inspector"


@dataclass(frozen=True)
class ModelArtifact:
    """A trained model of good images (any family) and everything needed to score with it."""

    model: AnomalyModel
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    calibration: CalibrationStats | None = None
    model_id: str = "banana-ae"
    model_version: str = "0"
    training: dict[str, object] = field(default_factory=dict)  # data fingerprint, epochs, loss, seed, ...
    checksum: str = ""
    tiling: Tiling | None = None  # frames seen as a grid of tiles of the model's input (None: one square input)

    @property
    def input_size(self) -> int | tuple[int, int]:
        """What a frame is resized to before scoring: the square side, or a tiled model's canvas (h, w)."""
        return self.config.image_size if self.tiling is None else self.tiling.canvas_hw

    @property
    def config(self) -> ModelConfig:
        """The model's own config dataclass (its family's); every one has image_size."""
        return self.model.config

    @property
    def threshold(self) -> float:
        if self.calibration is None:
            raise ModelFileError(f"model {self.model_id}:{self.model_version} is not calibrated: run `inspector calibrate`")
        return self.calibration.threshold

    def threshold_for(self, camera_id: str | None) -> float:
        """The camera's threshold from the line (`inspector calibrate --from-line`), else the file's default."""
        calibration = self.calibration
        if calibration is not None and camera_id is not None and camera_id in calibration.camera_thresholds:
            return calibration.camera_thresholds[camera_id]
        return self.threshold

    @property
    def pixel_threshold(self) -> float:
        return self.calibration.pixel_threshold if self.calibration else float("inf")

    def with_calibration(self, calibration: CalibrationStats) -> "ModelArtifact":
        return replace(self, calibration=calibration)

    def describe(self) -> dict[str, object]:
        """The JSON header (without checksum)."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "architecture": {"name": type(self.model).__name__, **self.config.to_dict()},
            "preprocessing": {"size": self.config.image_size, "channels": "RGB", "scale": "x/255",
                              "resize": "INTER_AREA down (by more than 1.25x), else INTER_LINEAR; aspect not kept",
                              **({"tiling": self.tiling.to_dict()} if self.tiling else {})},
            "scoring": self.scoring.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "training": self.training,
        }


def _digest(tensors: dict[str, torch.Tensor], header: dict[str, object]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(artifact: ModelArtifact, path: Path) -> ModelArtifact:
    """Write atomically (temp file + rename, so a reader never sees half a file); returns it with checksum."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in artifact.model.state_dict().items()}
    header = artifact.describe()
    checksum = _digest(tensors, header)
    metadata = {_META_KEY: json.dumps({**header, "sha256": checksum}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp makes the file private (0600); a model file is read by workers running as other users.
        umask = os.umask(0)
        os.umask(umask)
        Path(tmp).chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return replace(artifact, checksum=checksum)


def load(path: Path, device: torch.device | str = "cpu") -> ModelArtifact:
    """Read and verify a model file; ModelFileError with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a readable model file (truncated or not safetensors): {exc}") from None
    if _META_KEY not in metadata:
        raise ModelFileError(f"{path} is a safetensors file but not an inspector model (no '{_META_KEY}' header)")
    try:
        header = json.loads(metadata[_META_KEY])
        stored = header.pop("sha256")
    except (json.JSONDecodeError, KeyError, AttributeError):
        raise ModelFileError(f"{path}: model header is malformed") from None
    if header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: format {header.get('format')!r} is not {FORMAT_NAME!r}")
    if header.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(f"{path}: format version {header.get('format_version')} is not supported "
                             f"(this build reads {', '.join(map(str, READABLE_VERSIONS))}): retrain it with "
                             f"`inspector train` or upgrade the inspector")
    if _digest(tensors, header) != stored:
        raise ModelFileError(f"{path}: checksum mismatch; the file was modified after it was written")
    try:
        arch = dict(header["architecture"])
        name = arch.pop("name", None)
        if name not in FAMILIES:
            raise ValueError(f"unknown architecture {name!r} (this build knows {sorted(FAMILIES)})")
        model = FAMILIES[name].build(arch)
        model.load_state_dict(tensors, strict=True)
        scoring = ScoringConfig.from_dict(header["scoring"])
        calibration = CalibrationStats.from_dict(header["calibration"]) if header.get("calibration") else None
        tiling_fields = (header.get("preprocessing") or {}).get("tiling")
        tiling = Tiling.from_dict(tiling_fields) if tiling_fields else None
        positions = getattr(model.config, "location_tiles", 1)  # statistics per tile position, where tiled
        if tiling is not None and (tiling.tile != model.config.image_size or positions not in (1, tiling.count)):
            raise ValueError(f"{tiling} for a model of {model.config.image_size} px with {positions} tile positions")
        if tiling is None and positions > 1:
            raise ValueError(f"statistics for {positions} tile positions but no tiling")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: weights do not match the described architecture: {str(exc)[:200]}") from None
    model.eval().to(device)
    return ModelArtifact(
        model=model,
        scoring=scoring,
        calibration=calibration,
        model_id=str(header.get("model_id", "unknown")),
        model_version=str(header.get("model_version", "0")),
        training=dict(header.get("training") or {}),
        checksum=stored,
        tiling=tiling,
    )
