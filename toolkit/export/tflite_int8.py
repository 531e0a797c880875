"""TFLite full int8 (uint8 input, float32 output) in two steps, so both steps can be chosen.

`TFLiteConverter` calibrates and quantises in one call, with min/max ranges only. Here
the converter calibrates (`_experimental_calibrate_only`, as TFLite's QuantizationDebugger
does), the ranges are replaced where `--calibration` asks for entropy or percentile
(histograms from ONNX Runtime's collector over the same calibration images, so both int8
paths choose ranges the same way), and the MLIR quantizer then writes the int8 model with
the converter's own settings, keeping `ctx.float_layers` in float (its denylist: how the
automatic fix and TFLite's selective quantization keep a layer float).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat, calibration_key, work_dir
from toolkit.export.heatmap import in_scope
from toolkit.export.layer_groups import TFLITE_PASS_THROUGH, Node, float_groups
from toolkit.export.onnx_calibration import histogram_thresholds
from toolkit.export.tflite import anchored_calibration, describe_tflite, finish_tflite, tflite_converter

FILENAME = "model_int8.tflite"
PROBE_BATCH = 8  # images per probe run: every activation of VGG16 at 224 px is ~60 MB per image


def _representative(images: np.ndarray):
    def dataset():
        for image in images:
            yield [image[None].astype(np.float32)]

    return dataset


def converter_calibration(ctx: ExportContext, images: np.ndarray) -> bytes:
    """The float model as TFLite's own calibrator writes it: min/max ranges of `images` in every range field.

    The calibrator runs the float model one image at a time on one thread (minutes for VGG16's calibration
    set), so `calibrated_model` gives it one image, for the structure, and measures the ranges itself.
    """
    tf, converter = tflite_converter(ctx)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    converter._experimental_calibrate_only = True  # noqa: SLF001 (TFLite's own debugger uses it the same way)
    try:
        return converter.convert()
    except Exception as exc:
        raise ExportError(f"TFLite calibration failed: {' '.join(str(exc).split())[:200]}") from exc


def calibrated_model(ctx: ExportContext) -> bytes:
    """The float model with min/max ranges from the calibration images (made once per export).

    The converter calibrates on the anchored image alone (its pixels span 0..255, so the input keeps scale 1
    and zero point 0); every range is then measured on all calibration images by `probe_batches`.
    """
    cached = work_dir(ctx) / "tflite-calibrated.tflite"
    if cached.is_file():
        return cached.read_bytes()
    structure = converter_calibration(ctx, anchored_calibration(ctx.calibration_images)[:1])
    low_high: dict[int, list[float]] = {}
    for batch in probe_batches(structure, anchored_calibration(ctx.calibration_images)):
        for i, values in batch.items():
            low, high = low_high.setdefault(i, [float("inf"), -float("inf")])
            low_high[i] = [min(low, float(values.min())), max(high, float(values.max()))]
    blob = with_ranges(structure, {i: (low, high) for i, (low, high) in low_high.items()})
    cached.write_bytes(blob)
    return blob


def _range_tensors(model) -> list[int]:
    """Indices of the activation tensors with a calibrated range (not the input: it stays 0..255, raw pixels)."""
    graph = model.subgraphs[0]
    inputs = set(graph.inputs)
    return [
        i
        for i, t in enumerate(graph.tensors)
        if i not in inputs and t.quantization is not None and t.quantization.min is not None
    ]


def probe_batches(calibrated: bytes, images: np.ndarray, batch_size: int = PROBE_BATCH):
    """Every range tensor's values, a batch of images at a time: {tensor index: values}.

    The float model with each range tensor made a graph output runs in LiteRT with XNNPACK on every core,
    batched (what the calibrator and `experimental_preserve_all_tensors` cannot: both run the reference
    kernels, the calibrator one image at a time). Float results are the same to float rounding.
    """
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    tensors = _range_tensors(model)
    graph.outputs = list(graph.outputs) + [i for i in tensors if i not in graph.outputs]
    probe = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    interpreter = Interpreter(model_content=probe, num_threads=os.cpu_count() or 1)
    index, size = interpreter.get_input_details()[0]["index"], None
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], np.float32)
        if size != len(batch):
            interpreter.resize_tensor_input(index, [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            size = len(batch)
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        yield {i: interpreter.get_tensor(i) for i in tensors}


def histogram_ranges(
    calibrated: bytes, images: np.ndarray, calibration: dict, histograms: dict
) -> dict[int, tuple[float, float]]:
    """Entropy or percentile ranges per activation tensor, from histograms collected a batch at a time
    (once per model: `histograms` is its cache, onnx_calibration.histogram_thresholds)."""

    def collect(collector) -> None:
        for batch in probe_batches(calibrated, images):
            collector.collect({str(i): [values.astype(np.float32)] for i, values in batch.items()})

    thresholds = histogram_thresholds(calibration, histograms, collect)
    return {int(k): (float(v[0]), float(v[1])) for k, v in thresholds.items()}


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with its activation ranges replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    tensors = model.subgraphs[0].tensors
    for i, (low, high) in ranges.items():
        tensors[i].quantization.min = [min(low, 0.0)]  # zero stays representable, as the quantizer requires
        tensors[i].quantization.max = [max(high, 0.0)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def ranged_model(ctx: ExportContext) -> bytes:
    """The calibrated model with the ranges `ctx.calibration` asks for (cached per method)."""
    calibrated = calibrated_model(ctx)
    if ctx.calibration["method"] == "minmax":
        return calibrated
    cached = work_dir(ctx) / f"tflite-ranges-{calibration_key(ctx.calibration)}.tflite"
    if not cached.is_file():
        histograms = ctx.scratch.setdefault("tflite-histograms", {})
        ranges = histogram_ranges(calibrated, ctx.calibration_images, ctx.calibration, histograms)
        cached.write_bytes(with_ranges(calibrated, ranges))
    return cached.read_bytes()


def quantize(calibrated: bytes, float_layers: list[str], debug: bool = False) -> bytes:
    """The MLIR quantizer with the converter's own full-int8 settings (uint8 in, float32 out)."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    io_types = {} if debug else {"input_data_type": tf.uint8, "output_data_type": tf.float32}
    try:
        return mlir_quantize(
            calibrated, enable_numeric_verify=debug, denylisted_nodes=list(float_layers) or None, **io_types
        )
    except Exception as exc:
        raise ExportError(f"TFLite int8 quantisation failed: {' '.join(str(exc).split())[:200]}") from exc


