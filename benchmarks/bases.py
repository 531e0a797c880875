"""`make bench-bases`: every base network through export and bench at its default size, on this machine.

For each public base (`toolkit bases`): a run with random weights (`--weights none`: only VGG16's
ImageNet weights can be had offline, and latency and size do not depend on the values), one frozen
epoch on a small demo set (40 images per class) at the base's default size, `toolkit export --format all`, then
`toolkit bench --batch-size 1`. Records GFLOP (counted on the graph), parameters, the size of
every artifact and its batch-1 p50, and the parity gate's max |diff| of each int8 artifact
(random weights put probabilities near 0.5, so int8's agreement gates are relaxed here and its
drift is read from the probabilities instead). Writes benchmarks/BASES.md and benchmarks/bases.json;
a run for some bases (`python benchmarks/bases.py mobilenetv3large ...`) replaces their rows.

Usage: python benchmarks/bases.py [BASE ...]   (data and run folders under ~/.cache/toolkit-bases)
       python benchmarks/bases.py --report     (BASES.md again from bases.json)
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real import machine  # noqa: E402  (the same machine line as benchmarks/REAL.md)
from toolkit_cli import toolkit as run_toolkit  # noqa: E402

CACHE = Path(os.environ.get("TOOLKIT_BASES_CACHE", Path.home() / ".cache" / "toolkit-bases"))
RELAXED_INT8 = ["--min-agreement", "0", "--max-accuracy-drop", "1"]
COLUMNS = [  # (bench record name, column title)
    ("keras float32", "Keras fp32"),
    ("onnx float32", "ONNX fp32"),
    ("onnx int8", "ONNX int8"),
    ("tflite float32", "TFLite fp32"),
    ("tflite float16", "TFLite fp16"),
    ("tflite dynamic", "TFLite dyn"),
    ("tflite int8", "TFLite int8"),
    ("openvino bf16", "OV bf16"),
    ("openvino int8", "OV int8"),
]


TARGETS_MS = {"mobilenetv3large": 3.0, "efficientnetv2b0": 8.0}  # the base-network issue's, fastest int8 at batch 1


def toolkit(*args: str) -> subprocess.CompletedProcess:
    """The CLI with its stderr kept: a failed base's row says why."""
    return run_toolkit(*args, check=False, capture_stderr=True)


def measure(name: str, data: Path) -> dict:
    """Train, export and bench one base; returns its row."""
    from toolkit.bases import get_base
    from toolkit.bases.catalog import base_row

    spec = get_base(name)
    run = CACHE / name
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time: random weights, nothing to keep
    t0 = time.perf_counter()
    trained = toolkit("train", str(data), "--base", name, "--weights", "none", "--epochs", "1", "--no-augment",
                      "--out", str(run), "--quiet", "--json")  # fmt: skip
    if trained.returncode != 0:
        return {"name": name, "error": f"train: {trained.stderr.strip().splitlines()[-1:]}"}
    exported = toolkit("export", str(run), "--format", "all", *RELAXED_INT8, "--json")
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    bench = toolkit("bench", str(run), "--batch-size", "1", "--json")
    records = json.loads(bench.stdout)["records"] if bench.returncode == 0 else []
    row = base_row(name)  # this base only (building all eight per base was 64 builds)
    return {
        "name": name,
        "gflop": spec.flops(spec.default_size, 2, "gap+gmp") / 1e9,
        "parameters": row.parameters,
        "image_size": spec.default_size,
        "export_exit": exported.returncode,
        "artifacts": {
            f"{a['format']} {a['precision']}": {
                "size_mb": a["size_bytes"] / 1e6,
                "max_abs_diff": a["parity"].get("max_abs_diff"),
                "agreement": a["parity"].get("top1_agreement"),
                "passed": a["parity"].get("passed"),
            }
            for a in manifest["artifacts"]
            if "parity" in a
        },
        "bench": {r["name"]: {"p50_ms": r["p50_ms"], "size_mb": r["size_mb"]} for r in records if r["batch"] == 1},
        "bench_error": None if bench.returncode == 0 else bench.stderr.strip().splitlines()[-1:],
        "seconds": time.perf_counter() - t0,
    }


def fastest_int8(row: dict) -> tuple[str, float] | None:
    timed = [(k, v["p50_ms"]) for k, v in row.get("bench", {}).items() if k.endswith("int8")]
    return min(timed, key=lambda kv: kv[1]) if timed else None


