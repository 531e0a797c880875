"""Benchmark every artifact of a run side by side: latency, throughput, memory, size, accuracy.

    types.py    BenchTarget, BenchRecord, BenchOptions
    targets.py  what to benchmark (a run folder, or model files)
    worker.py   one backend timed in a fresh subprocess
    machine.py  the machine header (the model FLOPs: its base record, toolkit.bases)
    peaks.py    the matrix peak per precision (fp32, bf16, int8), each row's floor
    report.py   speed-ups, best rows, the recommendation, bench.json/csv/png

Inputs are the run's real validation images, never zeros.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit.bases import DEFAULT_BASE, get_base
from toolkit.bench.machine import machine_header
from toolkit.bench.peaks import floor_precision, measure_peaks, peak_size
from toolkit.bench.report import BenchReport, best_rows, fill_speedups, recommend, write_outputs
from toolkit.bench.targets import cuda_available, discover_targets, selected, targets_from_files
from toolkit.bench.types import DEFAULT_BATCHES, BenchOptions, BenchRecord, BenchTarget
from toolkit.bench.worker import run_worker
from toolkit.errors import BenchError
from toolkit.fileio import folder_lock
from toolkit.progress import phase

if TYPE_CHECKING:  # the worker subprocess imports this package: keep its start light
    from toolkit.run_folder import RunFolder

__all__ = [
    "DEFAULT_BATCHES",
    "BenchError",
    "BenchOptions",
    "BenchRecord",
    "BenchReport",
    "BenchTarget",
    "best_rows",
    "run_bench",
    "run_worker",
]


@dataclasses.dataclass
class BenchPlan:
    """What to time and on which images."""

    targets: list[BenchTarget]
    labels: list[str]
    image_size: int
    head: str
    run: RunFolder | None = None  # the run folder, when benchmarking one
    base: str = DEFAULT_BASE  # its registry record counts the model's FLOPs


def _plan_for_run(run_dir: Path, cuda: bool) -> BenchPlan:
    from toolkit.run_folder import load_run

    run = load_run(run_dir, need_model=False)
    targets = discover_targets(run.path, cuda)
    return BenchPlan(targets, run.labels, run.image_size, run.config.get("head", "flatten"), run, run.base)


def _plan_for_files(files: list[Path], cuda: bool, verify: bool) -> BenchPlan:
    from toolkit.runtime import load

    targets = targets_from_files(files, cuda)
    probe = next((t for t in targets if t.backend != "keras"), None)
    if probe is None:
        raise BenchError("benchmarking a lone .keras file needs its run folder")
    clf = load(probe.path, device="cpu", verify=verify)
    return BenchPlan(targets, clf.labels, clf.image_size[0], "flatten", base=clf.info.base)


def _bench_images(plan: BenchPlan, data_dir: str | None):
    """A labelled folder given with --data, or the run's own validation images."""
    from toolkit.data import load_labelled_folder

    if data_dir:
        _, arrays = load_labelled_folder(data_dir, (plan.image_size, plan.image_size), plan.labels)
        return arrays.images, arrays.labels
    if plan.run is None:
        raise BenchError("model files without a run folder need --data DIR (a labelled folder)")
    val = plan.run.load_data().val
    return np.asarray(val.images), val.labels


def _run_in_subprocess(
    target: BenchTarget, data_path: Path, options: BenchOptions, threads: int, plan: BenchPlan
) -> list[BenchRecord]:
    spec = {
        "target": dataclasses.asdict(target),
        "threads": threads,
        "images": str(data_path),
        "batches": list(options.batches),
        "warmup": options.warmup,
        "runs": options.runs,
        "seconds": options.seconds,
        "verify": options.verify,
        "labels": plan.labels,
        "decision": plan.run.decision.to_json() if plan.run is not None and plan.run.decision else None,
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.bench.worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{target.name} failed in its subprocess: {reason}")
    return [BenchRecord(**r) for r in json.loads(lines[-1])]


def _model_gflop(plan: BenchPlan) -> float | None:
    """GFLOP per image, counted on the base's graph: None where Keras is absent (the TF-free install benchmarks
    model files without floors)."""
    try:
        return get_base(plan.base).flops(plan.image_size, len(plan.labels), plan.head) / 1e9
    except ImportError:
        return None


def _machine(threads: int, plan: BenchPlan, records: list[BenchRecord]) -> dict:
    """The machine header, its matrix peak per precision, and each record's share of its own precision's peak."""
    machine = machine_header(threads)
    with phase("measuring the matrix peaks (fp32, bf16, int8)"):
        machine["peaks"] = measure_peaks(threads, peak_size())
    gflop = _model_gflop(plan)
    machine["model_gflop_per_image"] = gflop
    machine["peak_matmul_size"] = peak_size()
    peaks = machine["peaks"]
    machine["floor_ms"] = {p: 1000 * gflop / peak["gflops"] for p, peak in peaks.items()} if gflop else {}
    machine["fp32_matmul_peak_gflops"] = peaks["fp32"]["gflops"]
    machine["fp32_floor_ms"] = machine["floor_ms"].get("fp32")
    for r in records:
        wanted = floor_precision(r.precision)
        r.floor_precision = wanted if wanted in peaks else "fp32"  # no native bf16: its fp32 peak
        if not gflop:
            continue
        r.gflops = gflop * r.batch / (r.p50_ms / 1000.0)
        r.floor_ms = machine["floor_ms"][r.floor_precision]
        r.percent_of_peak = 100.0 * r.gflops / machine["peaks"][r.floor_precision]["gflops"]
    return machine


def run_bench(
    run_dir: Path | None,
    model_files: list[Path],
    options: BenchOptions,
) -> BenchReport:
    """Time every selected target in its own subprocess; write bench.json/csv/png into a run folder."""
    threads = options.threads or os.cpu_count() or 1
    cuda = options.device != "cpu" and cuda_available()
    if options.device == "cuda" and not cuda:
        raise BenchError(
            "--device cuda: this onnxruntime has no CUDA provider (install the gpu extra on a GPU machine)"
        )
    plan = _plan_for_run(run_dir, cuda) if run_dir is not None else _plan_for_files(model_files, cuda, options.verify)
    targets = [t for t in plan.targets if selected(t, options.formats, options.precisions, options.device)]
    if not targets:
        raise BenchError("nothing to benchmark (no best.keras or exports, or --format/--precision matched none)")
    images, image_labels = _bench_images(plan, options.data_dir)
    records: list[BenchRecord] = []
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
        data_path = Path(tmp) / "images.npz"
        np.savez(data_path, images=images, labels=image_labels)
        for target in targets:
            with phase(f"benchmarking {target.name}"):
                records += _run_in_subprocess(target, data_path, options, threads, plan)
    fill_speedups(records)
    from toolkit.run_folder import BENCH_DIR

    out_dir = run_dir / BENCH_DIR if run_dir is not None else None
    report = BenchReport(_machine(threads, plan, records), records, out_dir)
    report.recommendation = recommend(records)
    if out_dir is not None:
        with folder_lock(out_dir, options.wait):
            write_outputs(report, out_dir)
        from toolkit.card import write_model_card

        write_model_card(run_dir)  # batch-1 latencies into the card
    return report
