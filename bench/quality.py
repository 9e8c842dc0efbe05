"""Model-quality benchmark: what a new user gets from the defaults, on every development set.

For each real set in ../shared/datasets (orange, the 12 paper types, ballscrew; see its README) it runs what a
new user runs, every option at its default: `inspector train --data SET/train/good --out M` (timed), then
`inspector evaluate --model M --data SET --out R`, and reads R/report.json. The "bananas" row is the committed
default model evaluated on a fresh synthetic set (`inspector synth --seed 2`: 1,000 good, 50 of each defect kind).
Each row is checked against TARGETS (detection only where test/good's false alarms are <= 5 %). The exit code is 0
whatever the figures; the last line says "targets met" or which are not.

    .venv/bin/python bench/quality.py                                # every set: about 80 minutes on 2 quiet cores
    .venv/bin/python bench/quality.py --sets orange,paper/bdp01_tl   # a subset ("paper" = all 12 types)
    .venv/bin/python bench/quality.py --keep                         # keep the models (bench/out/quality/models)

Writes bench/out/quality/summary.json and each set's report and command log under reports/<set>/, and prints the
figures and the targets as markdown. `--train-args "--epochs 1"` adds flags to every `inspector train` (smoke tests
and experiments: the figures are then not the defaults'); `--datasets DIR` reads the sets from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from inspector.errors import InspectorError

REPO = Path(__file__).resolve().parent.parent
INSPECTOR = [sys.executable, "-m", "inspector"]
SETS = ("orange", "paper", "ballscrew", "bananas")
MAX_FALSE_ALARM = 0.05  # a detection rate counts only at a threshold that false-alarms at most this often
PAPER_TYPES = 12


@dataclass(frozen=True)
class Target:
    image_auroc: float
    detection: float
    pixel_auroc: float | None  # None: the set has no masks
    beat_baseline: bool = False  # the image AUROC must also beat the colour-statistics baseline's


TARGETS = {
    "orange": Target(0.97, 0.80, None, beat_baseline=True),
    "paper": Target(0.98, 0.85, 0.90),  # on the mean of the 12 types; detection pooled over them
    "ballscrew": Target(0.95, 0.70, 0.90),
    "bananas": Target(0.99, 0.90, 0.95),
}

_print_lock = threading.Lock()


def say(*parts: object) -> None:
    with _print_lock:
        print(*parts, flush=True)


@dataclass(frozen=True)
class Job:
    name: str  # "orange", "paper/bdp01_tl", "ballscrew", "bananas"
    data: Path | None  # the set's root; None for bananas (written by `inspector synth`)

    @property
    def group(self) -> str:
        return self.name.split("/")[0]

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")


def plan(selection: list[str], datasets: Path) -> list[Job]:
    """The sets to run, in table order; prints why a requested real set is skipped."""
    jobs: list[Job] = []
    real = [s for s in selection if s != "bananas"]
    if real and not datasets.is_dir():
        say(f"skipping {', '.join(real)}: no datasets folder at {datasets} (see --datasets)")
        real = []
    wanted_types = sorted({s.split("/", 1)[1] for s in real if s.startswith("paper/")})
    for group in SETS:
        if group == "bananas":
            if "bananas" in selection:
                jobs.append(Job("bananas", None))
            continue
        if group == "paper":
            if "paper" in real:
                names = sorted(p.name for p in (datasets / "paper").iterdir() if p.is_dir()) \
                    if (datasets / "paper").is_dir() else []
            else:
                names = wanted_types
            if ("paper" in real or wanted_types) and not names:
                say(f"skipping paper: no paper types under {datasets / 'paper'}")
            candidates = [(f"paper/{n}", datasets / "paper" / n) for n in names]
        else:
            candidates = [(group, datasets / group)] if group in real else []
        for name, root in candidates:
            if (root / "train" / "good").is_dir() and (root / "test" / "good").is_dir():
                jobs.append(Job(name, root))
            else:
                say(f"skipping {name}: {root} has no train/good and test/good")
    return jobs


def _run(cmd: list[str], log: Path) -> float:
    """Run one `inspector` command with its output appended to `log`; its wall seconds. Raises on failure."""
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        f.write(f"[exit {rc} after {seconds:.1f} s]\n")
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"`{shlex.join(cmd[2:])}` exited {rc}; end of {log}:\n{tail}")
    return seconds


def run_job(job: Job, out: Path, models: Path, train_args: list[str], banana_model: Path) -> dict:
    """Train (real sets) and evaluate one set; its row for the table."""
    report_dir = out / "reports" / job.slug
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    log = report_dir / "commands.log"
    row: dict = {"set": job.name, "group": job.group, "train_seconds": None}
    try:
        if job.data is None:  # bananas: the committed model on a synthetic seed it never saw
            with tempfile.TemporaryDirectory(prefix="bananas-quality-") as tmp:
                say(f"[{job.name}] synth seed 2, then evaluate {banana_model}")
                _run([*INSPECTOR, "synth", "--out", tmp, "--seed", "2", "--train", "400", "--test-good", "1000",
                      "--test-per-defect", "50", "--size", "256"], log)
                _run([*INSPECTOR, "evaluate", "--model", str(banana_model), "--data", tmp,
                      "--out", str(report_dir)], log)
                row.update(model_cost(banana_model, Path(tmp) / "test" / "good"))
            row["model"] = str(banana_model)
            row.update(_choices(banana_model))
        else:
            model = models / f"{job.slug}.safetensors"
            for stale in (model, model.with_suffix(".ckpt")):  # never resume an earlier run's checkpoint
                stale.unlink(missing_ok=True)
            say(f"[{job.name}] train on {job.data / 'train' / 'good'}")
            row["train_seconds"] = round(_run([*INSPECTOR, "train", "--data", str(job.data / "train" / "good"),
                                               "--out", str(model), *train_args], log), 1)
            say(f"[{job.name}] trained in {row['train_seconds']:.0f} s; evaluate")
            _run([*INSPECTOR, "evaluate", "--model", str(model), "--data", str(job.data),
                  "--out", str(report_dir)], log)
            row.update(_choices(model))
            row.update(model_cost(model, job.data / "test" / "good"))
        row.update(_row_from_report(json.loads((report_dir / "report.json").read_text())))
        say(f"[{job.name}] image AUROC {_f(row['image_auroc'])}, detected {_pct(row['detection_rate'])} "
            f"at {_pct(row['false_alarm_rate'])} false alarms")
    except (RuntimeError, OSError, KeyError, ValueError, InspectorError) as exc:
        row["error"] = str(exc).splitlines()[0]
        say(f"[{job.name}] FAILED: {exc}")
    return row


def _choices(model: Path) -> dict:
    """What training chose for this set, from the model file's header: the backbone and each one's AUROC, and the terms."""
    with safe_open(str(model), "pt") as f:
        header = json.loads(f.metadata()["inspector"])
    arch, scoring = header["architecture"], header.get("scoring", {})
    return {"backbone": arch.get("backbone", "efficientnet-lite0"),
            "backbone_auroc": header["training"].get("backbone_auroc", {}),
            "terms": {"input_px": arch.get("image_size"), "edge_context_px": arch.get("edge_context", 0),
                      "per_location": scoring.get("pixel_normalise"), "global_rank": arch.get("global_components"),
                      "global_weight": scoring.get("global_weight"), "memory_size": arch.get("memory_size", 0),
                      "memory_weight": scoring.get("memory_weight", 0.0),
                      "tiles": header.get("preprocessing", {}).get("tiling")}}


def model_cost(model: Path, test_good: Path, frames: int = 32, batch: int = 16) -> dict:
    """The model's GFLOP per frame as the worker scores it, and its CPU score stage in frames/s: `frames` of the
    set's good test photos (decoded first) in batches of `batch`, best of 3 passes, nothing else of this script beside."""
    import torch

    from inspector.decode.preprocess import list_images, load_images
    from inspector.model import artifact as artifact_io
    from inspector.model.runtime import ModelRunner, gflop_per_frame, score_images

    art = artifact_io.load(model)
    size = art.input_size
    paths = list_images(test_good)
    images = load_images([paths[i % len(paths)] for i in range(frames)], size)
    runner = ModelRunner(art, torch.device("cpu"))
    score_images(runner, images[:batch], batch)  # warm-up
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        score_images(runner, images, batch)
        best = min(best, time.perf_counter() - t0)
    gflop = gflop_per_frame(art.model.eval(), art.config.image_size, scoring=art.scoring,  # a memory lookup included
                            tiles=art.tiling.count if art.tiling else 1)
    return {"gflop_per_frame": None if gflop is None else round(gflop, 2), "cpu_frames_per_s": round(frames / best, 1)}


