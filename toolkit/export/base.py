"""What every export format provides, and the context they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class ExportContext:
    """Everything a converter needs, computed once per `toolkit export`."""

    model: Any  # the Keras inference model (no augmentation)
    export_dir: Path
    labels: list[str]
    image_size: int
    calibration_images: np.ndarray  # uint8 NxHxWx3 from the training set
    opset: int
    source_sha256: str
    decision: dict | None = None  # binary models: {"positive_class", "threshold", "criterion"}
    calibration: dict = dataclasses.field(default_factory=lambda: {"method": "minmax", "images": 0})
    scratch: dict[str, Path] = dataclasses.field(default_factory=dict)  # shared intermediates


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One artifact kind: convert into a temporary path, and say what to try on failure."""

    format: str  # "onnx" or "tflite"
    precision: str  # "float32", "float16", "dynamic", "int8"
    filename: str
    convert: Callable[[ExportContext, Path], None]
    describe_io: Callable[[Path], dict]
    advice: str
    converter: str  # the converting library, for the manifest's versions

    @property
    def key(self) -> str:
        return f"{self.format}-{self.precision}"
