"""`inspector evaluate` and `inspector denoise`: score a labelled folder, write report.json, plots and
report.html; run an autoencoder over a folder of images.

Data layout (as `inspector synth` writes it, and MVTec-style sets use):
    ROOT/train/good/*          good images the model was trained on (used only by the colour baseline)
    ROOT/test/good/*           good images never seen in training
    ROOT/test/<kind>/*         defective images, one folder per defect kind
    ROOT/ground_truth/<kind>/<stem>_mask.png   optional pixel masks (white = defect)
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import cv2
import numpy as np

from inspector.decode.preprocess import IMAGE_SUFFIXES, list_images, load_images
from inspector.errors import ConfigError
from inspector.model import artifact as artifact_io
from inspector.model.runtime import ModelRunner, pick_device, score_images
from inspector.model.threshold import defects_flagged, false_alarm_upper_bound
from inspector.training.calibration import above_threshold_note
from inspector.training.quality_metrics import auroc, average_precision, rates_at, roc_curve


def _test_sets(root: Path) -> dict[str, list[Path]]:
    test = root / "test"
    if not (test / "good").is_dir():
        raise ConfigError(f"{root} has no test/good folder (see `inspector evaluate --help` for the layout)")
    sets = {"good": list_images(test / "good")}
    for kind in sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good"):
        files = sorted(p for p in (test / kind).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            sets[kind] = files
    if len(sets) == 1:
        raise ConfigError(f"{test} has no defect folders next to good/")
    return sets


def _mask_for(root: Path, kind: str, image: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The defect mask of `image` at the anomaly map's (h, w), or None when the set has none for it."""
    path = root / "ground_truth" / kind / f"{image.stem}_mask.png"
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return None
    h, w = shape
    defect = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 127
    # Some sets (PIPED paper) draw defects black on white: a defect never covers most of a frame, so a mask
    # that is mostly "defect" is read the other way round.
    return ~defect if defect.mean() > 0.5 else defect


