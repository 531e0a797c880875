"""What every export format provides, and the context they share."""

from __future__ import annotations

import dataclasses
import tempfile
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
    float_layers: list[str] = dataclasses.field(default_factory=list)  # int8: nodes kept in float (the fix)
    scratch: dict[str, Path] = dataclasses.field(default_factory=dict)  # shared intermediates


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # int8 activation ranges, both paths


def calibration_key(calibration: dict) -> str:
    """A file-name-safe key for a calibration's ranges (method and percentile; the image set is fixed per export)."""
    return "-".join(str(v) for k, v in sorted(calibration.items()) if k != "images")


def work_dir(ctx: ExportContext) -> Path:
    """A scratch folder for this export's intermediates (removed when the export ends)."""
    if "work" not in ctx.scratch:
        ctx.scratch["work"] = Path(tempfile.mkdtemp(prefix="toolkit-export-"))
    return ctx.scratch["work"]


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
    # int8 formats: groups of layer names, worst quantised first (what the automatic fix keeps in float)
    rank_layers: Callable[[ExportContext, np.ndarray], list[list[str]]] | None = None

    @property
    def key(self) -> str:
        return f"{self.format}-{self.precision}"
