"""`make bench-defaults`: `toolkit train` with no flags, before and after the defaults changed, on the demo and ELPV.

Each data set trains twice with the offline VGG16 weights at 224 px: `before` passes the flags
that reproduce the earlier defaults (BEFORE), `after` passes none. Every run is then exported
(`toolkit export`, every format gated on parity) and its test split scored once by training
itself. Records test accuracy, balanced accuracy, every class's recall, the chosen epoch with its
validation accuracy (the gap to test is how much the choice overfitted validation), the training
curve and the time each took, in benchmarks/DEFAULTS.md and defaults.json. A run of some sets
(`python benchmarks/defaults.py demo`) replaces their rows.

Sets: demo (`toolkit demo-data`, 200 per class, as `make demo`), elpv (binary: functional or
defective), elpv-grades (the 4-level grading); ELPV is downloaded by benchmarks/elpv.py into a
cache outside git. Runs live under ~/.cache/toolkit-defaults.

Usage: python benchmarks/defaults.py [SET ...] [--weights imagenet|PATH]
       python benchmarks/defaults.py --report     (DEFAULTS.md again from defaults.json)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import elpv  # noqa: E402
from real import machine  # noqa: E402
from toolkit_cli import toolkit  # noqa: E402

CACHE = Path(os.environ.get("TOOLKIT_DEFAULTS_CACHE", Path.home() / ".cache" / "toolkit-defaults"))
ELPV_CACHE = Path(os.environ.get("ELPV_CACHE", Path.home() / ".cache" / "toolkit-elpv"))
SETS = ("demo", "elpv", "elpv-grades")
# The defaults before the defaults issue (#37), as flags: what `toolkit train DATA` did then.
BEFORE = [
    *("--head", "gap+gmp", "--dropout", "0.3", "--no-feature-norm"),
    *("--monitor", "val_accuracy", "--class-weight", "none", "--augment"),
]
RECIPES = {"before": BEFORE, "after": []}
TARGETS = {  # the issue's: test accuracy, and the smallest recall any class may have
    "demo": {"accuracy": 0.90},
    "elpv": {"accuracy": 0.84},
    "elpv-grades": {"accuracy": 0.72, "min_recall": 0.30},
}


def data_folder(name: str) -> Path:
    """The set's DATA_DIR (made once)."""
    if name == "demo":
        folder = CACHE / "demo-data"
        if not (folder / "train").is_dir():
            toolkit("demo-data", str(folder), "--image-size", "224", "--per-class", "200")
        return folder
    return elpv.prepare(ELPV_CACHE, "grades" if name == "elpv-grades" else "binary")


def curve(run: Path) -> list[dict]:
    from toolkit.run_folder import read_history_csv

    keys = ("epoch", "loss", "val_loss", "accuracy", "val_accuracy")
    return [{k: round(row[k], 4) for k in keys} for row in read_history_csv(run / "history.csv")]


def measure(name: str, recipe: str, weights: str) -> dict:
    """Train, export and read back one run."""
    data = data_folder(name)
    run = CACHE / "runs" / f"{name}-{recipe}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    toolkit("train", str(data), "--out", str(run), "--weights", weights, "--quiet", *RECIPES[recipe])
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    exported = toolkit("export", str(run), "--quiet", "--json", check=False)
    export_s = time.perf_counter() - t1
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    gates = {f"{a['format']} {a['precision']}": a["parity"]["passed"] for a in manifest["artifacts"]}
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    facts = json.loads((run / "run.json").read_text())
    best = facts["best_epoch"]
    history = curve(run)
    return {
        "set": name,
        "recipe": recipe,
        "flags": RECIPES[recipe],
        "classes": test["labels"],
        "test_count": test["count"],
        "test_accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "recall": {k: v["recall"] for k, v in test["per_class"].items()},
        "best_epoch": best,
        "epochs": len(history),
        "val_accuracy_at_best": next(r["val_accuracy"] for r in history if r["epoch"] == best),
        "curve": history,
        "train_s": round(train_s, 1),
        "export_s": round(export_s, 1),
        "export_exit": exported.returncode,
        "gates": gates,
        "augmentation": facts.get("augmentation"),  # used, rule (auto: by registration), score, threshold
    }


