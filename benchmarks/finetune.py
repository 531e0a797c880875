"""`make bench-finetune`: fine-tuning in bf16 against float32, per epoch and in test accuracy (#38).

Each set trains twice per seed with the same flags (the defaults plus the fine-tuning recipe below, the offline
VGG16 weights, 224 px), once with `--base-precision fp32` (frozen passes and fine-tuning in float32)
and once with `--base-precision bf16` (what `auto` picks on AVX512_BF16 or AMX CPUs: the frozen passes
in bf16 and the unfrozen blocks under mixed_bfloat16, float32 weights). Records what run.json says
fine-tuning computed in, the seconds per fine-tuning epoch (its training and validation passes), the
frozen phase's and the whole run's seconds, and the held-out test accuracy scored once by training;
writes benchmarks/FINETUNE.md and finetune.json. On a CPU without native bf16 the bf16 row is emulated
and slower: the table says which instruction sets the machine has.

Sets: demo (`toolkit demo-data`, 200 per class, as `make demo`), elpv (binary: functional or defective,
downloaded by benchmarks/elpv.py into a cache outside git). Runs live under ~/.cache/toolkit-finetune.

Fine-tuning's validation curve is rough (a few hundred validation images, block5 at 2e-4), so which
checkpoint wins moves the test figure by points: `--seeds 0,1,2` repeats each pair and the comparison
is the mean difference over the seeds run both ways.

Usage: python benchmarks/finetune.py [SET ...] [--seeds 0,1,2] [--weights imagenet|PATH]
       python benchmarks/finetune.py --report     (FINETUNE.md again from finetune.json)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import sys
from pathlib import Path
from statistics import fmean as mean

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from defaults import data_folder  # noqa: E402  (the same demo folder and ELPV binary set)
from toolkit_cli import toolkit  # noqa: E402

CACHE = Path(os.environ.get("TOOLKIT_FINETUNE_CACHE", Path.home() / ".cache" / "toolkit-finetune"))
SETS = ("demo", "elpv")
PRECISIONS = ("fp32", "bf16")
# The fine-tuning of README's real-data recipe (block5 at 2e-4); the demo's 198 training images need fewer epochs.
FINE_TUNE = {
    "demo": ["--fine-tune-epochs", "8", "--fine-tune-lr", "2e-4", "--fine-tune-from", "block5"],
    "elpv": ["--fine-tune-epochs", "24", "--fine-tune-lr", "2e-4", "--fine-tune-from", "block5"],
}
TARGETS = {"epoch_ratio": 0.5, "accuracy_points": 0.5}  # the issue's, on ELPV: bf16 epoch <= 0.5x, within 0.5 point


def measure(name: str, precision: str, seed: int, weights: str) -> dict:
    """Train one run and read back its facts."""
    from toolkit.run_folder import read_history_csv

    data = data_folder(name)
    run = CACHE / "runs" / (f"{name}-{precision}" + (f"-seed{seed}" if seed else ""))
    shutil.rmtree(run, ignore_errors=True)
    flags = [*FINE_TUNE[name], "--seed", str(seed), "--base-precision", precision]
    toolkit("train", str(data), "--out", str(run), "--weights", weights, "--quiet", *flags)
    facts = json.loads((run / "run.json").read_text())
    test = json.loads((run / "metrics.json").read_text())["test"]
    timings = facts["timings_s"]
    history = read_history_csv(run / "history.csv")
    return {
        "set": name,
        "precision": precision,
        "seed": seed,
        "flags": flags,
        "fine_tune_precision": facts["fine_tune_precision"],
        "augmented": facts["augmentation"]["used"],  # auto: the demo yes, ELPV no (registered cells)
        "fine_tune_epoch_s": round(timings["fine_tune_epoch_s"], 2),
        "fine_tune_phase_s": round(timings["fine_tune_phase_s"], 1),
        "total_s": round(timings["total"], 1),
        "best_epoch": facts["best_epoch"],
        "val_accuracy_at_best": next(r["val_accuracy"] for r in history if r["epoch"] == facts["best_epoch"]),
        "test_count": test["count"],
        "test_accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
    }


def machine() -> dict:
    from toolkit.bench.machine import machine_header

    m = machine_header(os.cpu_count() or 1)
    return {k: m[k] for k in ("cpu", "cores", "instruction_sets", "platform", "python", "versions")}


def comparisons(rows: list[dict]) -> list[dict]:
    """bf16 against fp32 per set over the seeds run both ways: epoch-cost ratio, mean test-accuracy difference."""
    out = []
    for name in SETS:
        by = {(r["precision"], r["seed"]): r for r in rows if r["set"] == name}
        seeds = sorted({s for p, s in by if p == "bf16"} & {s for p, s in by if p == "fp32"})
        if not seeds:
            continue
        pairs = [(by["fp32", seed], by["bf16", seed]) for seed in seeds]
        ratio = mean([b["fine_tune_epoch_s"] for _, b in pairs]) / mean([f["fine_tune_epoch_s"] for f, _ in pairs])
        diffs = [100 * (b["test_accuracy"] - f["test_accuracy"]) for f, b in pairs]
        points = mean(diffs)
        met = ratio <= TARGETS["epoch_ratio"] and points >= -TARGETS["accuracy_points"]
        out.append(
            {
                "set": name,
                "seeds": seeds,
                "epoch_ratio": round(ratio, 3),
                "accuracy_points": round(points, 2),
                "accuracy_points_per_seed": [round(d, 2) for d in diffs],
                "met": met,
            }
        )
    return out


def write_report(result: dict) -> None:
    m = result["machine"]
    lines = [
        "# Fine-tuning in bf16 against float32",
        "",
        f"Written by `{result['command']}` on {result['date']}; machine: {m['cpu']}, {m['cores']} cores "
        f"({', '.join(m['instruction_sets']) or 'no matrix extensions'}), {m['platform']}, Python {m['python']}.",
        "Each set and seed trains twice with `toolkit train DATA` plus the flags below and the offline ImageNet-derived",
        "VGG16 weights at 224 px: `--base-precision fp32` (everything in float32) and `--base-precision bf16` (what",
        "`auto` picks on AVX512_BF16/AMX: frozen passes in bf16, the unfrozen blocks under mixed_bfloat16 with",
        "float32 weights). The test split is held out and scored once per run by training. Augmentation is the",
        "defaults' choice (docs/training.md): where it is on, every epoch also runs the frozen blocks below the cut",
        "on fresh augmented images (in the run's precision), so its fine-tuning epoch costs more than the unfrozen",
        "blocks alone; where it is off (ELPV), the cut's features are computed once and an epoch is block5 and the head.",
        "",
        "| set | seed | augmented | --base-precision | fine-tuned in | s per fine-tuning epoch | fine-tuning min | "
        "run min | best epoch | val acc. there | test acc. | balanced |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(SETS)}
    for row in sorted(result["rows"], key=lambda r: (order[r["set"]], r["seed"], PRECISIONS.index(r["precision"]))):
        lines.append(
            f"| {row['set']} | {row['seed']} | {'yes' if row['augmented'] else 'no'} | "
            f"{row['precision']} | {row['fine_tune_precision']} | "
            f"{row['fine_tune_epoch_s']:.1f} | {row['fine_tune_phase_s'] / 60:.1f} | {row['total_s'] / 60:.1f} | "
            f"{row['best_epoch']} | {row['val_accuracy_at_best']:.1%} | {row['test_accuracy']:.1%} ({row['test_count']}) | "
            f"{row['balanced_accuracy']:.1%} |"
        )
    flags = {name: " ".join(FINE_TUNE[name]) for name in SETS}
    lines += [
        "",
        "Flags besides `--seed` and `--base-precision`: " + "; ".join(f"{k} `{v}`" for k, v in flags.items()) + ".",
    ]
    lines += [
        "",
        f"Targets (ELPV, the issue's): a bf16 fine-tuning epoch <= {TARGETS['epoch_ratio']}x a float32 one, test",
        f"accuracy within {TARGETS['accuracy_points']} point (bf16 no more than that below float32).",
        "",
        "| set | seeds | bf16 / fp32 per epoch | test accuracy, bf16 - fp32 (points): mean (per seed) | targets |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons(result["rows"]):
        per_seed = ", ".join(f"{d:+.1f}" for d in c["accuracy_points_per_seed"])
        lines.append(
            f"| {c['set']} | {len(c['seeds'])} | {c['epoch_ratio']:.2f}x | {c['accuracy_points']:+.1f} ({per_seed}) | "
            f"{'met' if c['met'] else 'not met'} |"
        )
    lines += [
        "",
        "One run per row: fine-tuning's validation curve swings by points between epochs on these few hundred",
        "validation images, so the checkpoint chosen, and its test accuracy, moves with the seed by more than the",
        "0.5-point target; the mean over seeds run both ways is the comparison (`--seeds`), and a row's own",
        "difference says little. The validation accuracy at the chosen epoch shows what the choice saw.",
        "",
    ]
    (HERE / "FINETUNE.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", default=list(SETS), help=f"any of {', '.join(SETS)} (default: all)")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, each run both ways (default: 0)")
    parser.add_argument("--report", action="store_true", help="rewrite FINETUNE.md from finetune.json")
    args = parser.parse_args()
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds}")
    path = HERE / "finetune.json"
    result = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if not args.report:
        for name, seed, precision in itertools.product(args.sets, seeds, PRECISIONS):
            row = measure(name, precision, seed, args.weights)
            key = (name, precision, seed)
            result["rows"] = [r for r in result["rows"] if (r["set"], r["precision"], r["seed"]) != key] + [row]
            result.update(command="make bench-finetune", date=datetime.date.today().isoformat(), machine=machine())
            result["comparisons"] = comparisons(result["rows"])
            path.write_text(json.dumps(result, indent=2) + "\n")  # after every run: a stopped bench keeps its rows
            write_report(result)
    write_report(result)
    print((HERE / "FINETUNE.md").read_text())


if __name__ == "__main__":
    main()
