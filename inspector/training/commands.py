"""The CLI's model commands: train, calibrate (from held-out images or from the line), evaluate, denoise and synth,
their flags and what each does. `inspector/__main__.py` builds the parser and the settings and calls them; the
imports inside each command keep `inspector --help` fast."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from inspector.errors import ConfigError
from inspector.settings import Settings

AddFlags = Callable[[argparse.ArgumentParser], None]


def writable_folder(folder: Path, what: str) -> Path:
    """`folder`, created if missing, or one clear error before any work is spent when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} {folder}: permission denied")
    return folder


def writable_file(path: Path, what: str) -> Path:
    """`path`, its folder checked as `writable_folder` checks it (a model file written after minutes of training)."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give a file name (e.g. {path / 'model.safetensors'})")
    writable_folder(path.parent, f"{what} {path}: its folder")
    return path


def add_model_commands(sub: argparse._SubParsersAction, with_model: AddFlags, with_kafka: AddFlags) -> None:
    """The model commands' subparsers; `with_model` and `with_kafka` add the flags every command shares."""
    sp = sub.add_parser("train", help="train a model on a folder of good images, then calibrate")
    with_model(sp)
    sp.add_argument("--data", required=True, help="folder of good images (e.g. DATA/train/good)")
    sp.add_argument("--extra-good", action="append", default=[], metavar="DIR",
                    help="more good images, e.g. the false alarms of `calibrate --feedback --feedback-frames DIR` "
                         "(repeatable)")
    sp.add_argument("--out", required=True, help="model file to write (.safetensors)")
    # Flags left out keep TrainConfig's and the model config's defaults (inspector/training/config.py).
    sp.add_argument("--mode", choices=["features", "repair", "plain"],
                    help="features: reconstruct pretrained features (default); repair: DRAEM-style autoencoder "
                         "and head, from scratch; plain: the plain autoencoder (--denoise for the denoising one)")
    sp.add_argument("--size", type=int, default=None,
                    help="model input side in pixels (default: chosen from the images' size and the mode)")
    sp.add_argument("--widths", default=None, help="channels per stage, e.g. 16,32,64,64")
    sp.add_argument("--latent-channels", type=int)
    sp.add_argument("--epochs", type=int, help="epochs of the repair and plain modes")
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--loss", choices=["l2", "l1", "ssim", "l2+ssim", "l1+ssim"])
    sp.add_argument("--denoise", action="store_true", help="denoising autoencoder: noisy input, clean target")
    sp.add_argument("--target-far", type=float, help="target false-alarm rate on good images")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--global-ranks", type=int, nargs="+", metavar="RANK",
                    help="features mode: ranks of the global term to choose from (default 8 16 32)")
    sp.add_argument("--backbones", nargs="+", metavar="NAME",
                    help="features mode: pretrained feature extractors to try, in order of preference; a later one "
                         "is kept only where it ranks synthetic (or --defects) defects clearly higher (default "
                         "efficientnet-lite0 efficientnet-lite2; name one alone for a model at its speed)")
    sp.add_argument("--memory-size", type=int, metavar="N",
                    help="features mode: good regions in the memory whose nearest-region distance is a third term, "
                         "kept only where synthetic (or --defects) defects rank clearly higher with it (default 1024; "
                         "0 = no memory)")
    sp.add_argument("--tiles", default="auto", metavar="auto|off|ROWSxCOLS",
                    help="features mode: see each frame as a grid of overlapping model-sized tiles near its own "
                         "resolution (default auto: a grid where the detail the frames hold spans a long side of at "
                         "least 2.5 inputs and twice the short one, else one squashed input; off: always one "
                         "squashed input; e.g. 2x4 to choose the grid)")
    sp.add_argument("--edge-context", type=int, metavar="PX",
                    help="features mode: pixels of replicated edge around the input, used where the map is not "
                         "normalised per location (default 16; 0 = none)")
    sp.add_argument("--defects", metavar="DIR",
                    help="features mode: labelled defective images (a folder, or a set's test folder whose folders "
                         "other than good/ hold them), never trained on: the global term's weight is the one that "
                         "ranks them highest above the held-out good images (default: the weight 2)")
    sp.add_argument("--camera-jpeg-quality", type=int, metavar="Q",
                    help="set the threshold on good images as a camera sending JPEG at quality Q delivers them "
                         "(default 90, the producer's; 0 = as they are)")
    sp.add_argument("--model-id", default="banana-ae")
    sp.add_argument("--model-version", default=None)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("calibrate", help="set the threshold from held-out good images")
    with_model(sp)
    sp.add_argument("--good", help="folder of good images not used in training")
    sp.add_argument("--from-line", action="store_true",
                    help="instead: per-camera thresholds from the good frames the workers scored (kafka.scores_topic) "
                         "in the last --window-minutes, leaving out frames operators confirmed as defects")
    sp.add_argument("--window-minutes", type=float, default=60.0)
    sp.add_argument("--dry-run", action="store_true", help="with --from-line: print the proposal, write nothing")
    sp.add_argument("--defects", help="optional folder of labelled defects: F1-optimal threshold instead")
    sp.add_argument("--target-far", type=float, default=0.01)
    sp.add_argument("--camera-jpeg-quality", type=int, default=90, metavar="Q",
                    help="score the good images also through JPEG at the camera's quality Q (0 = as they are)")
    sp.add_argument("--out", help="write here instead of updating the model file in place")
    sp.add_argument("--feedback", action="store_true",
                    help="add the frames operators confirmed as false alarms (kafka.feedback_topic, frames fetched "
                         "from kafka.frames_topic while retained) to the good images")
    sp.add_argument("--feedback-frames", metavar="DIR", help="with --feedback: also save those frames here")
    with_kafka(sp)
    sp.set_defaults(func=cmd_calibrate)

    sp = sub.add_parser("evaluate", help="score a labelled folder and write report.json/html with plots")
    with_model(sp)
    sp.add_argument("--data", required=True, help="data set root with test/good and test/<defect kind>")
    sp.add_argument("--out", required=True, help="report folder")
    sp.add_argument("--no-baseline", action="store_true", help="skip the colour-statistics baseline")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("denoise", help="run a (denoising) autoencoder over a folder of images")
    with_model(sp)
    sp.add_argument("--input", required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_denoise)

    sp = sub.add_parser("synth", help="write the synthetic banana data set")
    sp.add_argument("--out", required=True)
    sp.add_argument("--train", type=int, default=400)
    sp.add_argument("--test-good", type=int, default=100)
    sp.add_argument("--test-per-defect", type=int, default=25)
    sp.add_argument("--calibration", type=int, default=0)
    sp.add_argument("--size", type=int, default=256)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--belt-frames", type=int, default=0, metavar="N",
                    help="also N good frames of the synthetic belt camera (JPEG), the demo's line, in calibration/good")
    sp.set_defaults(func=cmd_synth)