def xnnpack_partitions(path: Path) -> int | None:
    """How many pieces XNNPACK takes of a TFLite file (1: all of it; more: ops it cannot run sit between them)."""
    if not path.is_file():
        return None
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def partition_note(name: str) -> str:
    """TFLite int8 against float32 in XNNPACK partitions, read from the run's exported files."""
    export = CACHE / name / "export"
    int8, fp32 = (xnnpack_partitions(export / f"model_{p}.tflite") for p in ("int8", "float32"))
    if int8 is None or fp32 is None or int8 == fp32:
        return ""
    return f"TFLite int8 runs as {int8} XNNPACK partitions (float32: {fp32})"


def _probe_layers():
    """One 3x3 convolution followed by each activation the bases use (and MobileNetV3's squeeze-excite)."""
    import keras

    def squeeze_excite(x):
        s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = keras.layers.Conv2D(8, 1, activation="hard_sigmoid")(keras.layers.Conv2D(4, 1, activation="relu")(s))
        return keras.layers.Multiply()([x, s])

    act = keras.layers.Activation
    return {
        "relu6": lambda x: keras.layers.ReLU(6.0)(x),
        "hard_swish": lambda x: act("hard_swish")(x),
        "hard_sigmoid": lambda x: act("hard_sigmoid")(x),
        "swish": lambda x: act("swish")(x),
        "gelu": lambda x: act("gelu")(x),
        "squeeze-excite": squeeze_excite,
    }


