"""The cameras file (`python -m producers --cameras cameras.yaml`, or .toml): the cameras of one producer.

    defaults: {fps: 10, width: 256, height: 256}   # optional; any per-camera option
    cameras:
      - {id: line1-top, source: "rtsp://10.0.0.21/stream1"}
      - {id: line1-side, source: "http://10.0.0.22/video.mjpg", fps: 5}
      - {id: line1-usb, source: 0, jpeg_quality: 80, deadline_ms: 250}
      - {id: replay, source: /data/belt.mp4, loop: true}

An option a camera leaves out comes from `defaults`, then from the producer settings (INSPECTOR_PRODUCER__*).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inspector.config_file import read_config_file
from inspector.errors import ConfigError
from inspector.settings import ProducerSettings
from producers.base import FrameSource
from producers.metrics import CameraMetrics

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")


class CameraOptions(BaseModel):
    """What a camera may set for itself; unset, the producer settings' value."""

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(None, ge=0)  # 0: every frame, as fast as it comes
    width: int | None = Field(None, ge=0)  # resize at the edge; 0 keeps the source size
    height: int | None = Field(None, ge=0)
    jpeg_quality: int | None = Field(None, ge=10, le=100)
    deadline_ms: float | None = Field(None, ge=0)
    loop: bool | None = None  # video files and folders: start again at the end


class CameraEntry(CameraOptions):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # A device index, rtsp(s):// or http(s):// (MJPEG) URL, a video file, a folder of images, or "synthetic".
    source: int | str


class CamerasFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: CameraOptions = CameraOptions()
    cameras: list[CameraEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> CamerasFile:
        seen: set[str] = set()
        for camera in self.cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} appears twice")
            seen.add(camera.id)
        return self


@dataclass(frozen=True)
class CameraConfig:
    """One camera, resolved: its producer settings (camera id included), source and looping."""

    settings: ProducerSettings
    source: int | str
    loop: bool = False


def _explain(path: Path, raw: Any, exc: ValidationError) -> str:
    """One line: which camera (position and id) and which field is wrong, and why."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    where = ".".join(str(p) for p in loc) or "the file"
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
        entry = raw["cameras"][loc[1]] if isinstance(raw, dict) else None
        name = f" ({entry['id']})" if isinstance(entry, dict) and isinstance(entry.get("id"), str) else ""
        field = ".".join(str(p) for p in loc[2:] if not str(p).startswith(("int", "str"))) or "entry"
        where = f"camera {loc[1] + 1}{name}: {field}"
    return f"{path}: {where}: {first['msg']}"


def load_cameras(path: Path, base: ProducerSettings) -> list[CameraConfig]:
    """Every camera of a cameras file with its settings resolved; ConfigError (one line) on any bad entry."""
    raw = read_config_file(path, "cameras file")
    try:
        parsed = CamerasFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(path, raw, exc)) from None
    cameras = []
    for i, camera in enumerate(parsed.cameras):
        options = {**parsed.defaults.model_dump(exclude_none=True), **camera.model_dump(exclude_none=True)}
        source, loop, camera_id = options.pop("source"), options.pop("loop", False), options.pop("id")
        try:
            settings = ProducerSettings.model_validate({**base.model_dump(), **options, "camera_id": camera_id})
        except ValidationError as exc:  # a combination the settings refuse
            raise ConfigError(f"{path}: camera {i + 1} ({camera.id}): {exc.errors()[0]['msg']}") from None
        check_source(source, camera.id)
        cameras.append(CameraConfig(settings, source, loop))
    return cameras


def check_source(source: int | str, camera_id: str) -> None:
    """ConfigError unless `source` names something we can read (a live one need not answer yet)."""
    if isinstance(source, int):
        if source < 0:
            raise ConfigError(f"camera {camera_id}: a device index is 0 or more, not {source}")
        return
    if source == "synthetic" or source.isdigit():
        return
    if "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme not in LIVE_SCHEMES:
            raise ConfigError(f"camera {camera_id}: {scheme}:// is not a source we read ({', '.join(LIVE_SCHEMES)})")
        return
    if not Path(source).exists():
        raise ConfigError(f"camera {camera_id}: no such video file or folder: {source}")


def open_source(camera: CameraConfig, metrics: CameraMetrics | None = None) -> FrameSource:
    """The frame source of one camera: live for devices and URLs, every frame for files and folders."""
    source, settings = camera.source, camera.settings
    check_source(source, settings.camera_id)
    if isinstance(source, int) or source.isdigit() or "://" in source:
        from producers.live import LiveSource

        return LiveSource(int(source) if isinstance(source, int) or source.isdigit() else source, settings, metrics)
    if source == "synthetic":
        from producers.synthetic import SyntheticSource

        return SyntheticSource(settings, size=max(settings.width, settings.height) or 256)
    if Path(source).is_dir():
        from producers.files import FolderSource

        return FolderSource(Path(source), loop=camera.loop)
    from producers.files import CaptureSource

    return CaptureSource(source, loop=camera.loop)