def _train_config(args: argparse.Namespace):  # untyped: local imports keep `--help` fast
    """TrainConfig from the flags given; a flag left out keeps TrainConfig's default (the one home of them)."""
    from inspector.training.config import TrainConfig

    flags = {"mode": args.mode, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "loss": args.loss, "denoise": args.denoise or None, "target_false_alarm": args.target_far,
             "seed": args.seed, "camera_jpeg_quality": args.camera_jpeg_quality,
             "global_ranks": tuple(args.global_ranks) if args.global_ranks else None,
             "backbones": tuple(args.backbones) if args.backbones else None, "memory_size": args.memory_size}
    from inspector.model.backbone import BACKBONES

    unknown = sorted(set(args.backbones or ()) - set(BACKBONES))
    if unknown:
        raise ConfigError(f"--backbones: unknown {', '.join(unknown)} (known: {', '.join(sorted(BACKBONES))})")
    if args.memory_size is not None and args.memory_size < 0:
        raise ConfigError(f"--memory-size must be 0 (no memory) or more, got {args.memory_size}")
    return TrainConfig(**{name: value for name, value in flags.items() if value is not None})


def _model_config(args: argparse.Namespace, mode: str, frame_sides: list[tuple[int, int]]):  # untyped: as above
    from inspector.model.registry import family_for_mode
    from inspector.training.pipeline import default_input_size

    fields: dict[str, object] = {"image_size": args.size or default_input_size(frame_sides, mode)}
    if mode == "features" and args.edge_context is not None:
        fields["edge_context"] = args.edge_context
    if mode != "features":  # the image autoencoders' shape flags
        if args.widths:
            fields["widths"] = tuple(int(w) for w in args.widths.split(","))
        if args.latent_channels is not None:
            fields["latent_channels"] = args.latent_channels
    try:
        return family_for_mode(mode).config(**fields)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _tiles_flag(text: str, mode: str):  # untyped: as above
    """`--tiles` checked before any work: "auto", None (off) or (rows, cols)."""
    from inspector.model.tiling import parse_tiles

    try:
        asked = parse_tiles(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if mode != "features" and asked not in (None, "auto"):
        raise ConfigError("--tiles tiles the features mode's input: add --mode features or leave it out")
    return asked if mode == "features" else None


def _tiling(asked, size: int, sample, with_defects: bool):  # untyped: as above
    """The Tiling for the frames `sample` (`frame_scale.frame_sample`) describes (None: one square input): theirs
    where "auto" (`choose_tiling`), which labelled defects turn off (they choose the global weight of one squashed
    input)."""
    from inspector.model.tiling import choose_tiling, fixed_grid

    if asked is None:
        return None
    if asked == "auto":
        tiling = choose_tiling(sample.sides, size, sample.detail_scale)
        if tiling is not None and with_defects:
            print("note: --defects chooses the global weight of one squashed input: the frames are not tiled")
            return None
        if sample.detail_scale > 1 and tiling is None and choose_tiling(sample.sides, size) is not None:
            print(f"note: the frames hold the detail of frames {sample.detail_scale:g}x smaller (enlarged, or a soft "
                  "lens): one squashed input, not tiles")
        return tiling
    if with_defects:
        raise ConfigError("--defects chooses the global weight of one squashed input, not of tiles: add --tiles off")
    rows, cols = asked
    return fixed_grid(rows, cols, size)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.decode.preprocess import list_images, list_labelled_defects, load_images
    from inspector.model.runtime import pick_device
    from inspector.model.tiling import input_hw
    from inspector.training.calibration import above_threshold_note
    from inspector.training.frame_scale import frame_sample
    from inspector.training.pipeline import train_and_calibrate

    out = writable_file(Path(args.out), "model file")
    device = pick_device(settings.model.device)
    train_cfg = _train_config(args)
    asked_tiles = _tiles_flag(args.tiles, train_cfg.mode)
    paths = list_images(Path(args.data)) + [p for d in args.extra_good for p in list_images(Path(d))]
    if train_cfg.denoise and train_cfg.mode != "plain":
        raise ConfigError("--denoise trains the plain autoencoder: add --mode plain")
    sample = frame_sample(paths)  # the frames' sides and detail, read once for the input side and the grid
    cfg = _model_config(args, train_cfg.mode, sample.sides)
    if args.defects and train_cfg.mode != "features":
        raise ConfigError("--defects chooses the features mode's global weight: the other modes have none")
    defect_paths = list_labelled_defects(Path(args.defects)) if args.defects else []
    tiling = _tiling(asked_tiles, cfg.image_size, sample, bool(defect_paths))
    images = load_images(paths, input_hw(cfg.image_size, tiling))
    defects = load_images(defect_paths, cfg.image_size) if defect_paths else None
    grid = "" if tiling is None else (f", {tiling.rows}x{tiling.cols} tiles of the frame resized to "
                                      f"{tiling.canvas_hw[1]}x{tiling.canvas_hw[0]}")
    print(f"training a {train_cfg.mode} model on {len(paths)} images from {args.data} ({cfg.image_size}px{grid}, "
          f"{device}) -> {out}")
    artifact = train_and_calibrate(images, paths, out, cfg, train_cfg, device, model_id=args.model_id,
                                   model_version=args.model_version, defects=defects, tiling=tiling)
    cal = artifact.calibration
    assert cal is not None
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB): threshold {cal.threshold:.6f} ({cal.method}) at target "
          f"false-alarm {cal.target_false_alarm:.2%} from {cal.n_good} held-out good images (at most "
          f"{cal.false_alarm_bound:.2%} with 95 % confidence from those images alone)")
    note = above_threshold_note(artifact.training.get("highest_good_scores"), cal.threshold)
    if note:
        print(f"note: {note}")
    return 0


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_line:
        return _calibrate_from_line(args, settings)
    if not args.good:
        raise ConfigError("calibrate needs --good DIR (held-out good images) or --from-line")
    from inspector.decode.preprocess import list_images, load_images
    from inspector.model import artifact as artifact_io
    from inspector.model.runtime import pick_device
    from inspector.training.calibration import (
        above_threshold_note,
        calibrate_artifact,
        highest_good_scores,
        with_confirmed_false_alarms,
    )

    device = pick_device(settings.model.device)
    path = Path(settings.model.path)
    out = writable_file(Path(args.out), "model file") if args.out else path
    artifact = artifact_io.load(path)
    size = artifact.input_size
    good_paths = list_images(Path(args.good))
    good = load_images(good_paths, size)
    if args.feedback:
        good = with_confirmed_false_alarms(settings, good,
                                           Path(args.feedback_frames) if args.feedback_frames else None)
    defects = load_images(list_images(Path(args.defects)), size) if args.defects else None
    artifact, good_scores = calibrate_artifact(artifact, good, args.target_far, device, defect_images=defects,
                                               camera_jpeg_quality=args.camera_jpeg_quality)
    names = [str(p) for p in good_paths] + [f"confirmed false alarm {i}" for i in range(len(good) - len(good_paths))]
    artifact_io.save(artifact, out)
    cal = artifact.calibration
    assert cal is not None
    warn = (f" (only {cal.n_good} good images, too few for a conformal guarantee at this target: a fitted tail)"
            if cal.method == "fitted_tail" else "")
    print(f"{out}: threshold {cal.threshold:.6f} ({cal.method} on {cal.n_good} good images, target false-alarm "
          f"{cal.target_false_alarm:.2%}, at most {cal.false_alarm_bound:.2%} with 95 % confidence from these "
          f"images alone){warn}")
    note = above_threshold_note(highest_good_scores(names, good_scores), cal.threshold)
    if note and cal.method != "f1":
        print(f"note: {note}")
    return 0


