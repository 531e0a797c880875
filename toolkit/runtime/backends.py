"""Inference engines behind `Classifier`: ONNX Runtime, the LiteRT interpreter, Keras (and OpenVINO).

Each backend takes a uint8 NHWC batch of already-resized pixels and returns
float32 probabilities; layout (NCHW models), pixel scaling and TFLite
quantisation are handled here so callers never see them. None of this module
imports TensorFlow except the Keras backend, which only loads on request.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, MissingDependencyError, RuntimeModelError
from toolkit.runtime.onnx_external import ProtobufError, external_data_locations

DEVICES = ("auto", "cpu", "cuda")


class Backend:
    """A loaded model: `run(uint8 NHWC batch) -> float32 probabilities`."""

    kind: str = ""
    provider: str = "cpu"
    input_name: str = ""
    output_name: str = ""
    image_size: tuple[int, int] = (0, 0)
    layout: str = "NHWC"
    input_dtype: str = "float32"

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def metadata(self) -> dict[str, str]:
        return {}


def _scaled(batch: np.ndarray, pixel_scale: str) -> np.ndarray:
    x = batch.astype(np.float32)
    return x / np.float32(255.0) if pixel_scale == "0..1" else x


def _spatial_from_shape(shape: list, layout: str) -> tuple[int | None, int | None]:
    dims = list(shape)
    if len(dims) != 4:
        raise RuntimeModelError(f"expected a 4-D image input, got shape {shape}")
    h, w = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    as_int = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
    return as_int(h), as_int(w)


def _detect_layout(shape: list) -> str:
    if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    return "NHWC"


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int | None = None,
        pixel_scale: str = "0..255",
        allow_external_data: bool = False,
    ):
        check_single_onnxruntime()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = self._providers(ort, device)
        data = path.read_bytes()
        source = check_external_data(path, data, allow_external_data)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise RuntimeModelError(f"cannot load ONNX model {path.name}: {text[:200]}") from exc
        used = self.session.get_providers()
        if device == "cuda" and (not used or used[0] != "CUDAExecutionProvider"):
            raise DeviceError(
                f"device=cuda asked for, but ONNX Runtime runs {used[0] if used else 'nothing'} "
                "(install the gpu extra, onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA)"
            )
        self.provider = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.layout = _detect_layout(inp.shape)
        h, w = _spatial_from_shape(inp.shape, self.layout)
        self.image_size = (h or 0, w or 0)
        self.input_dtype = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}.get(inp.type, inp.type)
        self.pixel_scale = pixel_scale

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        if device not in DEVICES:
            raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {device}")
        available = ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise DeviceError(
                    "device=cuda asked for, but this onnxruntime has no CUDA provider "
                    "(install the gpu extra, onnxruntime-gpu, instead of onnxruntime)"
                )
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = batch if self.input_dtype == "uint8" else _scaled(batch, self.pixel_scale)
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


ONNXRUNTIME_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def installed_onnxruntimes() -> set[str]:
    """Which of the onnxruntime distributions are installed (they share one folder)."""
    import importlib.metadata as md

    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            md.version(name)
            found.add(name)
        except md.PackageNotFoundError:
            continue
    return found


def check_single_onnxruntime() -> None:
    """Refuse to run with both onnxruntime and onnxruntime-gpu: whichever installed last broke the other."""
    if installed_onnxruntimes() >= {"onnxruntime", "onnxruntime-gpu"}:
        raise DeviceError(
            f"onnxruntime and onnxruntime-gpu are both installed and overwrite each other; fix: {ONNXRUNTIME_FIX}"
        )


def check_external_data(path: Path, data: bytes, allow: bool) -> bytes | str:
    """What to hand ONNX Runtime: the bytes, or (external data allowed and safe) the path.

    External data is refused unless allowed, and then only as regular files that
    resolve inside the model's own folder: no absolute paths, no `..`, no
    symlinks pointing elsewhere.
    """
    try:
        locations = external_data_locations(data)
    except ProtobufError as exc:
        raise RuntimeModelError(f"cannot load ONNX model {path.name}: not a valid ONNX file ({exc})") from exc
    if not locations:
        return data  # from bytes: ONNX Runtime has no folder to resolve paths against
    if not allow:
        raise RuntimeModelError(
            f"{path.name} references external data files ({locations[0]}); pass --allow-external-data to permit "
            "files inside the model's folder"
        )
    folder = path.parent.resolve()
    for location in set(locations):
        candidate = Path(location)
        target = (folder / candidate).resolve()
        if candidate.is_absolute() or ".." in candidate.parts or not target.is_relative_to(folder):
            raise RuntimeModelError(f"{path.name}: external data '{location}' points outside the model's folder")
        if not target.is_file():
            raise RuntimeModelError(f"{path.name}: external data file '{location}' is missing")
    return str(path)


def _litert_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise RuntimeModelError("running .tflite models needs the ai-edge-litert package") from exc
    return Interpreter


class TFLiteBackend(Backend):
    """The LiteRT interpreter; not thread-safe, so calls are serialised."""

    kind = "tflite"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, pixel_scale: str = "0..255"):
        if device == "cuda":
            raise DeviceError("device=cuda is not available for .tflite models; use an ONNX model or device=cpu")
        if device not in DEVICES:
            raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {device}")
        Interpreter = _litert_interpreter()
        self.threads = threads or os.cpu_count() or 1
        try:
            # LiteRT may announce its XNNPACK delegate on stderr: that is the host's stream,
            # so the runtime leaves it alone (the CLI quiets it for its own output).
            self.interpreter = Interpreter(model_content=path.read_bytes(), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise RuntimeModelError(f"cannot load TFLite model {path.name}: {text[:200]}") from exc
        self._lock = threading.Lock()
        self._batch = None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_name, self.output_name = inp["name"], out["name"]
        shape = [int(d) for d in inp["shape"]]
        self.layout = _detect_layout(shape)
        h, w = _spatial_from_shape(shape, self.layout)
        self.image_size = (h or 0, w or 0)
        self.input_dtype = np.dtype(inp["dtype"]).name
        self.pixel_scale = pixel_scale

    def _quantize_input(self, batch: np.ndarray) -> np.ndarray:
        detail = self.interpreter.get_input_details()[0]
        dtype = np.dtype(detail["dtype"])
        if dtype == np.float32:
            return _scaled(batch, self.pixel_scale)
        scale, zero_point = detail["quantization"]
        if dtype == np.uint8 and scale == 1.0 and zero_point == 0 and self.pixel_scale == "0..255":
            return batch  # the toolkit's full-int8 models take raw pixels
        info = np.iinfo(dtype)
        q = np.round(_scaled(batch, self.pixel_scale) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize_output(self, y: np.ndarray) -> np.ndarray:
        detail = self.interpreter.get_output_details()[0]
        if np.dtype(detail["dtype"]) == np.float32:
            return y.astype(np.float32)
        scale, zero_point = detail["quantization"]
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            x = self._quantize_input(batch)
            if self.layout == "NCHW":
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            index = self.interpreter.get_input_details()[0]["index"]
            if self._batch != len(x):
                self.interpreter.resize_tensor_input(index, list(x.shape))
                self.interpreter.allocate_tensors()
                self._batch = len(x)
            self.interpreter.set_tensor(index, x)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.interpreter.get_output_details()[0]["index"])
            return self._dequantize_output(np.array(out))


class KerasBackend(Backend):
    """A `.keras` file through TensorFlow (only when TensorFlow is installed)."""

    kind = "keras"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, pixel_scale: str = "0..255"):
        if device == "cuda":
            raise DeviceError("device=cuda is only supported for ONNX models in the runtime")
        try:
            from toolkit.tf_setup import import_tensorflow

            tf = import_tensorflow(quiet=False)  # embedded in an app: never touch the host's descriptors
        except MissingDependencyError:  # an app that installed only the base runtime
            raise RuntimeModelError(
                ".keras models need TensorFlow (pip install 'toolkit[train]'); or use an exported .onnx or .tflite file"
            ) from None
        from toolkit.model import inference_function, load_keras_model

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # already initialised in this process
        self.model = load_keras_model(path)
        self._forward = inference_function(self.model)
        shape = list(self.model.input_shape)
        self.layout = "NHWC"
        self.image_size = (int(shape[1]), int(shape[2]))
        self.input_name = self.model.inputs[0].name
        self.output_name = self.model.outputs[0].name
        self.pixel_scale = pixel_scale
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._forward(_scaled(batch, self.pixel_scale)).astype(np.float32)


BACKENDS = {".onnx": OnnxBackend, ".tflite": TFLiteBackend, ".keras": KerasBackend}


def open_backend(
    path: Path, device: str, threads: int | None, pixel_scale: str, allow_external_data: bool = False
) -> Backend:
    suffix = path.suffix.lower()
    if suffix == ".xml":  # OpenVINO IR; its module imports openvino only when such a model is opened
        from toolkit.runtime.openvino_backend import OpenVinoBackend

        backend_class = OpenVinoBackend
    else:
        backend_class = BACKENDS.get(suffix)
    if backend_class is None:
        raise RuntimeModelError(f"unsupported model file {path.name}: expected .onnx, .tflite, .xml or .keras")
    if not path.is_file():
        raise RuntimeModelError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise RuntimeModelError(f"model file is empty: {path}")
    if backend_class is OnnxBackend:
        return OnnxBackend(path, device, threads, pixel_scale, allow_external_data)
    return backend_class(path, device=device, threads=threads, pixel_scale=pixel_scale)
