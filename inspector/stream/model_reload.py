"""Hot reload of the served model: a changed model file is loaded, checked and swapped in between two
batches; a bad one is refused, and the model in service keeps serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from inspector.errors import ModelFileError
from inspector.model import artifact as artifact_io
from inspector.model.artifact import ModelArtifact
from inspector.settings import ModelSettings
from inspector.stream.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class ModelFileWatch:
    """Polls the model file's modification time every `reload_poll_s` (0: never)."""

    def __init__(self, settings: ModelSettings, metrics: WorkerMetrics, serving: Callable[[], ModelArtifact],
                 install: Callable[[ModelArtifact], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._serving = serving  # the artifact in service
        self._install = install  # warms a new artifact up and swaps it in; ModelFileError refuses it
        self._mtime = self._file_mtime()
        self._next_check = 0.0

    def _file_mtime(self) -> float:
        try:
            return self.settings.path.stat().st_mtime
        except OSError:
            return 0.0

    def poll(self) -> bool:
        """Reload if the file changed since the last look; True when a new model now serves."""
        if self.settings.reload_poll_s <= 0 or time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + self.settings.reload_poll_s
        mtime = self._file_mtime()
        if mtime in (self._mtime, 0.0):
            return False
        self._mtime = mtime
        try:
            new = artifact_io.load(self.settings.path)
            new.threshold  # noqa: B018 - an uncalibrated model must not serve
            self._install(new)
        except ModelFileError as exc:
            self.metrics.model_reloads.labels("rejected").inc()
            old = self._serving()
            log.error("model reload refused, still serving %s:%s: %s", old.model_id, old.model_version, exc)
            return False
        self.metrics.model_reloads.labels("ok").inc()
        log.info("model reloaded: now serving %s:%s", new.model_id, new.model_version)
        return True
