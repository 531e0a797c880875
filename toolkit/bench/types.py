"""The records a benchmark produces and the options it takes."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

DEFAULT_BATCHES = (1, 8)


class BenchFormat(StrEnum):
    """The model formats bench runs (keras: the run's best.keras, where TensorFlow is installed)."""

    keras = "keras"
    onnx = "onnx"
    tflite = "tflite"
    openvino = "openvino"


def parse_batches(text: str) -> tuple[int, ...]:
    """`--batch-size 1,8` -> (1, 8); anything else is a one-line BenchError."""
    from toolkit.errors import BenchError

    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise BenchError(f"--batch-size takes comma-separated integers, got {text}") from None
    if not batches or min(batches) < 1:
        raise BenchError("--batch-size values must be at least 1")
    return batches


@dataclasses.dataclass
class BenchTarget:
    name: str  # e.g. "onnx float32 (cpu)"
    backend: str  # keras | onnx | tflite
    path: str
    precision: str
    device: str = "cpu"
    gate_passed: bool | None = None  # the artifact's parity gate in the run's manifest (None: no manifest, Keras)


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
    accuracy: float | None  # at the model's operating point, as `toolkit evaluate` scores it
    balanced_accuracy: float | None = None
    speedup_vs_keras: float | None = None
    gflops: float | None = None  # achieved, from the model's FLOPs and the p50 latency
    percent_of_peak: float | None = None  # of its own precision's matrix peak (peaks.py), measured in the same run
    floor_precision: str | None = None  # fp32 | bf16 | int8: whose peak bounds this row
    floor_ms: float | None = None  # per image, the model's FLOPs at that peak
    gate_passed: bool | None = None
    kernels: dict[str, int] | None = None  # OpenVINO rows: the compute kernels it chose, counted (runtime model)


@dataclasses.dataclass
class BenchOptions:
    """What `toolkit bench` is asked to do: the only home of its defaults (the CLI reads them from here)."""

    formats: list[str] | None = None  # keras, onnx, tflite (None: all)
    precisions: list[str] | None = None  # float32, float16, dynamic, int8, bf16 (None: all)
    batches: tuple[int, ...] = DEFAULT_BATCHES
    warmup: int = 3
    runs: int = 20
    seconds: float | None = None
    threads: int | None = None
    data_dir: str | None = None
    wait: bool = False  # another bench holds RUN/bench: wait for it instead of failing
    verify: bool = True  # each model's content digest and manifest sha256, as `toolkit predict` checks them
    device: str = "auto"  # runtime.Device; auto: CPU rows plus CUDA rows where ONNX Runtime has CUDA; cpu; cuda