def probe_int8_partitions() -> dict[str, int]:
    """XNNPACK partitions of a tiny full-int8 TFLite model per activation: 1 means XNNPACK runs all of it."""
    import tempfile

    import keras
    import numpy as np
    import tensorflow as tf

    counts = {}
    for name, layer in _probe_layers().items():
        image = keras.Input((16, 16, 8))
        model = keras.Model(image, layer(keras.layers.Conv2D(8, 3, padding="same")(image)))
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        samples = [np.random.default_rng(i).random((1, 16, 16, 8), np.float32) for i in range(8)]
        converter.representative_dataset = lambda samples=samples: ([s] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "probe.tflite"
            path.write_bytes(converter.convert())
            counts[name] = xnnpack_partitions(path)
    return counts


def drift_note(row: dict) -> str:
    """Which int8 artifacts move the probabilities by more than 0.05 (random weights: a flag, not a verdict)."""
    drifted = [
        f"{k} ({v['max_abs_diff']:.2f})"
        for k, v in row.get("artifacts", {}).items()
        if k.endswith("int8") and v.get("max_abs_diff") is not None and v["max_abs_diff"] > 0.05
    ]
    return "int8 drifts: " + ", ".join(drifted) if drifted else ""


def write_report(result: dict, out_md: Path) -> None:
    rows = sorted(result["rows"].values(), key=lambda r: r.get("gflop", 0))
    head = "| base | GFLOP | params | " + " | ".join(t for _, t in COLUMNS) + " | fastest int8 | notes |"
    lines = [
        "# Base networks: latency and size per format",
        "",
        f"Written by `{result['command']}` on {result['date']}; machine: {result['machine']}.",
        "Random weights (`--weights none`; latency and size do not depend on the values), 224 px, a gap+gmp",
        "head, two classes, one frozen epoch on 80 demo images, `toolkit export --format all` with the int8",
        "agreement gates relaxed (random weights put probabilities near 0.5), then `toolkit bench --batch-size 1`",
        "(batch-1 p50 in ms, all cores of this machine). **No accuracy is measured here**: only VGG16's",
        "ImageNet weights can be had offline. GFLOP is counted on the graph (`toolkit bases`).",
        "",
        "Batch-1 p50, ms:",
        "",
        head,
        "|" + " --- |" * (len(COLUMNS) + 5),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['name']}` | | | " + " | " * len(COLUMNS) + f" | {r['error']} |")
            continue
        cells = [f"{r['bench'][k]['p50_ms']:.2f}" if k in r["bench"] else "-" for k, _ in COLUMNS]
        fast = fastest_int8(r)
        fast_text = f"{fast[0]} {fast[1]:.2f}" if fast else "-"
        lines.append(
            f"| `{r['name']}` | {r['gflop']:.2f} | {r['parameters'] / 1e6:.1f} M | "
            + " | ".join(cells)
            + f" | {fast_text} | {'; '.join(n for n in (drift_note(r), partition_note(r['name'])) if n)} |"
        )
    lines += ["", "Size of each artifact, MB:", "", "| base | " + " | ".join(t for _, t in COLUMNS[1:]) + " |"]
    lines.append("|" + " --- |" * len(COLUMNS))
    for r in rows:
        if "error" in r:
            continue
        cells = [f"{r['bench'][k]['size_mb']:.1f}" if k in r["bench"] else "-" for k, _ in COLUMNS[1:]]
        lines.append(f"| `{r['name']}` | " + " | ".join(cells) + " |")
    lines += ["", "Targets (batch 1, fastest int8 artifact):", ""]
    for name, target in TARGETS_MS.items():
        row = result["rows"].get(name, {})
        fast = fastest_int8(row)
        if fast is None:
            lines.append(f"- `{name}`: not measured")
            continue
        overall = min(row["bench"].items(), key=lambda kv: kv[1]["p50_ms"])
        verdict = "met" if fast[1] <= target else "missed"
        lines.append(
            f"- `{name}`: {fast[0]} {fast[1]:.2f} ms against <= {target:g} ms: {verdict}; "
            f"fastest of any precision: {overall[0]} {overall[1]['p50_ms']:.2f} ms"
        )
    probes = result.get("int8_probe", {})
    if probes:
        lines += [
            "",
            "Why TFLite int8 splits: a one-convolution full-int8 model per activation, XNNPACK partitions "
            "(1: XNNPACK runs all of it; 2: the activation runs outside, on TFLite's reference int8 kernel):",
            "",
            "| " + " | ".join(probes) + " |",
            "|" + " --- |" * len(probes),
            "| " + " | ".join(str(v) for v in probes.values()) + " |",
        ]
    lines += ["", NOTES]
    out_md.write_text("\n".join(lines) + "\n")


NOTES = """Reading it: the targets of the base-network issue are MobileNetV3Large's fastest int8 artifact at
batch 1 in <= 3 ms and EfficientNetV2B0's in <= 8 ms on a 2-core machine. Hard-swish and
squeeze-excite (the MobileNetV3s, EfficientNetV2) are known to quantize badly and to fall off the
fast int8 kernels of some runtimes: where TFLite's int8 file splits into many XNNPACK partitions (the
notes column), the ops between them run on TFLite's reference int8 kernels, and the int8 file can be
slower than float32. The probe table says which: this LiteRT's XNNPACK does not take int8 HARD_SWISH
(the MobileNetV3s have one after most convolutions) nor int8 GELU (ConvNeXt's), while squeeze-excite,
swish and hard-sigmoid stay inside. An int8 artifact slower than its float32 file is measured here, not assumed; `toolkit bench`'s
recommendation picks per run. OpenVINO's float32 IR is not among the exported files (bf16 and int8 are).
OpenVINO takes hard-swish and squeeze-excite in its int8 kernels (AMX here) once its IR is converted from
TensorFlow (NHWC; d9b7046): converted from the ONNX file, MobileNetV3Large's IR carried 92 Transposes
and its int8 took 7.9 ms at batch 1 on this machine kind (2026-12-07), slower than TFLite float32."""


def main() -> int:
    from toolkit.bases import base_names

    out_json = HERE / "bases.json"
    if sys.argv[1:] == ["--report"]:  # BASES.md again from bases.json (and the cached exports' partitions)
        result = json.loads(out_json.read_text())
        result["int8_probe"] = probe_int8_partitions()
        out_json.write_text(json.dumps(result, indent=1) + "\n")
        write_report(result, HERE / "BASES.md")
        return 0
    unknown = sorted(set(sys.argv[1:]) - set(base_names()))
    if unknown:
        print(f"unknown base(s) {', '.join(unknown)}; choose from {', '.join(base_names())}", file=sys.stderr)
        return 2
    names = sys.argv[1:] or base_names()
    data = CACHE / "demo-data"
    if not (data / "train").is_dir():
        made = toolkit("demo-data", str(data), "--image-size", "224", "--per-class", "40")
        if made.returncode != 0:
            print(made.stderr, file=sys.stderr)
            return 1
    result = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    result["int8_probe"] = probe_int8_partitions()
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        result["rows"][name] = measure(name, data)
        result.update(
            command="make bench-bases",
            date=datetime.date.today().isoformat(),
            machine=machine(),
        )
        out_json.write_text(json.dumps(result, indent=1) + "\n")  # each base as it ends: a long run keeps its rows
        write_report(result, HERE / "BASES.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
