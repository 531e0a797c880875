"""Benchmark every artifact of a run side by side: latency, throughput, memory, size, accuracy.

Each backend runs in its own fresh subprocess (`python -m toolkit.bench WORKER_SPEC`) so one
runtime's thread pools, allocator and caches cannot skew another's numbers. Inputs are the run's
real validation images, never zeros.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.fileio import write_json_atomic, write_text_atomic, write_with

DEFAULT_BATCHES = (1, 8)


class BenchError(ToolkitError):
    """A benchmark could not be set up or a backend failed to run."""


@dataclasses.dataclass
class BenchTarget:
    name: str  # e.g. "onnx float32 (cpu)"
    backend: str  # keras | onnx | tflite
    path: str
    precision: str
    device: str = "cpu"


@dataclasses.dataclass
class BenchRecord:
    name: str
    backend: str
    precision: str
    requested_device: str
    provider: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    per_image_ms: float
    throughput_ips: float
    load_s: float
    peak_rss_mb: float
    size_mb: float
    accuracy: float | None
    speedup_vs_keras: float | None = None
    gflops: float | None = None  # achieved, from the model's FLOPs and the p50 latency
    percent_of_peak: float | None = None  # of the float32 matrix peak measured in the same run


@dataclasses.dataclass
class BenchOptions:
    formats: list[str] | None = None  # subset of target names' backends/precisions, e.g. ["onnx", "tflite-int8"]
    batches: tuple[int, ...] = DEFAULT_BATCHES
    warmup: int = 3
    runs: int = 20
    seconds: float | None = None
    threads: int | None = None
    data_dir: str | None = None
    cuda: bool = True


VGG16_CONV_CHANNELS = (
    (3, 64),
    (64, 64),
    "pool",
    (64, 128),
    (128, 128),
    "pool",
    (128, 256),
    (256, 256),
    (256, 256),
    "pool",
    (256, 512),
    (512, 512),
    (512, 512),
    "pool",
    (512, 512),
    (512, 512),
    (512, 512),
    "pool",
)


def vgg16_classifier_flops(image_size: int, num_classes: int, head: str = "flatten") -> float:
    """Floating-point operations (2 per multiply-add) of one forward pass: 30.7 GFLOP at 224 px."""
    side, flops = image_size, 0.0
    for layer in VGG16_CONV_CHANNELS:
        if layer == "pool":
            side //= 2
            continue
        c_in, c_out = layer
        flops += 2.0 * side * side * 9 * c_in * c_out
    features = side * side * 512 if head == "flatten" else 512
    return flops + 2.0 * features * num_classes


MATMUL_SIZE = 4096


def measure_matmul_peak_gflops(size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """Float32 matrix-multiply rate of this machine (numpy sgemm), the ceiling for a dense CNN."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def machine_header(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        gpu = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in ("toolkit", "tensorflow", "keras", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def discover_targets(run_dir: Path, cuda: bool) -> list[BenchTarget]:
    targets = []
    if (run_dir / "best.keras").is_file():
        targets.append(BenchTarget("keras float32", "keras", str(run_dir / "best.keras"), "float32"))
        from toolkit.train import cpu_supports_bf16

        if cpu_supports_bf16():  # native bf16 (AVX512_BF16/AMX); emulated bf16 would only be slower
            targets.append(BenchTarget("keras bf16", "keras", str(run_dir / "best.keras"), "bf16"))
    manifest = run_dir / "export" / "manifest.json"
    if manifest.is_file():
        for a in json.loads(manifest.read_text())["artifacts"]:
            path = str(run_dir / "export" / a["path"])
            targets.append(BenchTarget(f"{a['format']} {a['precision']}", a["format"], path, a["precision"]))
            if cuda and a["format"] == "onnx":
                targets.append(
                    BenchTarget(f"{a['format']} {a['precision']} (cuda)", "onnx", path, a["precision"], "cuda")
                )
    return targets


