"""The machine a benchmark ran on (its matrix peaks: peaks.py; the model's FLOPs: its base's record)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from toolkit.hardware import cpu_instruction_sets
from toolkit.versions import package_versions


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
