"""What every inference backend provides, and the small helpers they share.

A backend takes a uint8 NHWC batch of already-resized pixels and returns float32
probabilities; layout (NCHW models), pixel scaling and quantisation are the backend's
business, so `Classifier` never sees them. One module per backend (onnx, tflite,
openvino, keras) subclasses `Backend`; `backends.open_backend` picks one by file suffix.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, RuntimeModelError


class Device(StrEnum):
    """Where inference runs (cuda: ONNX Runtime's CUDA provider only)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PixelScale(StrEnum):
    """What a model made elsewhere expects: raw pixels, or pixels divided by 255."""

    raw = "0..255"
    unit = "0..1"


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

    def run_heatmap(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, the N x h x w x K heatmap output) of a heatmap artifact (`toolkit.runtime.heatmap`)."""
        raise RuntimeModelError(f"this {self.kind} model has no heatmap output")

    def metadata(self) -> dict[str, str]:
        """Key/value metadata the file carries (the model-facts record under `toolkit.facts.FACTS_KEY`)."""
        return {}

    def kernels(self) -> dict[str, int] | None:
        """The compute kernels the runtime chose, counted by name and precision (None: the runtime does not say)."""
        return None

    def content_digest(self) -> str | None:
        """The digest of what was loaded, the record excluded (`toolkit.runtime.digest`); None: not computed."""
        return getattr(self, "_digest", None)


def output_roles(ranks: list[int]) -> tuple[int, int | None]:
    """(index of the probabilities, index of the heatmap or None) among a model's outputs, by their ranks.

    A classifier's probabilities are its N x K output, a heatmap artifact's maps its N x h x w x K one;
    converters do not keep output order or names (TFLite sorts them), ranks survive every format.
    """
    probs = next((i for i, rank in enumerate(ranks) if rank == 2), 0)
    heatmap = next((i for i, rank in enumerate(ranks) if rank == 4 and i != probs), None)
    return probs, heatmap


def scaled(batch: np.ndarray, pixel_scale: str) -> np.ndarray:
    x = batch.astype(np.float32)
    return x / np.float32(255.0) if pixel_scale == "0..1" else x


def spatial_from_shape(shape: list, layout: str) -> tuple[int | None, int | None]:
    dims = list(shape)
    if len(dims) != 4:
        raise RuntimeModelError(f"expected a 4-D image input, got shape {shape}")
    h, w = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    as_int = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
    return as_int(h), as_int(w)


def detect_layout(shape: list) -> str:
    if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    return "NHWC"


def check_device(device: str) -> None:
    if device not in tuple(Device):
        raise DeviceError(f"device must be one of {', '.join(Device)}, got {device}")


def model_files(path: Path) -> list[Path]:
    """Every file a model consists of: an IR's .xml and its .bin, any other model alone."""
    if path.suffix.lower() == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path]


def model_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path) if p.is_file())
