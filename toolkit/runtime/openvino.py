"""OpenVINO IR (.xml + .bin) on the CPU, in the inference precision the IR asks for.

`toolkit export --format openvino` writes a bf16 IR; this backend reads the toolkit's
metadata from the IR's `rt_info` and compiles with that precision hint (bf16 on CPUs
with AVX512-BF16 or AMX; OpenVINO falls back to f32 elsewhere, and `precision` says
which one runs). The `openvino` package is optional for the runtime: only apps that
ship an IR install it (`pip install 'toolkit[openvino]'`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, RuntimeModelError
from toolkit.runtime.base import Backend, check_device
from toolkit.runtime.digest import openvino_digest

METADATA_SECTION = "toolkit"


def _openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise RuntimeModelError("running OpenVINO IR (.xml) needs the openvino package: pip install openvino") from exc
    return ov


def _metadata(model) -> dict[str, str]:
    if not model.has_rt_info([METADATA_SECTION]):
        return {}
    keys = model.get_rt_info([METADATA_SECTION]).astype(dict)
    return {key: model.get_rt_info([METADATA_SECTION, key]).astype(str) for key in keys}


class OpenVinoBackend(Backend):
    """A compiled IR; one infer request, calls serialised (as the LiteRT backend's are)."""

    kind = "openvino"
    provider = "cpu"
    layout = "NHWC"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, pixel_scale: str = "0..255"):
        if device == "cuda":
            raise DeviceError("device=cuda is not available for OpenVINO IR; use an ONNX model or device=cpu")
        check_device(device)
        if not path.with_suffix(".bin").is_file():
            raise RuntimeModelError(f"{path.name}: its weights file {path.with_suffix('.bin').name} is missing")
        ov = _openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise RuntimeModelError(f"cannot load OpenVINO model {path.name}: {text[:200]}") from exc
        self._metadata = _metadata(model)
        self._digest = openvino_digest(path)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if "inference_precision" in self._metadata:
            config["INFERENCE_PRECISION_HINT"] = self._metadata["inference_precision"]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        inp = model.inputs[0]
        self.input_name, self.output_name = inp.get_any_name(), model.outputs[0].get_any_name()
        dims = [d.get_length() if d.is_static else None for d in inp.get_partial_shape()]
        if len(dims) != 4:
            raise RuntimeModelError(f"expected a 4-D image input, got {inp.get_partial_shape()}")
        self.image_size = (dims[1] or 0, dims[2] or 0)
        self.input_dtype = inp.get_element_type().to_dtype().name
        self.pixel_scale = pixel_scale

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        if self.pixel_scale == "0..1":
            x /= np.float32(255.0)
        with self._lock:
            result = self._request.infer({0: x})
            return np.array(result[self.compiled.outputs[0]], dtype=np.float32)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)
