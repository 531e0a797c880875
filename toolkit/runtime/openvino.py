"""OpenVINO IR (.xml + .bin) on the CPU, in the inference precision the IR asks for.

`toolkit export --format openvino` writes a bf16 IR; this backend reads the toolkit's
metadata from the IR's `rt_info` and compiles with that precision hint (bf16 on CPUs
with AVX512-BF16 or AMX; OpenVINO falls back to f32 elsewhere, and `precision` says
which one runs). The `openvino` package is optional for the runtime: only apps that
ship an IR install it (`pip install 'toolkit[openvino]'`).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, RuntimeModelError
from toolkit.runtime.base import Backend, check_device, output_roles
from toolkit.runtime.digest import openvino_digest

METADATA_SECTION = "toolkit"
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


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


def kernel_summary(compiled) -> dict[str, int]:
    """The compute primitives the CPU plugin chose, counted: {"Convolution brgconv_avx512_amx_I8 u8": 13, ...}.

    Read from the compiled model's runtime graph (layer type, primitive type and
    runtime precision of each executable node): the kernel name says which instruction
    set ran (`_amx_`, `avx512`, `jit_gemm_bf16` for emulated bf16) and the precision
    whether a layer really ran in int8 or bf16, which a latency alone cannot tell.
    """
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer in COMPUTE_LAYERS:
            counts[f"{layer} {info['primitiveType'].astype(str)} {info['runtimePrecision'].astype(str)}"] += 1
    return dict(counts)


def _supported_precision(core, wanted: str) -> str:
    """`wanted`, or f32 where the CPU has no native bf16/f16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks it).

    Asked explicitly for bf16, the CPU plugin emulates it on AVX-512 CPUs without
    AVX512_BF16 or AMX: slower than f32 and with bf16's rounding, for nothing. The IR's
    own runtime option is only a default, which the plugin drops there itself.
    """
    if wanted in ("bf16", "f16"):
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if wanted.upper() not in capabilities:
            return "f32"
    return wanted


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
            config["INFERENCE_PRECISION_HINT"] = _supported_precision(core, self._metadata["inference_precision"])
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        # An NNCF int8 IR runs its quantized layers in int8 (VNNI/AMX) whatever the hint says for the rest.
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = "int8" if self._metadata.get("quantization") == "int8" else hint
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        inp = model.inputs[0]
        probs, heatmap = output_roles([len(o.get_partial_shape()) for o in self.compiled.outputs])
        self._probs = self.compiled.outputs[probs]
        self._heatmap = self.compiled.outputs[heatmap] if heatmap is not None else None
        self.input_name, self.output_name = inp.get_any_name(), self._probs.get_any_name()
        dims = [d.get_length() if d.is_static else None for d in inp.get_partial_shape()]
        if len(dims) != 4:
            raise RuntimeModelError(f"expected a 4-D image input, got {inp.get_partial_shape()}")
        self.image_size = (dims[1] or 0, dims[2] or 0)
        self.input_dtype = inp.get_element_type().to_dtype().name
        self.pixel_scale = pixel_scale

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = batch.astype(np.float32)
        if self.pixel_scale == "0..1":
            x /= np.float32(255.0)
        with self._lock:
            result = self._request.infer({0: x})
            probs = np.array(result[self._probs], dtype=np.float32)
            return probs, None if self._heatmap is None else np.array(result[self._heatmap], dtype=np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._infer(batch)[0]

    def run_heatmap(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._heatmap is None:
            return super().run_heatmap(batch)
        return self._infer(batch)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def kernels(self) -> dict[str, int]:
        return kernel_summary(self.compiled)
