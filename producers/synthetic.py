"""A synthetic camera: ripe bananas on a belt, a configurable share of them defective."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from inspector.settings import ProducerSettings
from inspector.synthetic.bananas import DEFECT_KINDS, render_scene
from producers.base import FrameSource, SourceFrame, encode_jpeg


class SyntheticSource(FrameSource):
    """Renders frames on the fly; with `pool` > 0 it pre-renders that many and cycles (for load tests)."""

    def __init__(self, settings: ProducerSettings, *, size: int = 256, pool: int = 0) -> None:
        super().__init__()
        self.settings = settings
        self.size = size
        self.rng = np.random.default_rng(settings.seed)
        self.pool: list[SourceFrame] = [self._render(encode=True) for _ in range(pool)]

    def _render(self, encode: bool = False) -> SourceFrame:
        defect = None
        if self.rng.random() < self.settings.defect_rate:
            defect = DEFECT_KINDS[int(self.rng.integers(len(DEFECT_KINDS)))]
        scene = render_scene(self.rng, self.size, defect)
        frame = SourceFrame(scene.image, scene.defect or "good")
        if encode:
            frame = SourceFrame(scene.image, frame.label, encode_jpeg(scene.image, self.settings))
        return frame

    def frames(self) -> Iterator[SourceFrame]:
        i = 0
        while not self.stopped:
            yield self.pool[i % len(self.pool)] if self.pool else self._render()
            i += 1


def planned_stream(settings: ProducerSettings, n_frames: int, n_defects: int, *, size: int = 256) -> list[SourceFrame]:
    """Exactly `n_defects` defective frames (kinds in turn) at random places among `n_frames` (tests, demo)."""
    rng = np.random.default_rng(settings.seed)
    defect_at = set(rng.choice(n_frames, size=n_defects, replace=False).tolist())
    frames, k = [], 0
    for i in range(n_frames):
        defect = None
        if i in defect_at:
            defect, k = DEFECT_KINDS[k % len(DEFECT_KINDS)], k + 1
        scene = render_scene(rng, size, defect)
        frames.append(SourceFrame(scene.image, scene.defect or "good", encode_jpeg(scene.image, settings)))
    return frames


class ListSource(FrameSource):
    """Frames prepared in advance (e.g. `planned_stream`)."""

    def __init__(self, frames: list[SourceFrame]) -> None:
        super().__init__()
        self._frames = frames

    def frames(self) -> Iterator[SourceFrame]:
        for f in self._frames:
            if self.stopped:
                return
            yield f
