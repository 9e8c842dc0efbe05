"""Model-quality benchmark: the default model on a fresh synthetic banana test set (a seed it never saw).

Reports image AUROC, pixel AUROC, the colour-statistics baseline (same evaluation code), and the realised
false-alarm rate at the stored threshold on many good images not used for calibration, against the target.

    .venv/bin/python bench/quality.py            # ~2 minutes on 2 cores; writes bench/out/quality/
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.evaluation import evaluate_folder  # noqa: E402
from inspector.paths import DEFAULT_MODEL  # noqa: E402
from producers.bananas import write_dataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=2, help="data seed (the default model was trained on seed 0)")
    ap.add_argument("--good", type=int, default=1000, help="good test images (false-alarm rate resolution)")
    ap.add_argument("--per-defect", type=int, default=50)
    ap.add_argument("--train", type=int, default=400, help="train/good images for the colour baseline")
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bananas-quality-") as tmp:
        t0 = time.time()
        write_dataset(Path(tmp), n_train=args.train, n_test_good=args.good, n_test_per_defect=args.per_defect,
                      size=256, seed=args.seed)
        report = evaluate_folder(args.model, Path(tmp), args.out, "auto")
    cal = report["model"]["calibration"]
    target = cal["target_false_alarm"]
    realised = report["image"]["false_alarm_rate"]
    summary = {
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed, "n_good": args.good,
        "n_defect": sum(v["n"] for v in report["per_kind"].values()),
        "image_auroc": round(report["image"]["auroc"], 4), "pixel_auroc": round(report["pixel"]["auroc"], 4),
        "colour_baseline_auroc": round(report["colour_baseline"]["auroc"], 4),
        "threshold": report["model"]["threshold"], "target_false_alarm": target,
        "realised_false_alarm": round(realised, 4), "realised_over_target": round(realised / target, 2),
        "detection_rate": round(report["image"]["detection_rate"], 4),
        "per_kind": {k: {"auroc": round(v["auroc"], 4), "detected": round(v["detection_rate"], 3)}
                     for k, v in report["per_kind"].items()},
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    ok = (summary["image_auroc"] >= 0.99 and summary["pixel_auroc"] >= 0.95
          and summary["colour_baseline_auroc"] <= 0.85 and 0.5 <= summary["realised_over_target"] <= 2)
    print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
