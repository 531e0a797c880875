"""`make bench-int8`: the int8 choices side by side on a trained run, scored on its held-out test images.

For each calibration method (minmax, entropy, percentile) and for the automatic fix
(`--int8-max-drop 1`), exports ONNX, TFLite and OpenVINO (NNCF) int8 and records the parity gate's
validation agreement and accuracy, the test accuracy, the batch-1 latency and the
layers kept in float; then the float alternatives (ONNX float32, OpenVINO bf16).
Writes benchmarks/INT8.md and benchmarks/int8.json (one section per run; a rerun replaces
that run's section).

`--whole-export FLAGS` first times the export a user runs (`toolkit export RUN --format all FLAGS`, e.g.
`--int8-max-drop 1`) and records each artifact's gate, the layers the fix kept in float, the decisions they
repaired, their interleaved latency cost and the manifest's phase times. `--train DATA` trains RUN with
the project defaults (`toolkit train DATA`) when it has no best.keras yet, so the bench can be resumed.

Usage: python benchmarks/int8.py NAME RUN TEST_DIR [--train DATA --weights W --positive-class C]
           [--whole-export FLAGS [--reuse-export]] [--variants minmax,entropy,percentile,fix,fix-strict,float]
       (e.g. elpv ~/.cache/toolkit-elpv/run DATA/test)
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real import machine  # noqa: E402  (the same machine line as benchmarks/REAL.md)
from toolkit_cli import toolkit as run_toolkit  # noqa: E402

VARIANTS = {  # --variants key: (the row's name, `toolkit export RUN --precision int8` flags)
    "minmax": ("minmax", ["--calibration", "minmax"]),
    "entropy": ("entropy", ["--calibration", "entropy"]),
    "percentile": ("percentile 99.999", ["--calibration", "percentile"]),
    "fix": ("fix: --int8-max-drop 1", ["--int8-max-drop", "1"]),
    "fix-strict": ("fix, agreement >= 99.5%", ["--int8-max-drop", "1", "--min-agreement", "0.995"]),
}
FLOAT = ("onnx float32", "openvino bf16")  # the float alternatives, scored beside the int8 rows
LATENCY_RUNS = 20


def toolkit(*args: str) -> int:
    """The CLI's exit code (a failed gate is a row, not the end of the benchmark)."""
    return run_toolkit(*args, check=False).returncode


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
    return {f"{a['format']} {a['precision']}": a for a in manifest["artifacts"] if not a.get("variant")}


def train_defaults(run: Path, data: Path, extra: list[str]) -> float | None:
    """`toolkit train DATA` with the project defaults into RUN, unless RUN already holds a trained model."""
    if (run / "best.keras").is_file():
        return None
    began = time.perf_counter()
    if toolkit("train", str(data), "--out", str(run), "--quiet", *extra) != 0:
        raise SystemExit(f"toolkit train {data} failed")
    return time.perf_counter() - began


def repaired(fix: dict, flips: int) -> int:
    """Decisions the float layers gave back: the chosen calibration's all-int8 flips minus the final flips."""
    all_int8 = [
        a["flips"]
        for a in fix.get("attempts", [])  # the dynamic-range fix tries no calibration: neither side records one
        if not a["float_layers"] and a.get("calibration") == fix.get("calibration")
    ]
    return min(all_int8) - flips if fix.get("float_layers") and all_int8 else 0


def whole_export(run: Path, flags: list[str], reuse: bool = False) -> dict:
    """The export a user runs, timed: every format, each artifact's gate and what the fix did.

    `reuse` reads the export already in RUN (a bench stopped after it) and takes its time from the
    manifest's own clock (`export_timings_s.total`: the export without the process's start-up).
    """
    manifest_path = run / "export" / "manifest.json"
    if reuse and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        code = 0 if all(a["parity"]["passed"] for a in manifest["artifacts"]) else 1
        seconds = manifest["export_timings_s"]["total"]
    else:
        began = time.perf_counter()
        code = toolkit("export", str(run), "--format", "all", "--quiet", *flags)
        seconds = time.perf_counter() - began
        manifest = json.loads(manifest_path.read_text())
    phases = manifest.get("export_timings_s", {})
    artifacts = []
    for a in manifest["artifacts"]:
        fix, parity = a.get("int8_fix", {}), a["parity"]
        kept, key = fix.get("float_layers", []), "-".join(filter(None, (a["format"], a["precision"], a.get("variant"))))
        artifacts.append(
            {
                "artifact": key.replace("-", " "),
                "passed": parity["passed"],
                "agreement": parity["top1_agreement"],
                "accuracy": parity.get("accuracy"),
                "reference_accuracy": parity.get("reference_accuracy"),
                "images": parity["images"],
                "attempts": len(fix.get("attempts", [])),
                "calibration": a.get("calibration", {}).get("method"),
                "float_layers": kept,
                "repaired": repaired(fix, parity["flips"]),
                "latency_cost_ms": fix.get("latency_ms", {}).get("cost"),
                "seconds": phases.get(key),
            }
        )
    return {
        "command": "toolkit export RUN --format all " + " ".join(flags),
        "exit_code": code,
        "seconds": seconds,
        "timed_by": "manifest" if reuse else "wall clock",
        "phases_s": phases,
        "artifacts": artifacts,
    }


