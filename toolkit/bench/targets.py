"""What to benchmark: a run's Keras model and exports, or model files given by path."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.bench.types import BenchTarget
from toolkit.errors import BenchError
from toolkit.hardware import cpu_supports_bf16


def discover_targets(run_dir: Path, cuda: bool) -> list[BenchTarget]:
    targets = []
    if (run_dir / "best.keras").is_file():
        targets.append(BenchTarget("keras float32", "keras", str(run_dir / "best.keras"), "float32"))
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


def selected(target: BenchTarget, formats: list[str] | None) -> bool:
    if not formats:
        return True
    keys = {target.backend, f"{target.backend}-{target.precision}", target.name}
    return bool(keys & set(formats))


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()
