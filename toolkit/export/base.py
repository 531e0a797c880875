"""What every export format provides, and the context they share."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.facts import ModelFacts


class ExportTarget(StrEnum):
    """`--format`: every model file (all), one format, or the browser bundle (web, by name only)."""

    all = "all"
    onnx = "onnx"
    tflite = "tflite"
    openvino = "openvino"
    web = "web"


class Precision(StrEnum):
    """An artifact's numeric precision (bf16: the OpenVINO IR, or in bench the Keras model's base in bfloat16)."""

    float32 = "float32"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"
    bf16 = "bf16"


class Calibration(StrEnum):
    """How int8 activation ranges are chosen from the calibration images (both int8 paths)."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


@dataclasses.dataclass
class AccuracyControl:
    """What an accuracy-aware quantizer (NNCF's) validates on: labelled images, the decision rule, the budget."""

    images: np.ndarray  # uint8 NxHxWx3: the parity set's validation images
    labels: np.ndarray
    decide: Callable[[np.ndarray], np.ndarray]  # probabilities -> class index (the operating point)
    max_drop: float  # accuracy, as a fraction (0.01 = one point)
    max_float_layers: int  # `--int8-max-float-layers`: NNCF reverts at most this many layer groups


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
    facts: ModelFacts  # the record every artifact carries (`pipeline.model_facts`)
    decision: dict | None = None  # binary models: {"positive_class", "threshold", "criterion"}
    calibration: dict = dataclasses.field(default_factory=lambda: {"method": "minmax", "images": 0})
    float_layers: list[str] = dataclasses.field(default_factory=list)  # int8: nodes kept in float (the fix)
    accuracy_control: AccuracyControl | None = None  # OpenVINO int8 under the fix: NNCF restores accuracy itself
    scratch: dict[str, Any] = dataclasses.field(default_factory=dict)  # shared intermediates (files, histograms)
    variant: str = ""  # "heatmap": the model has a second output (export/heatmap.py); "" for the plain artifacts
    float_scope: str = ""  # int8: a regex of node names kept in float (a heatmap artifact's map; export/heatmap.py)
    variants: dict[str, ExportContext] = dataclasses.field(default_factory=dict)  # variant -> its context, made once


def variant_filename(filename: str, variant: str) -> str:
    """An artifact's file name for a variant: model_float32.onnx -> model_float32_heatmap.onnx, and a bundle's
    folder web-float32/model.onnx -> web-float32-heatmap/model.onnx; the plain name when there is no variant."""
    if not variant:
        return filename
    path = Path(filename)
    if len(path.parts) > 1:
        return str(Path(f"{path.parts[0]}-{variant}", *path.parts[1:]))
    return f"{path.stem}_{variant}{path.suffix}"


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
    # an int8 format with its own fix (NNCF's accuracy control): (format, ctx, export_one, parity, max_drop) -> entry
    fix: Callable[..., dict] | None = None
    variant: str = ""  # "heatmap" for the same format with the heatmap output (export/heatmap.py)

    @property
    def base_key(self) -> str:
        """The format and precision: what a variant's own converters call the artifact they build on."""
        return f"{self.format}-{self.precision}"

    @property
    def key(self) -> str:
        return f"{self.base_key}-{self.variant}" if self.variant else self.base_key