def augmentation(row: dict) -> str:
    """on/off and why; rows measured before run.json recorded it augmented always (the default then)."""
    chosen = row.get("augmentation")
    if not chosen:
        return "on (always, then)"
    state = "on" if chosen["used"] else "off"
    if chosen["rule"] == "auto" and chosen.get("registration") is not None:
        return f"{state} (auto: {chosen['registration']:.2f})"
    return f"{state} ({chosen['rule']})"


def met(row: dict) -> bool:
    target = TARGETS[row["set"]]
    recall_ok = min(row["recall"].values()) >= target.get("min_recall", 0.0)
    return row["test_accuracy"] >= target["accuracy"] and recall_ok and all(row["gates"].values())


def write_report(result: dict) -> None:
    lines = [
        "# Defaults: `toolkit train DATA` with no flags, before and after",
        "",
        f"Written by `{result['command']}` on {result['date']}; machine: {result['machine']}.",
        'Weights: the offline ImageNet-derived VGG16 file (docs/training.md "Weights"), 224 px. `before` passes',
        f"`{' '.join(BEFORE)}`, the defaults of earlier versions; `after` passes no flag.",
        "Test splits are held out and scored once per run; validation (carved from train/) chose the epoch.",
        "Augmentation: what the run trained with; auto decides by the registration score (off at 0.4 and above,",
        "docs/training.md), the runs before that rule always augmented.",
        "",
        "| set | recipe | augmentation | test acc. | balanced | recall per class | best epoch | val acc. there | "
        "gap | train min | export gates | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(result["rows"], key=lambda r: (SETS.index(r["set"]), r["recipe"] != "before")):
        recall = ", ".join(f"{k} {v:.0%}" for k, v in row["recall"].items())
        passed = sum(row["gates"].values())
        failed = ", ".join(name for name, ok in row["gates"].items() if not ok)
        gap = row["val_accuracy_at_best"] - row["test_accuracy"]
        lines.append(
            f"| {row['set']} | {row['recipe']} | {augmentation(row)} | {row['test_accuracy']:.1%} | {row['balanced_accuracy']:.1%} | "
            f"{recall} | {row['best_epoch']} of {row['epochs']} | {row['val_accuracy_at_best']:.1%} | "
            f"{gap:+.1%} | {row['train_s'] / 60:.1f} | {passed}/{len(row['gates'])}{f' ({failed} failed)' if failed else ''} | "
            f"{'met' if met(row) else 'not met'} |"
        )
    lines += [f"- {row['set']} {row['recipe']}: {row['note']}" for row in result["rows"] if row.get("note")]
    lines += [
        "",
        "Validation accuracy per epoch (the training curve; loss and accuracy per epoch in defaults.json):",
        "",
    ]
    for row in result["rows"]:
        values = " ".join(f"{r['val_accuracy']:.2f}" for r in row["curve"])
        lines.append(f"- {row['set']} {row['recipe']}: {values}")
    targets = ", ".join(
        f"{k} >= {v['accuracy']:.0%}" + (f" (every recall >= {v['min_recall']:.0%})" if "min_recall" in v else "")
        for k, v in TARGETS.items()
    )
    lines += ["", f"Targets (test accuracy, no flags, every export gate passing): {targets}."]
    missing = [
        f"{n} {r}" for n in SETS for r in RECIPES if (n, r) not in {(x["set"], x["recipe"]) for x in result["rows"]}
    ]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)} (`make bench-defaults DEFAULTS_SETS=...`)."]
    lines += [
        "",
        "One run per row: its test accuracy moves by several points with the seed. The choice of head, rule",
        "and weights rests on the study over seeds on features extracted once: [HEADS.md](HEADS.md).",
        "",
    ]
    (HERE / "DEFAULTS.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", default=list(SETS), help=f"any of {', '.join(SETS)} (default: all)")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--report", action="store_true", help="rewrite DEFAULTS.md from defaults.json")
    args = parser.parse_args()
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    path = HERE / "defaults.json"
    result = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if not args.report:
        for name in args.sets:
            for recipe in args.recipes:
                row = measure(name, recipe, args.weights)
                result["rows"] = [r for r in result["rows"] if (r["set"], r["recipe"]) != (name, recipe)] + [row]
                result.update(
                    command="make bench-defaults",
                    date=datetime.date.today().isoformat(),
                    machine=machine(),
                )
                path.write_text(json.dumps(result, indent=2) + "\n")  # after every run: a stopped bench keeps its rows
                write_report(result)
    write_report(result)
    print((HERE / "DEFAULTS.md").read_text())


if __name__ == "__main__":
    main()
