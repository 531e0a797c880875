"""`make bench-explain`: does the heatmap point at the lesion? Grad-CAM of a demo run on the demo test images,
from the Keras model and from every heatmap artifact (`toolkit export RUN --heatmap`, which make runs first).

`toolkit demo-data` records each lesion's centre and radius in lesions.csv (never in the image); an image
counts as a hit when the map's peak falls inside the lesion's circle. Reports, per source, the hit rate per
class, the median distance of the peak from the centre in radii, and the export gate's map agreement with
Keras on the parity images (manifest.json); and a grid of Keras overlays. Writes benchmarks/explain.json,
benchmarks/EXPLAIN.md and benchmarks/explain_examples.png.
Usage: python benchmarks/explain.py RUN_DIR DEMO_DATA_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.bench.machine import machine_header  # noqa: E402
from toolkit.data.demo import read_lesions  # noqa: E402
from toolkit.explain import explain_images  # noqa: E402
from toolkit.layout import manifest_artifacts  # noqa: E402
from toolkit.runtime import load  # noqa: E402

TARGET = 0.80


def sources(run: Path) -> list[tuple[str, Path, dict | None]]:
    """(name, model file, manifest entry) for the Keras model and each heatmap artifact the export made."""
    found: list[tuple[str, Path, dict | None]] = [("keras", run / "best.keras", None)]
    manifest = run / "export" / "manifest.json"
    if manifest.is_file():
        for entry in manifest_artifacts(manifest):
            if entry.get("variant") == "heatmap" and entry["format"] != "web":
                found.append((f"{entry['format']} {entry['precision']}", run / "export" / entry["path"], entry))
    return found


def score(lesions: dict, keys: list[str], results: list) -> tuple[dict, list]:
    rows = []
    for path, result in zip(keys, results):
        lesion = lesions[path]
        radii = float(np.hypot(result.peak[0] - lesion.cx, result.peak[1] - lesion.cy) / lesion.radius)
        rows.append({"image": path, "class": path.split("/")[1], "label": result.label, "radii": radii,
                     "hit": radii <= 1.0})  # fmt: skip
    by_class = {}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        by_class[cls] = {"images": len(mine), "hit_rate": sum(r["hit"] for r in mine) / len(mine)}
    summary = {
        "images": len(rows),
        "hit_rate": sum(r["hit"] for r in rows) / len(rows),
        "median_radii": float(np.median([r["radii"] for r in rows])),
        "by_class": by_class,
        "target": TARGET,
    }
    return summary, rows


def measure(run: Path, data: Path) -> tuple[list[dict], list]:
    lesions = {k: v for k, v in read_lesions(data).items() if k.startswith("test/")}
    keys = sorted(lesions)
    files = [data / k for k in keys]
    measured, examples = [], []
    for name, path, entry in sources(run):
        print(f"explaining {len(files)} test images with {name}", flush=True)
        results = explain_images(load(path, device="cpu"), files)
        summary, rows = score(lesions, keys, results)
        record = {"source": name, "path": str(path.relative_to(run)), "summary": summary}
        if entry is not None:
            record["gate_passed"] = entry["parity"]["passed"]
            record["map_agreement"] = entry["heatmap"]
            record["size_mb"] = entry["size_bytes"] / 1e6
        measured.append(record)
        if name == "keras":
            examples = list(zip(rows, results))
    return measured, examples


def grid(pairs: list, dest: Path, count: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from toolkit.imaging import load_rgb

    fig, axes = plt.subplots(2, count // 2, figsize=(2.2 * count // 2, 4.8))
    for ax, (row, result) in zip(axes.ravel(), pairs[:: max(1, len(pairs) // count)][:count]):
        image = load_rgb(result.image)
        heat = Image.fromarray(np.uint8(matplotlib.colormaps["jet"](result.heatmap)[..., :3] * 255)).resize(image.size)
        ax.imshow(Image.blend(image, heat, 0.45))
        ax.plot([result.peak[0] * image.size[0]], [result.peak[1] * image.size[1]], "w+", markersize=10, mew=2)
        ax.set_title(f"{row['class']}: {'hit' if row['hit'] else 'miss'}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(dest, dpi=80)
    plt.close(fig)


def table(measured: list[dict]) -> list[str]:
    classes = list(measured[0]["summary"]["by_class"])
    lines = [
        "| source | gate | map p95 max diff vs Keras | same peak cell | hit rate | median distance (radii) | "
        + " | ".join(classes)
        + " |",
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(classes),
    ]
    for r in measured:
        s, agreement = r["summary"], r.get("map_agreement")
        gate = "" if "gate_passed" not in r else ("pass" if r["gate_passed"] else "FAIL")
        diff = "reference" if agreement is None else f"{agreement['p95_max_diff']:.3f} (bound {agreement['bound']:g})"
        same = "" if agreement is None else f"{100 * agreement['same_peak']:.1f}%"
        lines.append(
            f"| {r['source']} | {gate} | {diff} | {same} | {100 * s['hit_rate']:.1f}% | {s['median_radii']:.2f} | "
            + " | ".join(f"{100 * c['hit_rate']:.1f}%" for c in s["by_class"].values())
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    measured, examples = measure(args.run_dir, args.data_dir)
    config = json.loads((args.run_dir / "config.json").read_text())
    report = {"machine": machine_header(0), "run": str(args.run_dir), "head": config.get("head"),
              "base": config.get("base"), "sources": measured}  # fmt: skip
    here = Path(__file__).resolve().parent
    (here / "explain.json").write_text(json.dumps(report, indent=2) + "\n")
    grid(examples, here / "explain_examples.png")
    m = report["machine"]
    artifacts = [r for r in measured if r["source"] != "keras"]
    met = [r["source"] for r in measured if r["summary"]["hit_rate"] >= TARGET]
    lines = [
        "# Does the heatmap point at the lesion?",
        "",
        f"`make bench-explain` on {m['cpu']} ({'/'.join(m['instruction_sets']) or 'no AVX2'}; {m['cores']} cores), "
        f"{m['date'][:10]}: Grad-CAM (`toolkit explain`; the score is the label's logit minus the mean logit) of a "
        f"demo run ({report['base']}, {report['head']} head, offline VGG16 weights, trained with the defaults) on the "
        f"{measured[0]['summary']['images']} demo test images, from the Keras model and from each heatmap artifact "
        "(`toolkit export RUN --heatmap`, the map computed inside the file and read through the TF-free runtime); "
        "a hit is a peak inside the lesion's circle (lesions.csv). The map agreement is the export gate's: on the "
        "parity images (validation, then training; never test), the 95th percentile of the largest per-cell "
        "difference between the artifact's map and Keras's, both scaled to their peak; and how often the two maps "
        "peak in the same grid cell.",
        "",
        *table(measured),
        "",
        f"Target (issue #43): a hit rate >= {100 * TARGET:.0f}% for Keras and every heatmap artifact: met by "
        f"{', '.join(met) or 'none'}"
        + (
            f"; not met by {', '.join(r['source'] for r in measured if r['source'] not in met)}."
            if len(met) < len(measured)
            else "."
        )
        + (" No heatmap artifact was exported." if not artifacts else "")
        + " Examples (Keras): the map over the image, its peak marked, hit or miss.",
        "",
        "![Keras Grad-CAM overlays on demo test images](explain_examples.png)",
        "",
    ]
    (here / "EXPLAIN.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
