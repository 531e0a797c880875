"""Speed-ups, the best rows, and the files a benchmark writes (bench.json, bench.csv, bench.png)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from toolkit.bench.types import BenchRecord
from toolkit.fileio import write_json_atomic, write_text_atomic, write_with


@dataclasses.dataclass
class BenchReport:
    machine: dict
    records: list[BenchRecord]
    out_dir: Path | None
    recommendation: dict | None = None  # the fastest artifact that passed its gate (`recommend`)

    def to_json(self) -> dict:
        return {"machine": self.machine, "records": self.records, "recommendation": self.recommendation}


RECOMMENDATION_BATCH = 1  # what an app embedding one model answers per request


def recommend(records: list[BenchRecord], batch: int = RECOMMENDATION_BATCH) -> dict | None:
    """The fastest exported artifact on this machine whose parity gate passed, at `batch` (None: none passed).

    Keras rows are references, not artifacts; files benchmarked without their run's
    manifest have no gate result and are never recommended.
    """
    passed = [r for r in records if r.batch == batch and r.backend != "keras" and r.gate_passed]
    if not passed:
        return None
    best = min(passed, key=lambda r: r.p50_ms)
    return {
        "name": best.name,
        "format": best.backend,
        "precision": best.precision,
        "provider": best.provider,
        "batch": batch,
        "p50_ms": best.p50_ms,
        "floor_precision": best.floor_precision,
        "floor_ms": best.floor_ms,
        "percent_of_floor": best.percent_of_peak,
        "accuracy": best.accuracy,
        "passed_gate": True,
    }


def fill_speedups(records: list[BenchRecord]) -> None:
    for r in records:
        ref = next(
            (k for k in records if k.backend == "keras" and k.precision == "float32" and k.batch == r.batch), None
        )
        r.speedup_vs_keras = ref.p50_ms / r.p50_ms if ref and r.p50_ms else None


def best_rows(records: list[BenchRecord], batch: int) -> tuple[BenchRecord | None, BenchRecord | None]:
    """Fastest row, and fastest row within 1 accuracy point of the most accurate one."""
    rows = [r for r in records if r.batch == batch]
    if not rows:
        return None, None
    fastest = min(rows, key=lambda r: r.p50_ms)
    top = max((r.accuracy or 0.0) for r in rows)
    accurate = [r for r in rows if (r.accuracy or 0.0) >= top - 0.01]
    return fastest, min(accurate, key=lambda r: r.p50_ms)


def write_outputs(report: BenchReport, out_dir: Path) -> None:
    import csv
    import io

    from toolkit.run_folder import BENCH_JSON  # here, not at import: the worker subprocess starts light

    write_json_atomic(out_dir / BENCH_JSON, report.to_json())
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(BenchRecord)]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in report.records:
        row = dataclasses.asdict(r)
        row["kernels"] = json.dumps(r.kernels) if r.kernels else ""  # a JSON object in one cell
        writer.writerow(row)
    write_text_atomic(out_dir / "bench.csv", buf.getvalue())
    plot_bench(report, out_dir / "bench.png")


def plot_bench(report: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in report.records})
    names = list(dict.fromkeys(r.name for r in report.records))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(batches), 1)
    for i, b in enumerate(batches):
        values = [next((r.per_image_ms for r in report.records if r.name == n and r.batch == b), 0) for n in names]
        ax1.barh(np.arange(len(names)) + i * width, values, height=width, label=f"batch {b}")
    ax1.set_yticks(np.arange(len(names)) + width * (len(batches) - 1) / 2, names)
    ax1.set_xlabel("p50 latency per image (ms)")
    ax1.legend()
    ax1.invert_yaxis()
    first = sorted((r for r in report.records if r.batch == batches[0]), key=lambda r: r.per_image_ms)
    for i, r in enumerate(first):
        accuracy = 100 * (r.accuracy or 0)
        ax2.scatter(r.per_image_ms, accuracy)
        # Equal accuracies are common; stagger the labels so they stay readable.
        ax2.annotate(
            r.name,
            (r.per_image_ms, accuracy),
            fontsize=7,
            xytext=(4, 6 + 9 * (i % 4)),
            textcoords="offset points",
            arrowprops={"arrowstyle": "-", "lw": 0.5},
        )
    lowest = min((100 * (r.accuracy or 0) for r in first), default=0)
    ax2.set_ylim(max(0, lowest - 3), 101.5)
    ax2.set_xlabel(f"p50 latency per image at batch {batches[0]} (ms)")
    ax2.set_ylabel("accuracy (%)")
    ax2.grid(alpha=0.3)
    fig.suptitle(
        f"{report.machine['cpu']}, {report.machine['threads']} threads"
        + (f", GPU {report.machine['gpu']}" if report.machine.get("gpu") else "")
    )
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