def targets_from_files(paths: list[Path], cuda: bool) -> list[BenchTarget]:
    targets = []
    for p in paths:
        backend = {".keras": "keras", ".onnx": "onnx", ".tflite": "tflite"}.get(p.suffix.lower())
        if backend is None:
            raise BenchError(f"cannot benchmark {p.name}: expected .keras, .onnx or .tflite")
        targets.append(BenchTarget(p.name, backend, str(p), "unknown"))
        if cuda and backend == "onnx":
            targets.append(BenchTarget(f"{p.name} (cuda)", backend, str(p), "unknown", "cuda"))
    return targets


def _selected(target: BenchTarget, formats: list[str] | None) -> bool:
    if not formats:
        return True
    keys = {target.backend, f"{target.backend}-{target.precision}", target.name}
    return bool(keys & set(formats))


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


# --------------------------------------------------------------------------- worker (subprocess)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _keras_runner(path: str, threads: int, precision: str = "float32"):
    from toolkit.tf_setup import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from toolkit.model import load_keras_model

    model = load_keras_model(path)
    shape = model.input_shape
    if precision == "bf16":
        import keras

        from toolkit.model import head_part
        from toolkit.train import build_feature_extractor

        image = keras.Input(shape[1:], name="image")
        model = keras.Model(image, head_part(model)(build_feature_extractor(model, "bf16")(image)))

    # A tf.function with an input signature: the fastest TF path here (model.predict
    # has a heavy per-call tail at batch 1).
    @tf.function(input_signature=[tf.TensorSpec((None, *shape[1:]), tf.float32)])
    def forward(x):
        return model(x, training=False)

    return (lambda batch: forward(tf.constant(batch.astype(np.float32))).numpy()), "cpu"


def run_worker(spec: dict) -> list[dict]:
    target = BenchTarget(**spec["target"])
    threads = spec["threads"]
    data = np.load(spec["images"], allow_pickle=False)
    images, labels = data["images"], data["labels"]
    t0 = time.perf_counter()
    if target.backend == "keras":
        run, provider = _keras_runner(target.path, threads, target.precision)
    else:
        from toolkit.runtime import load

        clf = load(
            target.path, device=target.device if target.device == "cpu" else "auto", threads=threads, verify=False
        )
        run, provider = clf.backend.run, clf.provider
    load_s = time.perf_counter() - t0
    probs = np.concatenate([run(images[i : i + 16]) for i in range(0, len(images), 16)])
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else None
    records = []
    for batch in spec["batches"]:
        batches = [images[(i * batch + np.arange(batch)) % len(images)] for i in range(8)]
        for i in range(spec["warmup"]):
            run(batches[i % len(batches)])
        times: list[float] = []
        deadline = time.perf_counter() + spec["seconds"] if spec["seconds"] else None
        i = 0
        while (deadline is None and i < spec["runs"]) or (deadline is not None and time.perf_counter() < deadline):
            x = batches[i % len(batches)]
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
            i += 1
        p50 = _percentile(times, 50) * 1000
        records.append(
            dataclasses.asdict(
                BenchRecord(
                    name=target.name,
                    backend=target.backend,
                    precision=target.precision,
                    requested_device=target.device,
                    provider=provider,
                    batch=batch,
                    runs=len(times),
                    p50_ms=p50,
                    p90_ms=_percentile(times, 90) * 1000,
                    p99_ms=_percentile(times, 99) * 1000,
                    per_image_ms=p50 / batch,
                    throughput_ips=batch * len(times) / sum(times),
                    load_s=load_s,
                    peak_rss_mb=_peak_rss_mb(),
                    size_mb=os.path.getsize(target.path) / 1e6,
                    accuracy=accuracy,
                )
            )
        )
    return records


# --------------------------------------------------------------------------- driver


@dataclasses.dataclass
class BenchReport:
    machine: dict
    records: list[BenchRecord]
    out_dir: Path | None


