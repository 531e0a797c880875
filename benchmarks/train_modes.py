"""Training-cost targets of the frozen-base modes, as ratios measured in one run.

Runs each training configuration in a fresh process on the same data (the demo data at 224 px
with real weights, in `make bench`) and compares wall times and validation accuracy:

  a. --no-augment (cached features)        <= 1.3x one float32 forward pass over train+val+test images,
                                              accuracy within 1 point of the uncached run
  b. augmentation with --aug-views 3        <= 40% of the plain per-epoch run, accuracy within 1 point
  c. the plain per-epoch run                input pipeline + head add <= 10% over its forward passes
  d. the demo default (auto, views 3)       <= 25% of the tutorial recipe (fp32, every pass every
                                              epoch), accuracy within 1 point

Usage: python benchmarks/train_modes.py DATA_DIR WEIGHTS [--epochs 10] [--image-size 224] [--out DIR]
Writes DIR/train_modes.json; benchmarks/write_results.py adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    # name: extra `toolkit train` flags
    "cached_no_augment": ["--no-augment"],
    "tutorial_no_augment": ["--no-augment", "--no-cache-features", "--base-precision", "fp32"],
    "views3": ["--aug-views", "3"],
    "plain_per_epoch": ["--aug-views", "0"],
    "tutorial": ["--no-cache-features", "--base-precision", "fp32"],
}


VAL_SPLIT = 0.34  # as `make demo`


def forward_pass_seconds(data_dir: str, weights: str, image_size: int, precision: str) -> dict:
    """Time the frozen base alone over every image a run touches (train, validation and the held-out test,
    which the run predicts once at the end), as the floor training cannot beat."""
    code = f"""
import json, time, numpy as np
from toolkit.tf_setup import import_tensorflow
tf = import_tensorflow()
from toolkit.data import load_dataset
from toolkit.model import build_classifier, features_part
from toolkit.model import build_feature_extractor
from toolkit.data import SplitOptions
data = load_dataset({data_dir!r}, {image_size}, SplitOptions(val_split={VAL_SPLIT}))
model, _ = build_classifier(len(data.classes), {image_size}, {weights!r})
extractor = build_feature_extractor(model, {precision!r})
forward = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
parts = [data.train, data.val] + ([data.test] if data.test is not None else [])
images = np.concatenate([np.asarray(p.images) for p in parts]).astype(np.float32)
forward(tf.constant(images[:32]))
start = time.perf_counter()
for i in range(0, len(images), 32):
    forward(tf.constant(images[i:i + 32])).numpy()
print(json.dumps({{"seconds": time.perf_counter() - start, "images": len(images)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_run(
    name: str, flags: list[str], data_dir: str, weights: str, epochs: int, image_size: int, out: Path
) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "toolkit.cli",
        "train",
        data_dir,
        "--out",
        str(run_dir),
        "--epochs",
        str(epochs),
        "--image-size",
        str(image_size),
        "--weights",
        weights,
        "--val-split",
        str(VAL_SPLIT),
        # The figures in README were measured with these two (the defaults then); the targets compare
        # execution modes, not heads.
        "--head",
        "flatten",
        "--monitor",
        "val_loss",
        "--quiet",
        *flags,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run = json.loads((run_dir / "run.json").read_text())
    return {
        "flags": flags,
        "wall_s": wall,
        "train_s": run["timings_s"]["total"],
        "val_accuracy": run["validation"]["accuracy"],
        "precision": run["precision"],
        "train_images": sum(run["dataset"]["counts"]["train"].values()),
        "val_images": sum(run["dataset"]["counts"]["val"].values()),
        "test_images": sum(run["dataset"]["counts"].get("test", {}).values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("weights")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results: dict = {"epochs": args.epochs, "image_size": args.image_size}
    for precision in ("fp32", "bf16"):
        results[f"forward_{precision}"] = forward_pass_seconds(args.data_dir, args.weights, args.image_size, precision)
        print(
            f"forward pass ({precision}) over train+val+test: {results[f'forward_{precision}']['seconds']:.1f} s",
            flush=True,
        )
    for name, flags in RUNS.items():
        results[name] = train_run(name, flags, args.data_dir, args.weights, args.epochs, args.image_size, args.out)
        r = results[name]
        print(f"{name:20s} {r['train_s']:7.1f} s  val acc {r['val_accuracy']:.3f}  ({r['precision']})", flush=True)

    fwd32 = results["forward_fp32"]
    per_image = {p: results[f"forward_{p}"]["seconds"] / results[f"forward_{p}"]["images"] for p in ("fp32", "bf16")}
    plain = results["plain_per_epoch"]
    plain_passes = per_image[plain["precision"]] * plain["train_images"] * args.epochs + per_image["fp32"] * (
        plain["val_images"] + plain["test_images"]
    )
    points = lambda a, b: abs(results[a]["val_accuracy"] - results[b]["val_accuracy"]) * 100  # noqa: E731
    results["targets"] = {
        "a_cached_vs_forward_pass": {
            "ratio": results["cached_no_augment"]["train_s"] / fwd32["seconds"],
            "limit": 1.3,
            "accuracy_gap_points": points("cached_no_augment", "tutorial_no_augment"),
        },
        "b_views_vs_plain": {
            "ratio": results["views3"]["train_s"] / plain["train_s"],
            "limit": 0.4,
            "accuracy_gap_points": points("views3", "plain_per_epoch"),
        },
        "c_plain_overhead": {"ratio": plain["train_s"] / plain_passes, "limit": 1.1},
        "d_default_vs_tutorial": {
            "ratio": results["views3"]["train_s"] / results["tutorial"]["train_s"],
            "limit": 0.25,
            "accuracy_gap_points": points("views3", "tutorial"),
        },
    }
    for key, t in results["targets"].items():
        gap = f", accuracy gap {t['accuracy_gap_points']:.1f} points" if "accuracy_gap_points" in t else ""
        verdict = "met" if t["ratio"] <= t["limit"] and t.get("accuracy_gap_points", 0) <= 1.0 else "MISSED"
        t["met"] = verdict == "met"
        print(f"{key:28s} ratio {t['ratio']:.2f} (limit {t['limit']}){gap}: {verdict}")
    (args.out / "train_modes.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
