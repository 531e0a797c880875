"""`make bench-explain`: does the heatmap point at the lesion? Grad-CAM of a demo run on the demo test images.

`toolkit demo-data` records each lesion's centre and radius in lesions.csv (never in the image); an image
counts as a hit when the map's peak falls inside the lesion's circle. Reports the hit rate per class, the
median distance of the peak from the centre in radii, and a grid of overlays. Writes benchmarks/explain.json,
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
from toolkit.explain import explain_keras  # noqa: E402
from toolkit.runtime import load  # noqa: E402

TARGET = 0.80


def measure(run: Path, data: Path) -> tuple[dict, list]:
    lesions = {k: v for k, v in read_lesions(data).items() if k.startswith("test/")}
    files = [data / k for k in sorted(lesions)]
    results = explain_keras(load(run / "best.keras"), files)
    rows = []
    for path, result in zip(sorted(lesions), results):
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
    return summary, list(zip(rows, results))


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    summary, pairs = measure(args.run_dir, args.data_dir)
    config = json.loads((args.run_dir / "config.json").read_text())
    report = {"machine": machine_header(0), "run": str(args.run_dir), "head": config.get("head"),
              "base": config.get("base"), "summary": summary}  # fmt: skip
    here = Path(__file__).resolve().parent
    (here / "explain.json").write_text(json.dumps(report, indent=2) + "\n")
    grid(pairs, here / "explain_examples.png")
    m, s = report["machine"], summary
    lines = [
        "# Does the heatmap point at the lesion?",
        "",
        f"`make bench-explain` on {m['cpu']} ({m['cores']} cores), {m['date'][:10]}: Grad-CAM (`toolkit explain`) of a "
        f"demo run ({report['base']}, {report['head']} head, offline VGG16 weights, trained with the defaults) on the "
        f"{s['images']} demo test images; a hit is a peak inside the lesion's circle (lesions.csv).",
        "",
        "| images | hit rate | median distance from the centre (radii) | " + " | ".join(s["by_class"]) + " |",
        "| --- | --- | --- |" + " --- |" * len(s["by_class"]),
        f"| {s['images']} | {100 * s['hit_rate']:.1f}% | {s['median_radii']:.2f} | "
        + " | ".join(f"{100 * c['hit_rate']:.1f}%" for c in s["by_class"].values())
        + " |",
        "",
        f"Target (issue #43): >= {100 * TARGET:.0f}%: {'met' if s['hit_rate'] >= TARGET else 'not met'}. Heatmaps from the "
        "exported artifacts are not built yet, so only Keras is measured. Examples: explain_examples.png.",
        "",
    ]
    (here / "EXPLAIN.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
