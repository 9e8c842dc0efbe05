"""Sources read with OpenCV that hand over every frame: a folder of images, a video file (live cameras and
streams are read by producers/live.py instead)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2

from inspector.decode.preprocess import IMAGE_SUFFIXES
from inspector.errors import ConfigError
from producers.base import FrameSource, SourceFrame

log = logging.getLogger(__name__)


class FolderSource(FrameSource):
    """Every image in a folder (sorted), optionally looping; the parent folder name is used as the label
    when it is "good" or a known defect kind (the data-set layout), else no label."""

    def __init__(self, folder: Path, *, loop: bool = False) -> None:
        super().__init__()
        if not folder.is_dir():
            raise ConfigError(f"folder not found: {folder}")
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
        self.loop = loop

    def frames(self) -> Iterator[SourceFrame]:
        while True:
            for path in self.files:
                if self.stopped:
                    return
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    log.warning("skipping unreadable image %s", path)
                    continue
                yield SourceFrame(image, path.parent.name if path.parent.name != "" else None)
            if not self.loop:
                return


class CaptureSource(FrameSource):
    """cv2.VideoCapture over a video file, every frame in order (a camera index or URL works too, without the
    newest-frame handover and reconnects of LiveSource)."""

    def __init__(self, target: str, *, loop: bool = False) -> None:
        super().__init__()
        self.target = target
        self.loop = loop
        self._cap = self._open()

    def _open(self) -> cv2.VideoCapture:
        source: int | str = int(self.target) if self.target.isdigit() else self.target
        if isinstance(source, str) and "://" not in source and not Path(source).is_file():
            raise ConfigError(f"video file not found: {source}")
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise ConfigError(f"OpenCV could not open {self.target!r}")
        return cap

    def frames(self) -> Iterator[SourceFrame]:
        while not self.stopped:
            ok, image = self._cap.read()
            if not ok:
                if self.loop and not self.target.isdigit():
                    self._cap.release()
                    self._cap = self._open()
                    continue
                return
            yield SourceFrame(image)

    def close(self) -> None:
        self._cap.release()