def _bench_images(run_dir: Path | None, data_dir: str | None, image_size: int, labels: list[str] | None):
    from toolkit.data import load_dataset, load_labelled_folder

    if data_dir:
        _, arrays = load_labelled_folder(data_dir, (image_size, image_size), labels)
        return arrays.images, arrays.labels
    if run_dir is None:
        raise BenchError("model files without a run folder need --data DIR (a labelled folder)")
    config = json.loads((run_dir / "config.json").read_text())
    _, _, val, _ = load_dataset(
        config["data_dir"],
        image_size,
        config.get("val_split", 0.2),
        config.get("seed", 0),
        config.get("cache_dir") or run_dir / "cache",
    )
    return np.asarray(val.images), val.labels


def run_bench(
    run_dir: Path | None,
    model_files: list[Path],
    options: BenchOptions,
    progress: Callable[[str, int, int], None] | None = None,
) -> BenchReport:
    threads = options.threads or os.cpu_count() or 1
    cuda = options.cuda and _cuda_available()
    if run_dir is not None:
        if not run_dir.is_dir():
            raise BenchError(f"run folder not found: {run_dir}")
        targets = discover_targets(run_dir, cuda)
        labels = json.loads((run_dir / "labels.json").read_text())
        image_size = json.loads((run_dir / "config.json").read_text())["image_size"]
    else:
        targets = targets_from_files(model_files, cuda)
        from toolkit.runtime import load

        probe = next((t for t in targets if t.backend != "keras"), None)
        if probe is None:
            raise BenchError("benchmarking a lone .keras file needs its run folder")
        clf = load(probe.path, device="cpu", verify=False)
        labels, image_size = clf.labels, clf.image_size[0]
    targets = [t for t in targets if _selected(t, options.formats)]
    if not targets:
        raise BenchError("nothing to benchmark (no best.keras or exports, or --formats matched none)")
    images, image_labels = _bench_images(run_dir, options.data_dir, image_size, labels)
    records: list[BenchRecord] = []
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
        data_path = Path(tmp) / "images.npz"
        np.savez(data_path, images=images, labels=image_labels)
        for index, target in enumerate(targets):
            if progress:
                progress(target.name, index, len(targets))
            spec = {
                "target": dataclasses.asdict(target),
                "threads": threads,
                "images": str(data_path),
                "batches": list(options.batches),
                "warmup": options.warmup,
                "runs": options.runs,
                "seconds": options.seconds,
            }
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads))
            proc = subprocess.run(
                [sys.executable, "-m", "toolkit.bench", json.dumps(spec)], capture_output=True, text=True, env=env
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
            if proc.returncode != 0 or not lines:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise BenchError(f"{target.name} failed in its subprocess: {reason}")
            records += [BenchRecord(**r) for r in json.loads(lines[-1])]
    _fill_speedups(records)
    machine = machine_header(threads)
    machine["fp32_matmul_peak_gflops"] = measure_matmul_peak_gflops()
    head = json.loads((run_dir / "config.json").read_text()).get("head", "flatten") if run_dir else "flatten"
    machine["model_gflop_per_image"] = vgg16_classifier_flops(image_size, len(labels), head) / 1e9
    machine["fp32_matmul_size"] = MATMUL_SIZE
    machine["fp32_floor_ms"] = 1000 * machine["model_gflop_per_image"] / machine["fp32_matmul_peak_gflops"]
    for r in records:
        r.gflops = machine["model_gflop_per_image"] * r.batch / (r.p50_ms / 1000.0)
        r.percent_of_peak = 100.0 * r.gflops / machine["fp32_matmul_peak_gflops"]
    out_dir = run_dir / "bench" if run_dir is not None else None
    report = BenchReport(machine, records, out_dir)
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report


def _fill_speedups(records: list[BenchRecord]) -> None:
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

    write_json_atomic(out_dir / "bench.json", {"machine": report.machine, "records": report.records})
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(BenchRecord)]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in report.records)
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


if __name__ == "__main__":
    # Worker mode: one backend, one fresh process; the result is one JSON line on stdout.
    result = run_worker(json.loads(sys.argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
