"""The LiteRT interpreter for .tflite files: quantised input and output handled here, calls serialised."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, RuntimeModelError
from toolkit.facts import FACTS_FILE, FACTS_KEY
from toolkit.runtime.base import Backend, check_device, detect_layout, output_roles, scaled, spatial_from_shape
from toolkit.runtime.digest import tflite_digest


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
        check_device(device)
        Interpreter = _litert_interpreter()
        self.threads = threads or os.cpu_count() or 1
        try:
            # LiteRT may announce its XNNPACK delegate on stderr: that is the host's stream,
            # so the runtime leaves it alone (the CLI quiets it for its own output).
            content = path.read_bytes()
            self.interpreter = Interpreter(model_content=content, num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise RuntimeModelError(f"cannot load TFLite model {path.name}: {text[:200]}") from exc
        self._lock = threading.Lock()
        self._batch = None
        self._metadata = packed_facts(content)
        self._digest = tflite_digest(content)
        inp = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        self._probs, self._heatmap = output_roles([len(o["shape_signature"]) for o in outputs])
        self.input_name, self.output_name = inp["name"], outputs[self._probs]["name"]
        shape = [int(d) for d in inp["shape"]]
        self.layout = detect_layout(shape)
        h, w = spatial_from_shape(shape, self.layout)
        self.image_size = (h or 0, w or 0)
        self.input_dtype = np.dtype(inp["dtype"]).name
        self.pixel_scale = pixel_scale

    def _quantize_input(self, batch: np.ndarray) -> np.ndarray:
        detail = self.interpreter.get_input_details()[0]
        dtype = np.dtype(detail["dtype"])
        if dtype == np.float32:
            return scaled(batch, self.pixel_scale)
        scale, zero_point = detail["quantization"]
        if dtype == np.uint8 and scale == 1.0 and zero_point == 0 and self.pixel_scale == "0..255":
            return batch  # the toolkit's full-int8 models take raw pixels
        info = np.iinfo(dtype)
        q = np.round(scaled(batch, self.pixel_scale) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _output(self, position: int) -> np.ndarray:
        """The output at `position` among the output details, as float32 (dequantised)."""
        detail = self.interpreter.get_output_details()[position]
        y = np.array(self.interpreter.get_tensor(detail["index"]))
        if np.dtype(detail["dtype"]) == np.float32:
            return y.astype(np.float32)
        scale, zero_point = detail["quantization"]
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def _invoke(self, batch: np.ndarray) -> None:
        """Run the interpreter on `batch` (the caller holds the lock and reads the outputs)."""
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._invoke(batch)
            return self._output(self._probs)

    def run_heatmap(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._heatmap is None:
            return super().run_heatmap(batch)
        with self._lock:
            self._invoke(batch)
            return self._output(self._probs), self._output(self._heatmap)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)


def packed_facts(content: bytes) -> dict[str, str]:
    """The model-facts record packed into the TFLite metadata, read without MediaPipe.

    MediaPipe's metadata populator appends a model's associated files (labels.txt, and
    the toolkit's record) as a zip archive at the end of the flatbuffer, so the standard
    zip reader finds them; a file with no such archive simply has no record.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            if FACTS_FILE not in archive.namelist():
                return {}
            return {FACTS_KEY: archive.read(FACTS_FILE).decode("utf-8")}
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError):
        return {}
