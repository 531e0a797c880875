"""Cold start of `toolkit predict` on one image: process start, model load, decode, inference.

Embedding apps pay this on every launch, so it is measured as whole-process wall time
(median of several fresh processes), for each exported format of a run.
Usage: python benchmarks/predict_cold_start.py RUN_DIR [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cold_start_seconds(model: Path, image: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "toolkit.cli", "predict", str(model), str(image), "--json"],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    manifest = json.loads((args.run_dir / "export" / "manifest.json").read_text())
    data_dir = Path(json.loads((args.run_dir / "config.json").read_text())["data_dir"])
    image = sorted(data_dir.rglob("*.jpg"))[0]
    rows = []
    for a in manifest["artifacts"]:
        times = cold_start_seconds(args.run_dir / "export" / a["path"], image, args.repeats)
        rows.append(
            {
                "artifact": f"{a['format']} {a['precision']}",
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
        print(
            f"{rows[-1]['artifact']:16s} median {rows[-1]['median_s']:.3f} s (min {min(times):.3f}, max {max(times):.3f})"
        )
    out = args.run_dir / "bench" / "cold_start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
