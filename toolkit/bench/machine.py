"""The machine a benchmark ran on and the model's FLOPs (its matrix peaks: peaks.py)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from toolkit.hardware import cpu_instruction_sets
from toolkit.versions import package_versions

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
    features = {"flatten": side * side * 512, "gap+gmp": 2 * 512}.get(head, 512)
    return flops + 2.0 * features * num_classes


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
    versions = package_versions(("tensorflow", "keras", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "numpy"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "instruction_sets": cpu_instruction_sets(),
        "threads": threads,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