def _heatmap_tensors(ctx: ExportContext, model: bytes) -> list[str]:
    """A heatmap artifact's map path (kept in float, export/heatmap.py); none for the plain artifact."""
    from tensorflow.lite.tools import flatbuffer_utils

    if not ctx.float_scope:
        return []
    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(model)).subgraphs[0]
    names = (t.name.decode() if isinstance(t.name, bytes) else t.name for t in graph.tensors)
    return in_scope(names, ctx.float_scope)


def convert_int8(ctx: ExportContext, dest: Path) -> None:
    ranged = ranged_model(ctx)
    dest.write_bytes(quantize(ranged, ctx.float_layers + _heatmap_tensors(ctx, ranged)))
    finish_tflite(ctx, dest)
    scale, zero_point = describe_tflite(dest)["input"]["quantization"]
    if abs(scale - 1.0) > 1e-6 or zero_point != 0:
        raise ExportError(f"full-int8 input quantisation is scale {scale}, zero point {zero_point}; expected 1 and 0")


def layer_noise(ctx: ExportContext, images: np.ndarray) -> list[tuple[str, float]]:
    """Per-layer quantization noise from TFLite's QuantizationDebugger: (tensor, RMSE in quantization steps), worst first.

    RMSE over scale is the debugger's own suggested ranking (TFLite's "inspecting quantization
    errors" guide): an error of several quantization steps marks a layer that int8 does not fit.
    """
    import tensorflow as tf

    debug_model = quantize(ranged_model(ctx), [], debug=True)
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model,
        debug_dataset=_representative(images),
    )
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        if scale > 0:
            rows.append((row["tensor_name"], float(np.sqrt(float(row["mean_squared_error"]))) / scale))
    return sorted(rows, key=lambda r: -r[1])


def graph_nodes(model: bytes) -> list[Node]:
    """The operators of a TFLite model, each named by its first output tensor (the MLIR quantizer's node name)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    graph = parsed.subgraphs[0]

    def tensor(i: int) -> str:
        name = graph.tensors[i].name
        return name.decode() if isinstance(name, bytes) else name

    nodes = []
    for op in graph.operators:
        code = parsed.operatorCodes[op.opcodeIndex]
        op_name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        inputs = tuple(tensor(i) for i in op.inputs if i >= 0)
        outputs = tuple(tensor(i) for i in op.outputs)
        nodes.append(Node(outputs[0], op_name, inputs, outputs))
    return nodes


def _rank_layers(ctx: ExportContext, images: np.ndarray) -> list[list[str]]:
    """Operator groups to keep float (export/layer_groups.py), the noisiest layer's first."""
    tensors = [name for name, _ in layer_noise(ctx, images)]
    return float_groups(graph_nodes(ranged_model(ctx)), tensors, TFLITE_PASS_THROUGH)


FORMAT = ExportFormat(
    "tflite",
    "int8",
    FILENAME,
    convert_int8,
    describe_tflite,
    "--int8-max-drop 1 (other calibrations, the head in float, then float layers), or tflite dynamic or float16",
    "tensorflow.lite",
    rank_layers=_rank_layers,
)