def _at_shape(image_rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`image_rgb` resized to (h, w) when it differs (the map, not the model input, sets the picture's size)."""
    h, w = shape
    return image_rgb if image_rgb.shape[:2] == (h, w) else cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_AREA)


def _overlay(image_rgb: np.ndarray, amap: np.ndarray, vmax: float) -> np.ndarray:
    """Image at the map's (h, w) with the anomaly map as a translucent heat map (BGR for cv2.imwrite)."""
    heat = cv2.applyColorMap(np.clip(amap / max(vmax, 1e-12) * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(_at_shape(image_rgb, amap.shape), cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(base, 0.6, heat, 0.4, 0)


def _pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    """AUROC of map values against mask pixels; NaN when no mask marks a defect."""
    if not any(m.any() for m in masks):
        return float("nan")
    labels, values = np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
    if labels.size > 4_000_000:  # subsample evenly: AUROC over millions of pixels changes in the 4th decimal
        step = labels.size // 4_000_000 + 1
        labels, values = labels[::step], values[::step]
    return auroc(labels, values)


def _colour_warning(model_auroc: float, baseline_auroc: float) -> str | None:
    """The report's warning when colour statistics alone rank the test set better than the model does."""
    if not baseline_auroc > model_auroc:  # also False when either is NaN
        return None
    return (f"the colour-statistics baseline (AUROC {baseline_auroc:.3f}) beats the model ({model_auroc:.3f}): "
            "on this set defects stand out more in overall colour than in the model's reconstruction error. "
            "Check that train/good holds only good images and covers their whole colour range; if it does, "
            "don't deploy this model alone: retrain with more epochs or a larger --size, or add a colour "
            "check (inspector.training.colour_baseline) beside it.")


def _bound_warnings(bound: float | None, false_alarms: int, n_good: int) -> list[str]:
    """A warning when the false alarms on test/good are clearly (at 95 %) more than the model file's bound."""
    if bound is None or n_good == 0:
        return []
    realised_at_least = 1 - false_alarm_upper_bound(n_good, n_good - false_alarms)  # 95 % lower bound
    if realised_at_least <= bound:
        return []
    return [f"{false_alarms} of {n_good} good test images alerted ({false_alarms / n_good:.1%}): clearly above the "
            f"false-alarm rate the model file promises at most ({bound:.1%}, 95 % bound). These images differ from "
            "those the threshold was set on: recalibrate on images like them (`inspector calibrate --good DIR`), or "
            "on the running line (`inspector calibrate --from-line`)."]


def _threshold_notes(highest: object, threshold: float) -> list[str]:
    """Plain sentences on what set the threshold."""
    note = above_threshold_note(highest, threshold)
    return [f"Training: {note}."] if note else []


def _plots(out: Path, labels: np.ndarray, scores: np.ndarray, kinds: list[str], threshold: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false-alarm rate", ylabel="detection rate", title="ROC (image level)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(scores.min(), np.percentile(scores, 99.5), 50)
    ax.hist(scores[~labels], bins=bins.tolist(), alpha=0.6, label="good", density=True)
    for kind in sorted(set(kinds) - {"good"}):
        sel = np.array([k == kind for k in kinds])
        ax.hist(scores[sel], bins=bins.tolist(), histtype="step", lw=1.5, label=kind, density=True)
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="density", title="Scores: good vs defects")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "score_hist.png", dpi=100)
    plt.close(fig)
    return ["roc.png", "score_hist.png"]


def evaluate_folder(model_path: Path, root: Path, out: Path, device_name: str = "auto", *,
                    baseline: bool = True, n_examples: int = 6) -> dict:
    """Score test/good and test/<kind>, write report.json, plots and report.html into `out`."""
    t0 = time.time()
    device = pick_device(device_name)
    art = artifact_io.load(model_path, device)
    threshold = art.threshold
    size = art.input_size
    sets = _test_sets(root)
    paths = [p for kind in sets for p in sets[kind]]
    kinds = [kind for kind in sets for _ in sets[kind]]
    images = load_images(paths, size)
    scores, maps = score_images(ModelRunner(art, device), images)
    labels = np.array([k != "good" for k in kinds])

    report: dict = {
        "model": {"path": str(model_path), "model_id": art.model_id, "model_version": art.model_version,
                  "checksum": art.checksum[:16], "threshold": threshold,
                  "calibration": art.calibration.to_dict() if art.calibration else None,
                  "highest_good_scores": art.training.get("highest_good_scores") or [],
                  "tiling": art.tiling.to_dict() if art.tiling else None},
        "data": {"root": str(root), "counts": {k: len(v) for k, v in sets.items()}},
        "image": {"auroc": auroc(labels, scores), "aupr": average_precision(labels, scores),
                  **rates_at(labels, scores, threshold)},
        "per_kind": {},
        "warnings": [],  # plain sentences, each saying what is wrong and what to do; shown atop report.html
        "notes": _threshold_notes(art.training.get("highest_good_scores"), threshold),  # under the warnings
    }
    report["image"]["threshold_method"] = (report["model"]["calibration"] or {}).get("method")
    good_sel = ~labels
    report["image"]["false_alarm_bound"] = bound = art.calibration.false_alarm_bound if art.calibration else None
    report["warnings"].extend(_bound_warnings(bound, int(np.count_nonzero(defects_flagged(scores[good_sel], threshold))),
                                              int(good_sel.sum())))
    for kind in sets:
        if kind == "good":
            continue
        sel = np.array([k == kind for k in kinds])
        both = sel | good_sel
        report["per_kind"][kind] = {
            "n": int(sel.sum()),
            "auroc": auroc(labels[both], scores[both]),
            "detection_rate": float(defects_flagged(scores[sel], threshold).mean()),
        }

    # Pixel AUROC over defective images that have masks and the good images (all-zero masks): overall and
    # per kind. Masks are resized to the map's (h, w), which need not be the model input's.
    map_h, map_w = maps.shape[1:]  # maps: (N, h, w)
    map_shape = (int(map_h), int(map_w))
    good_idx = np.flatnonzero(good_sel)
    masked: dict[str, list[tuple[int, np.ndarray]]] = {}
    for i, (p, kind) in enumerate(zip(paths, kinds)):
        if kind != "good":
            mask = _mask_for(root, kind, p, map_shape)
            if mask is not None:
                masked.setdefault(kind, []).append((i, mask))
    good_masks = [np.zeros(map_shape, bool) for _ in good_idx]
    good_maps = [maps[i] for i in good_idx]
    for kind, items in masked.items():
        kind_auroc = _pixel_auroc([m for _, m in items] + good_masks, [maps[i] for i, _ in items] + good_maps)
        report["per_kind"][kind].update(pixel_auroc=kind_auroc, pixel_n_masks=len(items))
    all_masked = [item for items in masked.values() for item in items]
    if all_masked and any(m.any() for _, m in all_masked):
        report["pixel"] = {"auroc": _pixel_auroc([m for _, m in all_masked] + good_masks,
                                                 [maps[i] for i, _ in all_masked] + good_maps),
                           "n_images": len(all_masked) + len(good_masks)}

    if baseline and (root / "train" / "good").is_dir():
        from inspector.training.colour_baseline import colour_baseline_scores

        train_bgr = [cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in load_images(list_images(root / "train" / "good"), size)]
        test_bgr = [cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in images]
        base = colour_baseline_scores(train_bgr, test_bgr)
        report["colour_baseline"] = {"auroc": auroc(labels, base), "aupr": average_precision(labels, base)}
        warning = _colour_warning(report["image"]["auroc"], report["colour_baseline"]["auroc"])
        if warning:
            report["warnings"].append(warning)

    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(out, labels, scores, kinds, threshold)
    vmax = float(np.percentile(maps, 99.9))
    flagged = defects_flagged(scores, threshold)
    worst_fa = [int(i) for i in np.argsort(-np.where(good_sel, scores, -np.inf))[:n_examples]
                if good_sel[i] and flagged[i]]
    missed = [int(i) for i in np.argsort(np.where(labels, scores, np.inf))[:n_examples]
              if labels[i] and not flagged[i]]
    # If nothing was missed or falsely alarmed, show the closest calls instead: still the most informative.
    worst_fa = worst_fa or [int(i) for i in np.argsort(-np.where(good_sel, scores, -np.inf))[:3]]
    missed = missed or [int(i) for i in np.argsort(np.where(labels, scores, np.inf))[:3]]
    examples: dict[str, list[dict[str, object]]] = {"false_alarms": [], "missed_defects": []}
    for group, idx in (("false_alarms", worst_fa), ("missed_defects", missed)):
        for i in idx:
            name = f"{group}_{i:04d}.png"
            plain = cv2.cvtColor(_at_shape(images[i], map_shape), cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(out / name), np.hstack([plain, _overlay(images[i], maps[i], vmax)]))
            examples[group].append({"file": name, "image": str(paths[i]), "kind": kinds[i],
                                    "score": float(scores[i])})
    report["examples"] = examples
    report["seconds"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    _write_html(out, report, figures)
    return report


def _write_html(out: Path, report: dict, figures: list[str]) -> None:
    img = report["image"]

    def pixel_cell(v: dict) -> str:
        return f"{v['pixel_auroc']:.4f}" if "pixel_auroc" in v else "—"

    warnings = "".join(f"<p class='warn'>Warning: {html.escape(w)}</p>" for w in report["warnings"])
    warnings += "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.get("notes", []))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{v['auroc']:.4f}</td>"
                   f"<td>{v['detection_rate']:.2%}</td><td>{pixel_cell(v)}</td></tr>"
                   for k, v in report["per_kind"].items())
    ex = "".join(f"<figure><img src='{e['file']}'><figcaption>{html.escape(group)}: {html.escape(e['kind'])} "
                 f"score {e['score']:.5f}</figcaption></figure>"
                 for group, items in report["examples"].items() for e in items)
    pixel = f"<li>pixel AUROC {report['pixel']['auroc']:.4f}</li>" if "pixel" in report else ""
    base = (f"<li>colour-statistics baseline image AUROC {report['colour_baseline']['auroc']:.4f}</li>"
            if "colour_baseline" in report else "")
    method = f" ({html.escape(str(img['threshold_method']))})" if img.get("threshold_method") else ""
    body = f"""<!doctype html><meta charset="utf-8"><title>Inspector evaluation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:2px 10px}}
figure{{display:inline-block;margin:4px}}img{{max-width:480px}}
.warn{{background:#fff3cd;border-left:4px solid #e0a800;padding:6px 10px}}
.note{{background:#eef4fb;border-left:4px solid #5b8fd1;padding:6px 10px}}</style>
<h1>Evaluation of {html.escape(report['model']['model_id'])}:{html.escape(report['model']['model_version'])}</h1>
{warnings}
<p>Data: {html.escape(report['data']['root'])} {html.escape(json.dumps(report['data']['counts']))}</p>
<ul><li>image AUROC {img['auroc']:.4f}, AUPR {img['aupr']:.4f}</li>
<li>at the stored threshold {report['model']['threshold']:.5g}{method}: false-alarm rate on test/good
{img['false_alarm_rate']:.2%}, detection rate {img['detection_rate']:.2%}, F1 {img['f1']:.3f}</li>{pixel}{base}</ul>
<h2>Per defect kind</h2><table><tr><th>kind</th><th>n</th><th>AUROC</th><th>detected</th><th>pixel AUROC</th></tr>
{rows}</table>
<h2>Plots</h2>{''.join(f"<img src='{f}'>" for f in figures)}
<h2>Worst false alarms and missed defects</h2>{ex}
<p><a href="report.json">report.json</a></p>"""
    (out / "report.html").write_text(body)


def denoise_folder(model_path: Path, folder: Path, out: Path, device_name: str = "auto") -> int:
    """Write the model's reconstruction of every image in `folder` (a denoising model removes camera noise)."""
    import torch

    from inspector.decode.preprocess import to_tensor

    device = pick_device(device_name)
    art = artifact_io.load(model_path, device)
    if type(art.model).__name__ == "FeatureReconstructor":
        raise ConfigError(f"{model_path} reconstructs features, not images: denoise needs an image autoencoder "
                          "(`inspector train --mode plain --denoise`)")
    paths = list_images(folder)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for i in range(0, len(paths), 32):
            chunk = paths[i : i + 32]
            recon = art.model(to_tensor(load_images(chunk, art.config.image_size), device))  # (B, 3, S, S)
            for p, r in zip(chunk, (recon.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()):
                cv2.imwrite(str(out / f"{p.stem}.png"), cv2.cvtColor(r, cv2.COLOR_RGB2BGR))
    return len(paths)
