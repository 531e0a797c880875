"""A `.keras` file through TensorFlow, for apps and benchmarks that have it (the base install does not)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, MissingDependencyError, RuntimeModelError
from toolkit.runtime.base import Backend, scaled


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
        from toolkit.keras_io import inference_function, load_keras_model

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
            return self._forward(scaled(batch, self.pixel_scale)).astype(np.float32)