def _calibrate_from_line(args: argparse.Namespace, settings: Settings) -> int:
    """Per-camera thresholds from the scores the line published in the last --window-minutes: printed, and written
    as a new model version (the workers hot-reload it) unless --dry-run."""
    from inspector.model import artifact as artifact_io
    from inspector.training.line_calibration import proposal_table, propose_from_line, with_line_thresholds

    path = Path(settings.model.path)
    out = writable_file(Path(args.out), "model file") if args.out and not args.dry_run else path
    artifact = artifact_io.load(path)
    line = propose_from_line(settings, artifact, args.window_minutes * 60, args.target_far)
    print(f"{line.scores} scores in the last {args.window_minutes:g} min of {settings.kafka.scores_topic}; "
          f"{line.confirmed_defects} frames confirmed defective by operators; target false-alarm "
          f"{args.target_far:.2%}")
    print("\n".join(proposal_table(line.cameras)))
    if note := line.override_note():
        print(f"note: {note}")
    if not line.any_proposed:
        print("no camera has enough good frames in the window for a threshold at this target: nothing written")
        return 1
    if args.dry_run:
        return 0
    saved = artifact_io.save(with_line_thresholds(artifact, line.cameras), out)
    print(f"{out}: version {saved.model_version} with per-camera thresholds (workers watching it reload it)")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.training.evaluation import evaluate_folder

    out = writable_folder(Path(args.out), "report folder")
    report = evaluate_folder(Path(settings.model.path), Path(args.data), out, settings.model.device,
                             baseline=not args.no_baseline)
    img = report["image"]
    bound = img.get("false_alarm_bound")
    print(f"image AUROC {img['auroc']:.4f}  AUPR {img['aupr']:.4f}  false-alarm {img['false_alarm_rate']:.2%}"
          + (f" (bound {bound:.2%})" if bound is not None else "") + "  "
          f"detection {img['detection_rate']:.2%}  pixel AUROC {report.get('pixel', {}).get('auroc', float('nan')):.4f}")
    if "colour_baseline" in report:
        print(f"colour baseline image AUROC {report['colour_baseline']['auroc']:.4f}")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_denoise(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.training.evaluation import denoise_folder

    n = denoise_folder(Path(settings.model.path), Path(args.input), writable_folder(Path(args.out), "output folder"),
                       settings.model.device)
    print(f"wrote {n} denoised images to {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace, _settings: Settings) -> int:
    from inspector.synthetic.bananas import write_dataset

    counts = write_dataset(writable_folder(Path(args.out), "dataset folder"), n_train=args.train, n_test_good=args.test_good,
                           n_test_per_defect=args.test_per_defect, size=args.size, seed=args.seed,
                           n_calibration=args.calibration)
    if args.belt_frames:
        from inspector.sorter.belt_run import BELT_GEOMETRY
        from inspector.sorter.line_file import parse_line
        from inspector.synthetic.belt import BeltStream, write_good_frames

        line = parse_line({"defaults": {**BELT_GEOMETRY, "frame_width_px": args.size, "frame_height_px": args.size},
                           "lanes": [{"id": "synth", "actuator": {"protocol": "log"}, "cameras": [{"id": "belt"}]}]})
        geometry = line.camera("belt")
        assert geometry is not None  # the line just parsed has it
        # 6 frames/s of 4 bananas/s: each banana in one or two frames, so the frames are 600 different bananas.
        stream = BeltStream(geometry, fps=6.0, defect_rate=0.0, seed=args.seed + 1000)
        counts["calibration/good (belt)"] = write_good_frames(Path(args.out) / "calibration" / "good", stream,
                                                              args.belt_frames)
    print(f"wrote {sum(counts.values())} images to {args.out}: {counts}")
    return 0