def measure(run: Path, test_dir: Path, variants: list[str], whole_flags: list[str] | None) -> dict:
    """Each variant's int8 artifacts exported and scored, then the float ones.

    After a whole export (`whole_flags`), the variant with the same flags is scored from its files, first,
    before another variant replaces them; the float files come from it too.
    """
    from toolkit.evaluate import evaluate_model
    from toolkit.runtime import load

    sections = {"keras_test_accuracy": evaluate_model(load(run / "best.keras"), test_dir).metrics.accuracy}
    chosen = sorted((k for k in VARIANTS if k in variants), key=lambda k: VARIANTS[k][1] != whole_flags)
    rows = []
    for key in chosen:
        name, flags = VARIANTS[key]
        if flags != whole_flags:
            toolkit("export", str(run), "--precision", "int8", "--quiet", *flags)
        artifacts = exported(run)
        names = [k for k in ("onnx int8", "tflite int8", "openvino int8") if k in artifacts]
        rows += [{"variant": name, **score(run, artifacts[k], test_dir)} for k in names]
    if "float" in variants:
        if whole_flags is None:
            toolkit("export", str(run), "--format", "onnx", "--precision", "float32", "--quiet")
            toolkit("export", str(run), "--format", "openvino", "--quiet")
        artifacts = exported(run)
        rows += [{"variant": "float", **score(run, artifacts[k], test_dir)} for k in FLOAT if k in artifacts]
    sections["rows"] = rows
    return sections


def merged_rows(previous: dict, section: dict, variants: list[str], whole_flags: list[str] | None) -> list[dict]:
    """This invocation's rows, dated, and the previous section's rows of the variants it did not measure.

    So `--variants fix` re-measures the fix without re-exporting every calibration (an hour on ELPV); each
    row keeps the date and machine it was measured on. Ordered as VARIANTS, the whole export's variant first.
    """
    names = [name for name, _ in VARIANTS.values()] + ["float"]
    measured = {VARIANTS[k][0] for k in variants if k in VARIANTS} | ({"float"} & set(variants))
    fresh = [{**row, "date": section["date"], "machine": section["machine"]} for row in section["rows"]]
    kept = [
        {"date": previous.get("date"), "machine": previous.get("machine"), **row}
        for row in previous.get("rows", [])
        if row["variant"] not in measured
    ]
    first = next((name for name, flags in VARIANTS.values() if flags == whole_flags), None)
    return sorted(fresh + kept, key=lambda row: (row["variant"] != first, names.index(row["variant"])))


def kept_rows_line(r: dict) -> list[str]:
    """A sentence naming the rows measured by an earlier invocation (their date and machine), if any."""
    earlier = {}
    for row in r["rows"]:
        when = (row.get("date", r["date"]), row.get("machine", r["machine"]))  # undated rows: the section's run
        if when != (r["date"], r["machine"]):
            earlier.setdefault(", ".join(when), []).append(row["variant"])
    return [
        f"Rows kept from an earlier invocation ({when}): {'; '.join(dict.fromkeys(v))}." for when, v in earlier.items()
    ] + ([""] if earlier else [])


def short_names(layers: list[str]) -> str:
    """The float layers by their Keras layer names: a TFLite group is named by its fused tensors
    (`classifier_1/head_1/hidden_1/MatMul;...`, Keras scopes end in _N), an ONNX node by its path
    (`/features/vgg16/block5_conv3/Conv`); the full names stay in int8.json."""
    names = []
    for layer in layers:
        parts = [p for p in layer.split(";")[0].split("/") if p]
        scoped = [p for p in parts[:-1] if re.fullmatch(r".+_\d+", p)]  # the op itself may end in _N
        names.append(scoped[-1].rsplit("_", 1)[0] if scoped else parts[-2] if len(parts) > 1 else layer)
    return ", ".join(dict.fromkeys(names))


