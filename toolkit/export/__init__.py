"""Export a trained run to deployable formats, each one verified by the parity gate.

One module per format registers an `ExportFormat` (onnx_float, onnx_int8, tflite,
tflite_int8, openvino, web) in `pipeline.REGISTRY`; `pipeline` selects, converts, gates
and records them; `manifest` keeps `manifest.json`. This module is the public API.
"""

from toolkit.export.base import Calibration, ExportTarget, Precision
from toolkit.export.manifest import MANIFEST
from toolkit.export.pipeline import (
    MODEL_FORMATS,
    REGISTRY,
    ExportOptions,
    ExportReport,
    export_run,
    model_facts,
    parity_failure_message,
    select_formats,
)

__all__ = [
    "MANIFEST",
    "MODEL_FORMATS",
    "REGISTRY",
    "Calibration",
    "ExportOptions",
    "ExportReport",
    "ExportTarget",
    "Precision",
    "export_run",
    "model_facts",
    "parity_failure_message",
    "select_formats",
]
