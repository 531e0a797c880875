"""`make bench-calibration`: temperature scaling measured on trained runs, and every artifact's ECE against Keras's.

For each run folder given (trained with the defaults, so calibrated: `--score-calibration temperature`, and
exported): the fitted temperature; ECE (15 equal-width bins of the top-class probability), Brier score and log
loss before and after calibration on validation (where the temperature was fitted) and on the held-out test
split; then, per exported artifact, its ECE and Brier on the parity gate's validation images beside Keras's and
the paired-bootstrap interval of its ECE increase, which the export gate judges (`toolkit.parity`).
Writes benchmarks/calibration.json and benchmarks/CALIBRATION.md.
Usage: python benchmarks/calibration.py NAME=RUN_DIR [NAME=RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.machine import machine_header  # noqa: E402
from toolkit.calibration import BINNING  # noqa: E402
from toolkit.parity import MAX_ECE_INCREASE  # noqa: E402


def read_run(name: str, run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    calibration = metrics.get("calibration")
    if not calibration or calibration.get("method") != "temperature":
        raise SystemExit(f"{run}: not a calibrated run (train it with the defaults or --score-calibration temperature)")
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    artifacts = [
        {
            "format": a["format"],
            "precision": a["precision"],
            "ece": a["parity"]["ece"],
            "reference_ece": a["parity"]["reference_ece"],
            "ece_increase_ci95": a["parity"]["ece_increase_ci95"],
            "brier": a["parity"]["brier"],
            "reference_brier": a["parity"]["reference_brier"],
            "images": a["parity"]["accuracy_images"],
            "passed": a["parity"]["passed"],
        }
        for a in manifest["artifacts"]
        if not a.get("variant")  # the plain artifacts (a heatmap twin's probabilities are gated the same way)
    ]
    splits = {
        split: {
            when: {k: calibration[split][when][k] for k in ("ece", "brier", "log_loss", "images")}
            for when in ("before", "after")
        }
        for split in ("validation", "test")
        if calibration.get(split)
    }
    return {"name": name, "run": str(run), "temperature": calibration["temperature"], "splits": splits,
            "artifacts": artifacts}  # fmt: skip


def write_markdown(report: dict, dest: Path) -> None:
    m = report["machine"]
    lines = [
        "# Calibrated probabilities: temperature scaling, and every artifact's ECE",
        "",
        f"`make bench-calibration` on {m['cpu']} ({m['cores']} cores; {', '.join(m['instruction_sets'])}), "
        f"{m['date'][:10]}. ECE: {BINNING}. Temperatures are fitted on validation; test is held out.",
        "",
        "| run | temperature | split | images | ECE before -> after | Brier before -> after | log loss before -> after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        for split, s in r["splits"].items():
            b, a = s["before"], s["after"]
            lines.append(
                f"| {r['name']} | {r['temperature']:.3f} | {split} | {b['images']} | {100 * b['ece']:.1f}% -> "
                f"{100 * a['ece']:.1f}% | {b['brier']:.4f} -> {a['brier']:.4f} | {b['log_loss']:.4f} -> {a['log_loss']:.4f} |"
            )
    lines += [
        "",
        f"## Each artifact against the calibrated Keras model (export gate: ECE increase <= {100 * MAX_ECE_INCREASE:g} "
        "points, judged on the one-sided 95% lower bound of a paired bootstrap)",
        "",
        "| run | format | precision | images | ECE (Keras) | ECE increase, 90% interval | Brier (Keras) | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        for a in r["artifacts"]:
            low, high = a["ece_increase_ci95"]
            lines.append(
                f"| {r['name']} | {a['format']} | {a['precision']} | {a['images']} | {100 * a['ece']:.2f}% "
                f"({100 * a['reference_ece']:.2f}%) | [{100 * low:+.2f}, {100 * high:+.2f}] points | "
                f"{a['brier']:.4f} ({a['reference_brier']:.4f}) | {'pass' if a['passed'] else 'FAIL'} |"
            )
    rows = [a for r in report["runs"] for a in r["artifacts"]]
    floats = [abs(a["ece"] - a["reference_ece"]) for a in rows if a["precision"] in ("float32", "float16", "bf16")]
    quantized = [a["ece"] - a["reference_ece"] for a in rows if a["precision"] in ("int8", "dynamic")]
    if floats and quantized:
        beyond = [a for a in rows if a["ece_increase_ci95"][0] > 0]
        lines += [
            "",
            f"Float artifacts (float32, float16, bf16) moved ECE by at most {100 * max(floats):.3f} points. Quantized "
            f"ones (int8, dynamic range) by {100 * min(quantized):+.1f} to {100 * max(quantized):+.1f} points (point "
            f"estimates); {len(beyond)} of {len(rows)} intervals lie wholly above 0. The gate fails an increase whose "
            f"one-sided 95% lower bound exceeds {100 * MAX_ECE_INCREASE:g} points: a quantized artifact whose "
            "confidence really drifts that far fails once the validation images show it beyond chance, while a small "
            f"validation set (here as few as {min(a['images'] for a in rows)} images) cannot tell a few points from "
            "noise.",
        ]
    lines.append("")
    dest.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    args = parser.parse_args()
    runs = []
    for item in args.runs:
        name, _, path = item.partition("=")
        runs.append(read_run(name, Path(path)))
    report = {"machine": machine_header(0), "runs": runs}
    here = Path(__file__).resolve().parent
    (here / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, here / "CALIBRATION.md")
    print((here / "CALIBRATION.md").read_text())


if __name__ == "__main__":
    main()
