"""`make bench-tune`: `toolkit tune` on the demo data against the defaults (issue #41's target).

Runs a search as a user would (`toolkit tune DATA --out OUT --max-trials N --folds 3`, timed), trains its
best trial (`toolkit train DATA --config OUT/tune/best.json`), and compares the held-out test accuracy with
a run trained with the defaults (CALIBRATION_RUN: bench-calibration's, trained as `toolkit train DATA`).
Two searches, one row each in benchmarks/TUNE.md (a rerun of one mode replaces its row): heads only
(`--no-fine-tune`, the 20-trial target: within 15 minutes on 2 cores, test accuracy at least the defaults')
and with the fine-tuning schedule in the space (`--fine-tune`; its trials train the unfrozen blocks, minutes each
on 2 cores, so it runs fewer trials and its time is reported, not held to the target).
Usage: python benchmarks/tune.py DATA --defaults-run RUN [--weights W] [--out DIR] [--max-trials 20] [--folds 3]
           [--fine-tune | --no-fine-tune]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from toolkit_cli import toolkit  # noqa: E402

from toolkit.bench.machine import machine_header  # noqa: E402

TARGET_S = 15 * 60
TARGET_TRIALS = 20
SETTINGS = ("head", "dropout", "feature_norm", "lr", "weight_decay", "label_smoothing", "class_weight", "epochs",
            "fine_tune_epochs", "fine_tune_lr", "fine_tune_schedule", "fine_tune_from")  # fmt: skip


def test_accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["test"]["accuracy"])


def measure(args: argparse.Namespace) -> dict:
    """One search, timed, and its best trial trained and scored against the defaults' run."""
    out = args.out / ("fine-tune" if args.fine_tune else "heads")
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    toolkit("tune", str(args.data), "--out", str(out / "search"), "--weights", args.weights,
            "--max-trials", str(args.max_trials), "--folds", str(args.folds), "--quiet",
            "--fine-tune" if args.fine_tune else "--no-fine-tune")  # fmt: skip
    search_s = time.monotonic() - started
    best = json.loads((out / "search" / "tune" / "best.json").read_text())
    toolkit("train", str(args.data), "--config", str(out / "search" / "tune" / "best.json"),
            "--out", str(out / "best"), "--weights", args.weights, "--quiet")  # fmt: skip
    with open(out / "search" / "tune" / "trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    return {
        "machine": machine_header(0),
        "search_s": search_s,
        "trials": len(trials),
        "folds": args.folds,
        "fine_tuning_trials": sum(1 for t in trials if int(t.get("fine_tune_epochs") or 0) > 0),
        "best": best,
        "test_accuracy": {"tuned": test_accuracy(out / "best"), "defaults": test_accuracy(args.defaults_run)},
    }


def row(mode: str, r: dict) -> list[str]:
    best, acc = r["best"], r["test_accuracy"]
    settings = best["settings"]
    shown = [
        k for k in SETTINGS if k in settings and (settings.get("fine_tune_epochs") or not k.startswith("fine_tune_"))
    ]
    chosen = ", ".join(
        f"{k} {settings[k]:.3g}" if isinstance(settings[k], float) else f"{k} {settings[k]}" for k in shown
    )
    return [
        f"| {mode} | {r['machine']['cpu']} ({r['machine']['cores']} cores), {r['machine']['date'][:10]} | "
        f"{r['search_s'] / 60:.1f} min | {r['trials']} ({r['fine_tuning_trials']} fine-tuning) | "
        f"{100 * best['accuracy']:.1f}% ± {100 * best['accuracy_std']:.1f} | {100 * acc['tuned']:.1f}% | "
        f"{100 * acc['defaults']:.1f}% | {chosen} |"
    ]


def write_markdown(results: dict) -> None:
    lines = [
        "# `toolkit tune` against the defaults",
        "",
        "`make bench-tune`: `toolkit tune` on the demo data (VGG16, offline ImageNet-derived weights, 224 px), "
        "Bayesian search, 3-fold cross-validation on the non-test images; the best trial trained with "
        "`toolkit train --config best.json`, against a run trained with the defaults (`toolkit train DATA`), both "
        "scored on the held-out test images. Heads only: `--no-fine-tune`; with fine-tuning: the schedule (epochs, "
        "rate, constant or cosine, cut) in the space, each such trial training the unfrozen blocks on cached cut "
        "features.",
        "",
        "| search | machine | time | trials | best CV accuracy | tuned: test accuracy | defaults: test accuracy "
        "| best trial |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in ("heads only", "with fine-tuning"):
        if mode in results:
            lines += row(mode, results[mode])
    heads = results.get("heads only")
    if heads is not None:
        acc = heads["test_accuracy"]
        lines += [
            "",
            f"Targets (issue #41), heads only: {TARGET_TRIALS} trials within {TARGET_S // 60} minutes: "
            f"{'met' if heads['search_s'] <= TARGET_S and heads['trials'] >= TARGET_TRIALS else 'not met'}; "
            f"the tuned test accuracy at least the defaults': {'met' if acc['tuned'] >= acc['defaults'] else 'not met'} "
            f"({acc['tuned'] - acc['defaults']:+.3f}).",
        ]
    (HERE / "TUNE.md").write_text("\n".join([*lines, ""]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--defaults-run", type=Path, required=True)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "toolkit-tune")
    parser.add_argument("--max-trials", type=int, default=TARGET_TRIALS)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    store = HERE / "tune.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    results[("with fine-tuning" if args.fine_tune else "heads only")] = measure(args)
    store.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)
    print((HERE / "TUNE.md").read_text())


if __name__ == "__main__":
    main()