def _clean(x: float | None) -> float | None:
    """A report figure as a float, or None when absent or NaN."""
    return None if x is None or math.isnan(x) else float(x)


def _row_from_report(report: dict) -> dict:
    img = report["image"]
    return {
        "image_auroc": _clean(img["auroc"]),
        "detection_rate": _clean(img["detection_rate"]),
        "false_alarm_rate": _clean(img["false_alarm_rate"]),
        "pixel_auroc": _clean(report.get("pixel", {}).get("auroc")),
        "colour_baseline_auroc": _clean(report.get("colour_baseline", {}).get("auroc")),
        "threshold": report["model"]["threshold"],
        "threshold_method": img.get("threshold_method"),
        "n_good": report["data"]["counts"]["good"],
        "n_defect": img["true_positives"] + img["false_negatives"],
        "detected": img["true_positives"],
        "false_alarms": img["false_positives"],
        "per_kind": {k: {"auroc": _clean(v["auroc"]), "detected": _clean(v["detection_rate"]),
                         "pixel_auroc": _clean(v.get("pixel_auroc"))} for k, v in report["per_kind"].items()},
        "warnings": report.get("warnings", []),
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def paper_mean(rows: list[dict]) -> dict | None:
    """Mean AUROCs over the paper types, the worst type, and detection and false alarms pooled over them."""
    paper = [r for r in rows if r["group"] == "paper"]
    done = [r for r in paper if "error" not in r]
    if not paper:
        return None
    row: dict = {"set": f"paper (mean of {len(done)})", "group": "paper", "n_types": len(done),
                 "n_failed": len(paper) - len(done)}
    if not done:
        return {**row, "error": "every paper type failed"}
    worst = min(done, key=lambda r: r["image_auroc"] if r["image_auroc"] is not None else -1.0)
    n_defect, n_good = sum(r["n_defect"] for r in done), sum(r["n_good"] for r in done)
    row.update({
        "image_auroc": _mean([r["image_auroc"] for r in done]),
        "worst": {"set": worst["set"], "image_auroc": worst["image_auroc"]},
        "detection_rate": sum(r["detected"] for r in done) / n_defect if n_defect else None,  # pooled
        "false_alarm_rate": sum(r["false_alarms"] for r in done) / n_good if n_good else None,  # pooled
        "pixel_auroc": _mean([r["pixel_auroc"] for r in done]),
        "colour_baseline_auroc": _mean([r["colour_baseline_auroc"] for r in done]),
        "threshold_method": ", ".join(sorted({str(r["threshold_method"]) for r in done})),
        "train_seconds": round(sum(r["train_seconds"] or 0 for r in done), 1),
        "n_good": n_good, "n_defect": n_defect,
    })
    if len(paper) != len(done):
        row["error"] = f"{len(paper) - len(done)} of {len(paper)} paper types failed"
    return row


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _terms(terms: dict | None) -> str:
    """The model's options in a cell: input px (+ edge context), tiles, maps, global rank and weight, memory."""
    if not terms:
        return "—"
    tiles = f" in {t['rows']}×{t['cols']} tiles" if (t := terms.get("tiles")) else ""
    context = (f"+{terms['edge_context_px']}" if terms.get("edge_context_px") else "") + tiles
    memory = f", memory {terms['memory_size']} × {terms['memory_weight']:g}" if terms.get("memory_weight") else ""
    return (f"{terms['input_px']}{context} px, {'per location' if terms['per_location'] else 'anywhere'}, "
            f"rank {terms['global_rank']}, weight {terms['global_weight']:g}{memory}")


def figures_table(rows: list[dict]) -> str:
    lines = ["| set | image AUROC | detected at stored threshold | false alarms on test/good | pixel AUROC "
             "| colour baseline AUROC | threshold method | backbone | terms | GFLOP / frame | CPU frames/s | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r and "image_auroc" not in r:
            lines.append(f"| {r['set']} | failed: {r['error']} | | | | | | | | | | |")
            continue
        name = r["set"] + (f" (worst: {r['worst']['set']} {_f(r['worst']['image_auroc'])})" if "worst" in r else "")
        train = "—" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {name} | {_f(r['image_auroc'])} | {_pct(r['detection_rate'])} | "
                     f"{_pct(r['false_alarm_rate'])} | {_f(r['pixel_auroc'])} | {_f(r['colour_baseline_auroc'])} | "
                     f"{r['threshold_method'] or '—'} | {r.get('backbone', '—')} | {_terms(r.get('terms'))} | "
                     f"{r.get('gflop_per_frame', '—')} | {r.get('cpu_frames_per_s', '—')} | {train} |")
    return "\n".join(lines)


def check_targets(rows: list[dict], paper: dict | None) -> list[dict]:
    """One cell per (set, figure) with a target: the target, what was measured, met or not."""
    by_group = {r["group"]: r for r in rows if r["group"] != "paper"} | ({"paper": paper} if paper else {})
    cells: list[dict] = []
    for group in (g for g in SETS if g in by_group):
        r, t = by_group[group], TARGETS[group]
        label = r["set"] if group != "paper" else f"paper ({r['n_types']} of {PAPER_TYPES} types)"
        auroc, base = r.get("image_auroc"), r.get("colour_baseline_auroc")
        det, far, pix = r.get("detection_rate"), r.get("false_alarm_rate"), r.get("pixel_auroc")
        image_met = (auroc is not None and auroc >= t.image_auroc
                     and not (t.beat_baseline and base is not None and auroc <= base))
        found = [("image AUROC", f">= {t.image_auroc}" + (" and beat the colour baseline" if t.beat_baseline else ""),
                  _f(auroc) + (f" (baseline {_f(base)})" if t.beat_baseline else ""), image_met),
                 ("detected", f">= {t.detection:.0%} at <= {MAX_FALSE_ALARM:.0%} false alarms",
                  f"{_pct(det)} at {_pct(far)} false alarms",
                  det is not None and far is not None and det >= t.detection and far <= MAX_FALSE_ALARM)]
        if t.pixel_auroc is not None:
            found.append(("pixel AUROC", f">= {t.pixel_auroc}", _f(pix), pix is not None and pix >= t.pixel_auroc))
        for column, target, value, met in found:  # a set with a failed run meets nothing
            cells.append({"set": label, "column": column, "target": target, "value": value,
                          "met": bool(met) and "error" not in r})
    return cells


def targets_table(cells: list[dict]) -> str:
    columns = ("image AUROC", "detected", "pixel AUROC")
    lines = ["| set | image AUROC | detected at stored threshold (false alarms <= 5 %) | pixel AUROC |",
             "|---|---|---|---|"]
    for label in dict.fromkeys(c["set"] for c in cells):
        row = {c["column"]: c for c in cells if c["set"] == label}
        parts = [f"{row[col]['value']} (target {row[col]['target']}): {'met' if row[col]['met'] else 'NOT met'}"
                 if col in row else "—" for col in columns]
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS),
                    help="comma-separated: orange, paper (all types) or paper/<type>, ballscrew, bananas")
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets",
                    help="folder holding orange/, paper/<type>/ and ballscrew/")
    ap.add_argument("--banana-model", type=Path, default=REPO / "models" / "banana-ae-v1.safetensors")
    ap.add_argument("--jobs", type=int, default=1,
                    help="sets run at once (each command uses every core: keep 1 on a 2-core machine)")
    ap.add_argument("--keep", action="store_true", help="keep the trained models under OUT/models")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality")
    ap.add_argument("--train-args", default="", help=argparse.SUPPRESS)  # smoke tests only: see the docstring
    args = ap.parse_args()

    selection = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in selection if s not in SETS and not s.startswith("paper/")]
    if unknown or not selection:
        ap.error(f"unknown sets {unknown}: choose from {', '.join(SETS)} or paper/<type>")
    train_args = shlex.split(args.train_args)
    if train_args:
        say(f"SMOKE RUN: every `inspector train` gets {shlex.join(train_args)}; these are not the defaults' figures")
    jobs = plan(selection, args.datasets.resolve())
    if not jobs:
        say("nothing to run")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="quality-models-") as tmp:
        models = args.out / "models" if args.keep else Path(tmp)
        models.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda j: run_job(j, args.out, models, train_args, args.banana_model), jobs))

    paper = paper_mean(rows)
    table_rows = [r for r in rows if r["group"] != "bananas"] + ([paper] if paper else []) + \
        [r for r in rows if r["group"] == "bananas"]
    cells = check_targets(rows, paper)
    missed = [f"{c['set']} {c['column']}" for c in cells if not c["met"]]
    summary = {
        "date": time.strftime("%Y-%m-%d"), "datasets": str(args.datasets), "train_args": train_args,
        "rows": rows, "paper_mean": paper, "targets": cells, "targets_met": not missed,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    print()
    print(figures_table(table_rows))
    print()
    print(targets_table(cells))
    print()
    for r in rows:
        for w in r.get("warnings", []):
            print(f"warning ({r['set']}): {w}")
    if paper and paper["n_types"] != PAPER_TYPES:
        print(f"note: the paper targets are for all {PAPER_TYPES} types; this run had {paper['n_types']}")
    print(f"summary: {args.out / 'summary.json'} ({summary['seconds']:.0f} s)")
    print("targets met" if not missed else f"targets NOT met: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
