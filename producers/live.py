"""A live camera or network stream (USB index, rtsp://, http:// MJPEG) read by its own capture thread.

The thread reads as fast as the device delivers and keeps only the newest frame, stamped when it was grabbed;
the publisher takes that frame at its own rate, so a camera faster than the target rate never builds a backlog
of ever older frames. A stream that fails or stalls is reopened with capped exponential backoff, logging one
line per change of state (down, reconnecting, up), not per try.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.settings import ProducerSettings
from producers.base import FrameSource, SourceFrame
from producers.metrics import CameraMetrics, RateMeter

log = logging.getLogger(__name__)

# After (re)connecting a stream may hand over in a burst what it buffered while it was being opened (about
# 0.7 s of frames for RTSP through FFmpeg): none of those frames is offered until a grab has had to wait for
# its frame, which means the buffer is empty; a source that never makes us wait is offered frames after this.
SETTLE_LIMIT_S = 2.0


@dataclass(frozen=True)
class _Grab:
    index: int  # grabs since the source started, across reconnects
    captured_ns: int
    image: np.ndarray  # (H, W, 3) uint8 BGR


class LiveSource(FrameSource):
    """A camera that keeps running whether or not anyone takes its frames; `frames()` yields the newest one."""

    live = True

    def __init__(self, target: int | str, settings: ProducerSettings, metrics: CameraMetrics | None = None) -> None:
        super().__init__()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # not a warning per failed try to open
        self.target = target
        self.settings = settings
        self.metrics = metrics
        self.camera_id = settings.camera_id
        self.reconnects = 0
        self._up = False
        self._grabs = 0
        self._newest: _Grab | None = None
        self._fresh = threading.Condition()
        self._rate = RateMeter(metrics.capture_fps if metrics else None)
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture-{self.camera_id}", daemon=True)
        self._thread.start()

    @property
    def up(self) -> bool:
        return self._up

    def stop(self) -> None:
        super().stop()
        with self._fresh:
            self._fresh.notify_all()

    def frames(self) -> Iterator[SourceFrame]:
        last = 0
        while not self.stopped:
            with self._fresh:
                while not self.stopped and (self._newest is None or self._newest.index <= last):
                    self._fresh.wait(timeout=0.5)
                grab = self._newest
            if self.stopped or grab is None:
                return
            skipped, last = grab.index - last - 1, grab.index
            yield SourceFrame(grab.image, captured_ns=grab.captured_ns, skipped=skipped)

    def close(self) -> None:
        self.stop()
        self._thread.join(timeout=self.settings.stall_s + 5)

    # --- the capture thread -------------------------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture | None:
        """The device or stream, opened; None when it cannot be (not there, refused, no answer in stall_s)."""
        try:
            if isinstance(self.target, int):
                cap = cv2.VideoCapture(self.target)
            else:
                # FFmpeg gives up on a stream that does not answer or stops sending within stall_s.
                timeout_ms = int(self.settings.stall_s * 1000)
                cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        except cv2.error:
            return None
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _capture_loop(self) -> None:
        s = self.settings
        failed_tries = 0  # since the camera was last up
        down_since = time.monotonic()
        ever_up = False
        while not self.stopped:
            if failed_tries:
                if failed_tries == 1:
                    log.warning("camera %s reconnecting to %s (every %.1f s, doubling up to %.0f s, until it answers)",
                                self.camera_id, self.target, s.reconnect_min_s, s.reconnect_max_s)
                if self._stopped.wait(min(s.reconnect_max_s, s.reconnect_min_s * 2 ** (failed_tries - 1))):
                    return
            cap = self._open()
            log.debug("camera %s: try %d to open %s: %s", self.camera_id, failed_tries + 1, self.target,
                      "opened" if cap is not None else "failed")
            if cap is None:
                if failed_tries == 0 and not ever_up:
                    log.warning("camera %s down: cannot open %s", self.camera_id, self.target)
                failed_tries += 1
                continue
            try:
                reason = self._read_until_failure(cap, ever_up, failed_tries, down_since)
            finally:
                cap.release()
            if self.stopped:
                self._set_up(False)
                return
            if self._up:
                ever_up = True
                self._set_up(False)
                down_since = time.monotonic()
                failed_tries = 1
                log.warning("camera %s down: %s", self.camera_id, reason)
            else:  # opened but never delivered a frame: one more failed try
                if failed_tries == 0 and not ever_up:
                    log.warning("camera %s down: %s", self.camera_id, reason)
                failed_tries += 1

    def _read_until_failure(self, cap: cv2.VideoCapture, ever_up: bool, failed_tries: int,
                            down_since: float) -> str:
        """Grab until the stream fails or the source is stopped; returns why it ended."""
        nominal_fps = cap.get(cv2.CAP_PROP_FPS)
        settle_wait_s = 0.25 / nominal_fps if 1 <= nominal_fps <= 1000 else 0.005
        opened_at = time.monotonic()
        settled = False
        while not self.stopped:
            t0 = time.monotonic()
            if not cap.grab():
                return f"no frame for {self.settings.stall_s:.1f} s, or the stream ended"
            captured_ns = time.time_ns()
            waited_s = time.monotonic() - t0
            ok, image = cap.retrieve()
            if not ok or image is None:
                return "a frame could not be decoded"
            if not self._up:
                self._set_up(True)
                if ever_up:
                    self.reconnects += 1
                    if self.metrics is not None:
                        self.metrics.reconnects.inc()
                    log.warning("camera %s up again after %.1f s down (%d tries)", self.camera_id,
                                time.monotonic() - down_since, failed_tries)
                else:
                    log.info("camera %s up: %s, %dx%d", self.camera_id, self.target, image.shape[1], image.shape[0])
            settled = settled or waited_s >= settle_wait_s or time.monotonic() - opened_at > SETTLE_LIMIT_S
            if self.metrics is not None:
                self.metrics.grabbed.inc()
            self._rate.tick()
            with self._fresh:
                self._grabs += 1
                if settled:
                    self._newest = _Grab(self._grabs, captured_ns, image)
                    self._fresh.notify_all()
        return "stopped"

    def _set_up(self, up: bool) -> None:
        self._up = up
        if self.metrics is not None:
            self.metrics.up.set(1 if up else 0)
        if not up:
            self._rate.reset()
