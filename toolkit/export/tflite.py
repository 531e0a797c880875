"""TFLite float32 and float16 (dynamic-range int8: tflite_dynamic.py; full int8: tflite_int8.py).

Converted with `TFLiteConverter.from_keras_model`: with Keras 3,
`from_concrete_functions` silently writes a weightless model that outputs NaN.
Full int8 takes raw uint8 pixels (input scale 1, zero point 0) and returns
float32 probabilities, so apps feed it the same bytes as every other format.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat
from toolkit.export.tflite_metadata import add_classifier_metadata


def tflite_converter(ctx: ExportContext):
    import tensorflow as tf

    return tf, tf.lite.TFLiteConverter.from_keras_model(ctx.model)


def finish_tflite(ctx: ExportContext, dest: Path) -> None:
    """What every TFLite artifact carries: MediaPipe-readable metadata with the labels packed in."""
    add_classifier_metadata(dest, ctx.facts)


def anchored_calibration(images: np.ndarray) -> np.ndarray:
    """Calibration images whose first one spans the full 0..255 range.

    The input's quantisation range comes from the calibration data; one pixel
    at 0 and one at 255 pins it to scale 1, zero point 0 (raw pixels) without
    moving any activation statistic measurably.
    """
    anchored = np.array(images, dtype=np.uint8, copy=True)
    anchored[0, 0, 0, :] = 0
    anchored[0, 0, 1, :] = 255
    return anchored


def convert_blob(ctx: ExportContext, configure) -> bytes:
    """The converter's flatbuffer, `configure(tf, converter)` having set its options; a failure is one line."""
    tf, converter = tflite_converter(ctx)
    configure(tf, converter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return converter.convert()
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed: {' '.join(str(exc).split())[:200]}") from exc


def _convert(ctx: ExportContext, dest: Path, configure) -> None:
    dest.write_bytes(convert_blob(ctx, configure))
    finish_tflite(ctx, dest)


def _float32(tf, converter) -> None:
    pass


def _float16(tf, converter) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def describe_tflite(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    return {
        "input": {
            "name": inp["name"],
            "shape": [int(d) for d in inp["shape_signature"]],
            "dtype": np.dtype(inp["dtype"]).name,
            "quantization": [float(inp["quantization"][0]), int(inp["quantization"][1])],
        },
        "output": {"name": out["name"], "dtype": np.dtype(out["dtype"]).name},
    }


def _simple(configure):
    return lambda ctx, dest: _convert(ctx, dest, configure)


FORMATS = [
    ExportFormat(
        "tflite",
        "float32",
        "model_float32.tflite",
        _simple(_float32),
        describe_tflite,
        "report the failing op; try onnx float32",
        "tensorflow.lite",
    ),
    ExportFormat(
        "tflite",
        "float16",
        "model_float16.tflite",
        _simple(_float16),
        describe_tflite,
        "try tflite float32",
        "tensorflow.lite",
    ),
]
