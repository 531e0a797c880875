"""`make bench-tune`: `toolkit tune` on the demo data against the defaults (issue #41's target).

Runs a search as a user would (`toolkit tune DATA --out OUT --max-trials 20 --folds 3`, timed), trains its
best trial (`toolkit train DATA --config OUT/tune/best.json`), and compares the held-out test accuracy with
a run trained with the defaults (CALIBRATION_RUN: bench-calibration's, trained as `toolkit train DATA`).
Writes benchmarks/tune.json and benchmarks/TUNE.md. Target: the search within 15 minutes on 2 cores and
the best config's test accuracy at least the defaults'.
Usage: python benchmarks/tune.py DATA --defaults-run RUN [--weights W] [--out DIR] [--max-trials 20] [--folds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.machine import machine_header  # noqa: E402

TARGET_S = 15 * 60


def toolkit(*args: str) -> None:
    print("$ toolkit " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "toolkit.cli", *args], check=True)


def test_accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["test"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--defaults-run", type=Path, required=True)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "toolkit-tune")
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    started = time.monotonic()
    toolkit("tune", str(args.data), "--out", str(args.out / "search"), "--weights", args.weights,
            "--max-trials", str(args.max_trials), "--folds", str(args.folds), "--quiet",
            "--fine-tune" if args.fine_tune else "--no-fine-tune")  # fmt: skip
    search_s = time.monotonic() - started
    best = json.loads((args.out / "search" / "tune" / "best.json").read_text())
    toolkit("train", str(args.data), "--config", str(args.out / "search" / "tune" / "best.json"),
            "--out", str(args.out / "best"), "--weights", args.weights, "--quiet")  # fmt: skip
    tuned, defaults = test_accuracy(args.out / "best"), test_accuracy(args.defaults_run)
    with open(args.out / "search" / "tune" / "trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    fine_tuning = sum(1 for t in trials if int(t.get("fine_tune_epochs") or 0) > 0)
    report = {"machine": machine_header(0), "search_s": search_s, "trials": len(trials), "folds": args.folds,
              "fine_tuning_trials": fine_tuning, "best": best,
              "test_accuracy": {"tuned": tuned, "defaults": defaults}}  # fmt: skip
    here = Path(__file__).resolve().parent
    (here / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
    m, s = report["machine"], best["settings"]
    names = ("head", "dropout", "feature_norm", "lr", "weight_decay", "label_smoothing", "class_weight", "epochs",
             "fine_tune_epochs", "fine_tune_lr", "fine_tune_schedule", "fine_tune_from")  # fmt: skip
    chosen = ", ".join(f"{k} {s[k]}" for k in names if k in s)
    lines = [
        "# `toolkit tune` against the defaults",
        "",
        f"`make bench-tune` on {m['cpu']} ({m['cores']} cores), {m['date'][:10]}: `toolkit tune` on the demo data "
        f"(VGG16, offline ImageNet-derived weights, 224 px), {len(trials)} trials (Bayesian; "
        + (f"{fine_tuning} of them fine-tuning" if args.fine_tune else "heads only, --no-fine-tune")
        + f"), {args.folds}-fold "
        "cross-validation on the non-test images; its best trial trained with `toolkit train --config best.json`, "
        "against a run trained with the defaults (`toolkit train DATA`), both scored on the held-out test images.",
        "",
        "| search | trials | best CV accuracy | tuned: test accuracy | defaults: test accuracy |",
        "| --- | --- | --- | --- | --- |",
        f"| {search_s / 60:.1f} min | {len(trials)} | {100 * best['accuracy']:.1f}% ± {100 * best['accuracy_std']:.1f} "
        f"| {100 * tuned:.1f}% | {100 * defaults:.1f}% |",
        "",
        f"Best trial: {chosen}.",
        "",
        f"Targets (issue #41): the search within {TARGET_S // 60} minutes: "
        f"{'met' if search_s <= TARGET_S else 'not met'}; the tuned test accuracy at least the defaults': "
        f"{'met' if tuned >= defaults else 'not met'} ({report['test_accuracy']['tuned'] - defaults:+.3f}).",
        "",
    ]
    (here / "TUNE.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
