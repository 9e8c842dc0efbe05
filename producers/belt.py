"""A synthetic belt camera: bananas passing one camera of a lane (inspector/synthetic/belt.py), with ground truth."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np

from inspector.settings import ProducerSettings
from inspector.sorter.line_file import CameraGeometry
from inspector.synthetic.belt import BeltFrame, BeltObject, BeltStream, prerender
from producers.base import FrameSource, SourceFrame

# Pre-rendered frames travel as JPEG only: keeping every image too would take 192 KB a frame.
_NO_IMAGE = np.empty((0, 0, 3), np.uint8)


class BeltSource(FrameSource):
    """Frames of one camera's lane, captured at their planned times from the first frame asked for on.

    Rendered as they are asked for, or, with `prerender_frames`, that many rendered and encoded up front (then
    the source ends after them), so a benchmark measures the line and not the renderer."""

    def __init__(self, geometry: CameraGeometry, settings: ProducerSettings, *, objects_per_second: float = 4.0,
                 prerender_frames: int = 0) -> None:
        super().__init__()
        run_id = uuid.uuid4().hex[:8]  # object ids stay unique across runs on the same topics
        self.stream = BeltStream(geometry, fps=settings.fps, objects_per_second=objects_per_second,
                                 defect_rate=settings.defect_rate, seed=settings.seed,
                                 id_prefix=f"{geometry.camera_id}-{run_id}-obj-")
        self.recording = (prerender(self.stream, prerender_frames, jpeg_quality=settings.jpeg_quality)
                          if prerender_frames else None)
        self.start_ns: int | None = None  # wall clock of frame 0, set when the first frame is asked for
        self._shown: dict[str, BeltObject] = {}
        self._handed_out = 0

    def frames(self) -> Iterator[SourceFrame]:
        for plan, jpeg in self._planned():
            if self.stopped:
                return
            if self.start_ns is None:
                self.start_ns = time.time_ns()
            self._shown.setdefault(plan.object.object_id, plan.object)
            self._handed_out = plan.index + 1
            image = _NO_IMAGE if jpeg is not None else plan.render().image
            yield SourceFrame(image, plan.object.label, jpeg, captured_ns=self.start_ns + plan.offset_ns,
                              object_id=plan.object.object_id)

    def _planned(self) -> Iterator[tuple[BeltFrame, bytes | None]]:
        """Each frame's plan and its JPEG when pre-rendered (None: the publisher encodes the rendered image)."""
        if self.recording is not None:
            return ((frame.plan, frame.jpeg) for frame in self.recording.frames)
        return ((plan, None) for plan in self.stream.frames())

    def objects(self) -> list[BeltObject]:
        """The truth so far: every object shown, with the frames handed out and its arrival absolute."""
        if self.start_ns is None:
            return []
        start_ns = self.start_ns
        return [obj.seen_before(self._handed_out).started_at(start_ns) for obj in self._shown.values()]
