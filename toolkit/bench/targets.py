"""What to benchmark: a run's Keras model and exports, or model files given by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toolkit.bench.types import BenchTarget
from toolkit.errors import BenchError
from toolkit.hardware import cpu_supports_bf16
from toolkit.layout import artifact_name
from toolkit.run_folder import BEST, EXPORT_DIR, MANIFEST, manifest_artifacts


def discover_targets(run_dir: Path, cuda: bool) -> list[BenchTarget]:
    targets = []
    if (run_dir / BEST).is_file() and importlib.util.find_spec("tensorflow") is not None:
        targets.append(BenchTarget("keras float32", "keras", str(run_dir / BEST), "float32"))
        if cpu_supports_bf16():  # native bf16 (AVX512_BF16/AMX); emulated bf16 would only be slower
            targets.append(BenchTarget("keras bf16", "keras", str(run_dir / BEST), "bf16"))
    manifest = run_dir / EXPORT_DIR / MANIFEST
    if manifest.is_file():
        for a in manifest_artifacts(manifest):
            if a["format"] == "web":
                continue  # the same ONNX file as the onnx row, run by a browser rather than here
            path = str(_inside_export(run_dir, a["path"]))
            passed = bool(a.get("parity", {}).get("passed"))
            name = artifact_name(a)
            targets.append(BenchTarget(name, a["format"], path, a["precision"], gate_passed=passed))
            if cuda and a["format"] == "onnx":
                targets.append(BenchTarget(f"{name} (cuda)", "onnx", path, a["precision"], "cuda", passed))
    return targets


def _inside_export(run_dir: Path, name: str) -> Path:
    """A manifest path, which must name a file inside RUN/export (a received manifest is not trusted)."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) != 1:
        raise BenchError(f"manifest path {name!r} points outside {run_dir / 'export'}; refusing it")
    return run_dir / EXPORT_DIR / path


def targets_from_files(paths: list[Path], cuda: bool) -> list[BenchTarget]:
    targets = []
    for p in paths:
        backend = {".keras": "keras", ".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}.get(p.suffix.lower())
        if backend is None:
            raise BenchError(f"cannot benchmark {p.name}: expected .keras, .onnx, .tflite or .xml (OpenVINO)")
        targets.append(BenchTarget(p.name, backend, str(p), "unknown"))
        if cuda and backend == "onnx":
            targets.append(BenchTarget(f"{p.name} (cuda)", backend, str(p), "unknown", "cuda"))
    return targets


def selected(target: BenchTarget, formats: list[str] | None, precisions: list[str] | None, device: str) -> bool:
    """Whether --format, --precision and --device keep this row."""
    if formats and target.backend not in formats:
        return False
    if precisions and target.precision not in precisions:
        return False
    return device == "auto" or target.device == device


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()
