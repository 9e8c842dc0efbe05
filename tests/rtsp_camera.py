"""A live RTSP camera on loopback for the producer tests, run under Debian's python3 (the venv cannot import gi).

`python3 tests/rtsp_camera.py PORT [FPS]` serves rtsp://127.0.0.1:PORT/cam: 320x240 MJPEG over RTP at FPS
(default 30). Every frame carries the wall-clock time it was made, in milliseconds modulo 2**32, burnt in as 32
vertical stripes of 10 pixels (bright = 1, most significant bit on the left), so that a reader can tell the age
of any frame it receives (`tests/live_cameras.py: stamped_ms`). Prints "ready" once it accepts clients.
"""

import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

WIDTH, HEIGHT, BITS = 320, 240, 32
CHROMA = b"\x80" * (WIDTH // 2 * HEIGHT // 2 * 2)  # neutral U and V planes of I420


def stamped_frame(ms: int) -> bytes:
    """An I420 frame whose luma stripes spell `ms` (mod 2**32)."""
    row = b"".join((b"\xeb" if (ms >> (BITS - 1 - i)) & 1 else b"\x10") * (WIDTH // BITS) for i in range(BITS))
    return row * HEIGHT + CHROMA


def main() -> int:
    port, fps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( appsrc name=src is-live=true format=time do-timestamp=true "
        f"caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={fps}/1 "
        f"! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)  # one pipeline for every client: each sees the same frames
    sources: list = []

    def configure(_factory: object, media: GstRtspServer.RTSPMedia) -> None:
        sources[:] = [media.get_element().get_by_name("src")]

    def push() -> bool:
        for src in sources:
            src.emit("push-buffer", Gst.Buffer.new_wrapped(stamped_frame(time.time_ns() // 1_000_000)))
        return True

    factory.connect("media-configure", configure)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    GLib.timeout_add(max(1, round(1000 / fps)), push)
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