def whole_export_lines(w: dict | None) -> list[str]:
    """The user's export, timed: one row per artifact, then the phase times."""
    if w is None:
        return []
    verdict = "every artifact passed" if w["exit_code"] == 0 else f"exit {w['exit_code']}: a gate failed"
    lines = [
        f"`{w['command']}`: **{w['seconds'] / 60:.1f} min**"
        + (" (the manifest's own clock)" if w.get("timed_by") == "manifest" else "")
        + f", {verdict}.",
        "",
        "| artifact | gate images | agreement | accuracy (Keras) | calibration | float layers | decisions repaired "
        "| latency cost ms | seconds | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in w["artifacts"]:
        cost, seconds = a["latency_cost_ms"], a["seconds"]
        accuracy = "" if a["accuracy"] is None else f"{a['accuracy']:.1%} ({a['reference_accuracy']:.1%})"
        lines.append(
            f"| {a['artifact']} | {a['images']} | {a['agreement']:.1%} | {accuracy} | {a['calibration'] or ''} | "
            f"{short_names(a['float_layers']) or 0} | {a['repaired']} | {'' if cost is None else f'{cost:+.1f}'} | "
            f"{'' if seconds is None else f'{seconds:.0f}'} | {'pass' if a['passed'] else 'FAIL'} |"
        )
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in w["phases_s"].items())
    return lines + ["", f"Phases (manifest `export_timings_s`): {phases}.", ""]


def write_markdown(results: dict, dest: Path) -> None:
    lines = [
        "# int8 on real data: calibration methods, the automatic fix, and bf16",
        "",
        "Written by `make bench-int8` (benchmarks/int8.py). Each row is gated on the export's parity images (up to "
        "1,000: the run's validation images, then training images, never test; agreement >= 98% and accuracy drop "
        "<= 1 point, with 95% intervals) and scored on its held-out test images; batch-1 ms is the median of 20 "
        "runs through the toolkit runtime on all cores. Where a section opens with a timed `toolkit export --format "
        "all`, its table is that export as a user runs it: each artifact's gate, the layers the automatic fix kept "
        "in float (by Keras layer name; full names in int8.json), the parity decisions they repaired and their "
        "latency cost (interleaved runs), and the phase times from the manifest.",
    ]
    for name, r in results.items():
        lines += [
            "",
            f"## {name}",
            "",
            f"Run `{r['run']}`, {r['date']}, {r['machine']}; Keras test accuracy {r['keras_test_accuracy']:.1%}."
            + (f" Trained by `{r['trained_with']}`." if r.get("trained_with") else ""),
            "",
            *whole_export_lines(r.get("whole_export")),
            *kept_rows_line(r),
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
    parser.add_argument("--train", type=Path, default=None, help="train RUN from DATA with the defaults if needed")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--positive-class", default=None)
    parser.add_argument("--whole-export", default=None, metavar="FLAGS", help="time `export --format all FLAGS`")
    parser.add_argument(
        "--reuse-export", action="store_true", help="take the whole export already in RUN (its manifest's time)"
    )
    parser.add_argument("--variants", default=",".join([*VARIANTS, "float"]), help="comma-separated rows to measure")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {*VARIANTS, "float"})
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join([*VARIANTS, 'float'])}")
    whole_flags = None if args.whole_export is None else shlex.split(args.whole_export)
    store = HERE / "int8.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    section: dict = {}
    if args.train is not None:
        extra = ["--weights", args.weights] + (["--positive-class", args.positive_class] if args.positive_class else [])
        section["train_seconds"] = train_defaults(args.run, args.train, extra)
        section["trained_with"] = "toolkit train DATA " + " ".join(extra[2:] if Path(args.weights).is_file() else extra)
    if whole_flags is not None:
        section["whole_export"] = whole_export(args.run, whole_flags, args.reuse_export)
    section.update(measure(args.run, args.test_dir, variants, whole_flags))
    section.update(run=str(args.run), date=datetime.date.today().isoformat(), machine=machine())
    section["rows"] = merged_rows(results.get(args.name, {}), section, variants, whole_flags)
    results[args.name] = section
    store.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, HERE / "INT8.md")
    print((HERE / "INT8.md").read_text())


if __name__ == "__main__":
    main()
