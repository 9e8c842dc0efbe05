"""`python -m producers SOURCE ...`: publish frames to Kafka from a synthetic stream, a folder, a video
file or a camera. Settings come from INSPECTOR_* variables; flags override them."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from inspector.errors import InspectorError
from inspector.process import configure_logging
from inspector.settings import Settings, load_settings
from producers.base import FrameSource, Publisher


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producers", description=__doc__)
    p.add_argument("source", choices=["synthetic", "folder", "video", "camera"])
    p.add_argument("target", nargs="?", help="folder path, video path, or camera index / RTSP URL")
    p.add_argument("--bootstrap-servers")
    p.add_argument("--topic", help="frames topic (default: kafka.frames_topic)")
    p.add_argument("--camera-id")
    p.add_argument("--fps", type=float, help="target frames per second (0 = as fast as possible)")
    p.add_argument("--count", type=int, help="stop after this many frames (0 = no limit)")
    p.add_argument("--width", type=int, help="resize at the edge (0 = keep)")
    p.add_argument("--height", type=int)
    p.add_argument("--jpeg-quality", type=int)
    p.add_argument("--defect-rate", type=float, help="synthetic: share of defective bananas")
    p.add_argument("--seed", type=int)
    p.add_argument("--loop", action="store_true", help="folder/video: start again at the end")
    return p


def build_source(args: argparse.Namespace, settings: Settings) -> FrameSource:
    if args.source == "synthetic":
        from producers.synthetic import SyntheticSource

        return SyntheticSource(settings.producer, size=max(settings.producer.width, settings.producer.height) or 256)
    if not args.target:
        raise InspectorError(f"the {args.source} source needs a target (path, index or URL)")
    if args.source == "folder":
        from producers.files import FolderSource

        return FolderSource(Path(args.target), loop=args.loop)
    from producers.files import CaptureSource

    return CaptureSource(args.target, loop=args.loop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    producer_overrides = {k: v for k, v in {
        "camera_id": args.camera_id, "fps": args.fps, "count": args.count, "width": args.width,
        "height": args.height, "jpeg_quality": args.jpeg_quality, "defect_rate": args.defect_rate,
        "seed": args.seed}.items() if v is not None}
    kafka_overrides = {k: v for k, v in {"bootstrap_servers": args.bootstrap_servers,
                                         "frames_topic": args.topic}.items() if v is not None}
    try:
        settings = load_settings(producer=producer_overrides, kafka=kafka_overrides)
        configure_logging(settings.log_level)
        source = build_source(args, settings)
        publisher = Publisher(settings.kafka, settings.producer)
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: source.stop())
    signal.signal(signal.SIGINT, lambda *_: source.stop())
    try:
        stats = publisher.publish(source)
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
        publisher.close()
    rate = stats.sent / stats.seconds if stats.seconds else 0.0
    print(f"sent {stats.sent} frames ({stats.acked} acknowledged, {stats.failed} failed) in {stats.seconds:.1f}s "
          f"= {rate:.0f} frames/s; labels {stats.labels}")
    return 0 if stats.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
