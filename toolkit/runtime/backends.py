"""Which backend opens which file: one module per backend, imported only when such a file is opened.

Importing the registry imports no inference engine: an app that ships only `.tflite`
files never loads ONNX Runtime, and OpenVINO stays an optional extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from toolkit.errors import RuntimeModelError
from toolkit.runtime.base import Backend

BACKENDS = {
    ".onnx": ("toolkit.runtime.onnx", "OnnxBackend"),
    ".tflite": ("toolkit.runtime.tflite", "TFLiteBackend"),
    ".xml": ("toolkit.runtime.openvino", "OpenVinoBackend"),
    ".keras": ("toolkit.runtime.keras", "KerasBackend"),
}


def open_backend(
    path: Path, device: str, threads: int | None, pixel_scale: str, allow_external_data: bool = False
) -> Backend:
    """The backend for `path`'s suffix, after the checks every file gets (exists, not empty)."""
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise RuntimeModelError(f"unsupported model file {path.name}: expected .onnx, .tflite, .xml or .keras")
    if not path.is_file():
        raise RuntimeModelError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise RuntimeModelError(f"model file is empty: {path}")
    module, name = BACKENDS[suffix]
    backend_class = getattr(importlib.import_module(module), name)
    if suffix == ".onnx":
        return backend_class(path, device, threads, pixel_scale, allow_external_data)
    return backend_class(path, device=device, threads=threads, pixel_scale=pixel_scale)
