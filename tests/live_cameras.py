"""Live cameras on loopback for the producer tests: an RTSP server (GStreamer, tests/rtsp_camera.py, under
Debian's python3) and an HTTP MJPEG server (in this process). Both burn the wall-clock time each frame was made
into the frame (32 stripes, milliseconds modulo 2**32), so a test can tell the age of any frame it receives."""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from inspector.kafka.local_broker import free_port

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: it has gi (python3-gi), the venv cannot import it
RTSP_SCRIPT = Path(__file__).with_name("rtsp_camera.py")
STAMP_BITS = 32


def rtsp_server_missing() -> str:
    """Why the RTSP camera cannot run here ("" when it can): the Debian packages of `make system-deps`."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('appsrc', 'jpegenc', 'rtpjpegpay'))")
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return ""
    why = (done.stderr.strip().splitlines() or ["the probe failed"])[-1]
    return f"GStreamer's RTSP server is not installed (make system-deps): {why}"


def stamp_ms() -> int:
    return time.time_ns() // 1_000_000 % 2**STAMP_BITS


def stamped_image(ms: int, width: int = 320, height: int = 240, noise: np.ndarray | None = None) -> np.ndarray:
    """A BGR frame whose stripes spell `ms`; `noise` (H, W, 3) fills the lower half (bigger JPEGs)."""
    bits = np.array([(ms >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)], np.uint8) * 219 + 16
    image = np.repeat(np.repeat(bits, width // STAMP_BITS)[None, :, None], height, axis=0).repeat(3, axis=2)
    if noise is not None:
        image[height // 2:] = noise[height // 2:]
    return np.ascontiguousarray(image)


def stamped_ms(image: np.ndarray) -> int:
    """The stamp of a frame made by either camera (any size: read in the top quarter of each stripe)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    height, width = grey.shape
    row = grey[height // 8]
    ms = 0
    for i in range(STAMP_BITS):
        ms = (ms << 1) | int(row[int((i + 0.5) * width / STAMP_BITS)] > 128)
    return ms


def age_ms(now_ms: int, stamp: int) -> int:
    """now - stamp in milliseconds, both modulo 2**32."""
    return (now_ms - stamp) % 2**STAMP_BITS


class RtspCamera:
    """tests/rtsp_camera.py as a child process: rtsp://127.0.0.1:PORT/cam; `kill()` and `start()` again."""

    def __init__(self, log_dir: Path, fps: int = 30) -> None:
        self.port = free_port()
        self.fps = fps
        self.log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout_s: float = 60) -> RtspCamera:
        self.starts += 1
        log = (self.log_dir / f"rtsp-{self.starts}.log").open("w")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.port), str(self.fps)],
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = self.proc.stdout
        assert stdout is not None
        ready = threading.Event()

        def wait_for_ready_line() -> None:
            if stdout.readline().strip() == "ready":
                ready.set()

        threading.Thread(target=wait_for_ready_line, daemon=True).start()
        if not ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"the RTSP camera did not start: {(self.log_dir / f'rtsp-{self.starts}.log').read_text()}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class MjpegCamera:
    """An HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve it) at http://127.0.0.1:PORT/video."""

    def __init__(self, fps: int = 30, width: int = 320, height: int = 240, noise: bool = False) -> None:
        camera = self
        self.fps = fps
        self.width, self.height = width, height
        self.noise = [np.random.default_rng(i).integers(0, 256, (height, width, 3), np.uint8) for i in range(4)] \
            if noise else None
        self._stopped = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                n, period, next_at = 0, 1.0 / camera.fps, time.monotonic()
                try:
                    while not camera._stopped.is_set():
                        noise = camera.noise[n % len(camera.noise)] if camera.noise else None
                        image = stamped_image(stamp_ms(), camera.width, camera.height, noise)
                        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        n += 1
                        # A late camera skips the frames it missed, as a real one does, instead of sending a burst.
                        next_at = max(next_at + period, time.monotonic() + period / 2)
                        time.sleep(max(next_at - time.monotonic(), 0))
                except OSError:  # the client went away
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/video"

    def close(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
