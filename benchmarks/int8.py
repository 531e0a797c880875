"""`make bench-int8`: the int8 choices side by side on a trained run, scored on its held-out test images.

For each calibration method (minmax, entropy, percentile) and for the automatic fix
(`--int8-max-drop 1`), exports ONNX, TFLite and OpenVINO (NNCF) int8 and records the parity gate's
validation agreement and accuracy, the test accuracy, the batch-1 latency and the
layers kept in float; then the float alternatives (ONNX float32, OpenVINO bf16).
Writes benchmarks/INT8.md and benchmarks/int8.json (one section per run; a rerun replaces
that run's section).

Usage: python benchmarks/int8.py NAME RUN TEST_DIR   (e.g. elpv ~/.cache/toolkit-elpv/run DATA/test)
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real import machine  # noqa: E402  (the same machine line as benchmarks/REAL.md)

VARIANTS = [
    ("minmax", ["--calibration", "minmax"]),
    ("entropy", ["--calibration", "entropy"]),
    ("percentile 99.999", ["--calibration", "percentile"]),
    ("fix: --int8-max-drop 1", ["--int8-max-drop", "1"]),
]
LATENCY_RUNS = 20


def toolkit(*args: str) -> int:
    print("$ toolkit " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], stdout=subprocess.DEVNULL).returncode


def batch1_ms(path: Path) -> float:
    """Median batch-1 latency through the toolkit runtime, all cores (the fix's own measurement)."""
    import numpy as np

    from toolkit.export.int8_fix import batch1_ms as measure
    from toolkit.runtime import load

    size = load(path, device="cpu").image_size
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    return measure(path, None, image, runs=LATENCY_RUNS)


def score(run: Path, entry: dict, test_dir: Path) -> dict:
    from toolkit.evaluate import evaluate_model
    from toolkit.runtime import load

    path = run / "export" / entry["path"]
    metrics = evaluate_model(load(path, device="cpu"), test_dir).metrics
    fix = entry.get("int8_fix", {})
    row = {
        "artifact": f"{entry['format']} {entry['precision']}",
        "calibration": entry.get("calibration", {}).get("method"),
        "val_agreement": entry["parity"]["top1_agreement"],
        "val_accuracy": entry["parity"]["accuracy"],
        "keras_val_accuracy": entry["parity"]["reference_accuracy"],
        "max_abs_diff": entry["parity"]["max_abs_diff"],
        "test_accuracy": metrics.accuracy,
        "batch1_ms": batch1_ms(path),
        "float_layers": fix.get("float_layers", []),
        "attempts": len(fix.get("attempts", [])),
        "passed": entry["parity"]["passed"],
    }
    print(f"  {row['artifact']}: test {row['test_accuracy']:.4f}, {row['batch1_ms']:.1f} ms", file=sys.stderr)
    return row


def exported(run: Path) -> dict[str, dict]:
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return {f"{a['format']} {a['precision']}": a for a in manifest["artifacts"]}


def measure(run: Path, test_dir: Path) -> dict:
    from toolkit.evaluate import evaluate_model
    from toolkit.runtime import load

    sections = {"keras_test_accuracy": evaluate_model(load(run / "best.keras"), test_dir).metrics.accuracy}
    rows = []
    for name, flags in VARIANTS:
        toolkit("export", str(run), "--precision", "int8", "--quiet", *flags)
        artifacts = exported(run)
        names = [k for k in ("onnx int8", "tflite int8", "openvino int8") if k in artifacts]
        rows += [{"variant": name, **score(run, artifacts[k], test_dir)} for k in names]
    toolkit("export", str(run), "--format", "onnx", "--precision", "float32", "--quiet")
    toolkit("export", str(run), "--format", "openvino", "--quiet")
    artifacts = exported(run)
    rows += [{"variant": "float", **score(run, artifacts[k], test_dir)} for k in ("onnx float32", "openvino bf16")]
    sections["rows"] = rows
    return sections


def write_markdown(results: dict, dest: Path) -> None:
    lines = [
        "# int8 on real data: calibration methods, the automatic fix, and bf16",
        "",
        "Written by `make bench-int8` (benchmarks/int8.py). Each int8 row is gated on the run's validation images "
        "(agreement >= 98%, accuracy drop <= 1 point) and scored on its held-out test images; batch-1 ms is the "
        "median of 20 runs through the toolkit runtime on all cores.",
    ]
    for name, r in results.items():
        lines += [
            "",
            f"## {name}",
            "",
            f"Run `{r['run']}`, {r['date']}, {r['machine']}; Keras test accuracy {r['keras_test_accuracy']:.1%}.",
            "",
            "| variant | artifact | val agreement | val acc. (Keras) | test acc. | max diff | batch-1 ms | float layers | gate |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['variant']} | {row['artifact']} | {row['val_agreement']:.1%} | {row['val_accuracy']:.1%} "
                f"({row['keras_val_accuracy']:.1%}) | {row['test_accuracy']:.1%} | {row['max_abs_diff']:.1e} | "
                f"{row['batch1_ms']:.1f} | {len(row['float_layers'])} | {'pass' if row['passed'] else 'FAIL'} |"
            )
    dest.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("run", type=Path)
    parser.add_argument("test_dir", type=Path)
    args = parser.parse_args()
    store = HERE / "int8.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    section = measure(args.run, args.test_dir)
    section.update(run=str(args.run), date=datetime.date.today().isoformat(), machine=machine())
    results[args.name] = section
    store.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, HERE / "INT8.md")
    print((HERE / "INT8.md").read_text())


if __name__ == "__main__":
    main()
