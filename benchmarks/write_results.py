"""Write benchmarks/RESULTS.md from a run's bench.json and cold_start.json (the table, the machine, the date, the command)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def demo_run_lines(run_dir: Path) -> list[str]:
    """The run behind the numbers: its splits, validation and held-out test accuracy, and export parity."""
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    counts = {split: sum(per.values()) for split, per in run["dataset"]["counts"].items()}
    test = metrics.get("test") or {}
    lines = [
        "",
        f"The run: {counts.get('train', 0)} train / {counts.get('val', 0)} validation ({run['selected_on']}) / "
        f"{counts.get('test', 0)} held-out test images; best epoch {run['best_epoch']}; validation accuracy "
        f"{100 * metrics['accuracy']:.1f}% (AUC {metrics['auc']:.3f}); test accuracy "
        f"{100 * test.get('accuracy', float('nan')):.1f}% (AUC {test.get('auc') or float('nan'):.3f}); "
        f"training {run['timings_s']['total']:.0f} s.",
        "",
        "| artifact | size MB | max diff | agreement | accuracy | Keras accuracy | gate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in manifest["artifacts"]:
        q = a["parity"]
        lines.append(
            f"| {a['format']} {a['precision']} | {a['size_bytes'] / 1e6:.1f} | {q['max_abs_diff']:.1e} "
            f"| {100 * q['top1_agreement']:.1f}% | {100 * q['accuracy']:.1f}% | {100 * q['reference_accuracy']:.1f}% "
            f"| {'pass' if q['passed'] else 'FAIL'} |"
        )
    return lines


def main(run_dir: Path, command: str) -> None:
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    cold = json.loads((run_dir / "bench" / "cold_start.json").read_text())
    m = bench["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} threads used), GPU: {m['gpu'] or 'none'}; "
        f"{m['platform']}, Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Date: {m['date']}. Command: `{command}`.",
        "",
        f"Matrix instruction sets: {', '.join(m.get('instruction_sets') or ['none found'])}. Matrix peaks measured "
        f"in the same run ({m['peak_matmul_size']}x{m['peak_matmul_size']} matmul, best of a few; the model costs "
        f"{m['model_gflop_per_image']:.2f} GFLOP per image):",
        "",
        "| precision | peak GFLOP/s | by runtime | floor ms per image |",
        "| --- | --- | --- | --- |",
        *[
            f"| {p} | {peak['gflops']:.0f} | {', '.join(f'{k} {v:.0f}' for k, v in peak['by_runtime'].items())} "
            f"| {m['floor_ms'][p]:.1f} |"
            for p, peak in m["peaks"].items()
        ],
        "",
        "Each row's floor is its own precision's (float16 and float32 files: fp32; dynamic and int8: int8; bf16: bf16).",
        "",
        "| backend | provider | batch | p50 ms | p90 ms | p99 ms | img/s | load s | peak MB | size MB | accuracy | vs keras "
        "| GFLOP/s | floor | % of floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in bench["records"]:
        speed = "" if r["speedup_vs_keras"] is None else f"{r['speedup_vs_keras']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['provider']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['throughput_ips']:.1f} | {r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} "
            f"| {100 * r['accuracy']:.1f}% | {speed} | {r['gflops']:.0f} | {r['floor_precision']} "
            f"| {r['percent_of_peak']:.0f}% |"
        )
    rec = bench.get("recommendation")
    lines += [
        "",
        "Recommended on this machine (the fastest artifact that passed its gate, batch 1): "
        + (
            f"**{rec['name']}**, {rec['p50_ms']:.1f} ms p50, {rec['percent_of_floor']:.0f}% of the "
            f"{rec['floor_precision']} floor ({rec['floor_ms']:.1f} ms)."
            if rec
            else "none (no artifact passed its gate)."
        ),
    ]
    lines += demo_run_lines(run_dir)
    lines += [
        "",
        "Cold start of `toolkit predict MODEL IMAGE --json` (whole process, median of 5):",
        "",
        "| artifact | median s | min s | max s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c['artifact']} | {c['median_s']:.3f} | {c['min_s']:.3f} | {c['max_s']:.3f} |" for c in cold]
    modes_path = Path("benchmarks/out/train_modes.json")
    if modes_path.is_file():
        modes = json.loads(modes_path.read_text())
        lines += [
            "",
            f"Training modes ({modes['epochs']} epochs at {modes['image_size']} px, `benchmarks/train_modes.py`; "
            "seconds are each run's own total from run.json):",
            "",
            "| run | flags | precision | seconds | val accuracy |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in ("cached_no_augment", "tutorial_no_augment", "views3", "plain_per_epoch", "tutorial"):
            r = modes[name]
            lines.append(
                f"| {name} | `{' '.join(r['flags'])}` | {r['precision']} | {r['train_s']:.1f} "
                f"| {100 * r['val_accuracy']:.1f}% |"
            )
        for p in ("fp32", "bf16"):
            f = modes[f"forward_{p}"]
            lines.append(f"| forward pass only ({p}) | {f['images']} images | {p} | {f['seconds']:.1f} | |")
        lines += ["", "| target | ratio | limit | accuracy gap (points) | met |", "| --- | --- | --- | --- | --- |"]
        for key, t in modes["targets"].items():
            gap = f"{t['accuracy_gap_points']:.1f}" if "accuracy_gap_points" in t else ""
            lines.append(f"| {key} | {t['ratio']:.2f} | {t['limit']} | {gap} | {'yes' if t['met'] else 'no'} |")
    Path("benchmarks/RESULTS.md").write_text("\n".join(lines) + "\n")
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]), " ".join(sys.argv[2:]))
