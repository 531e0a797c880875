"""TFLite dynamic-range int8, with layers the automatic fix keeps in float.

The converter's dynamic-range quantizer stores the weights of convolutions and dense layers in int8
and quantizes their inputs at run time, per batch (LiteRT's "hybrid" kernels). Unlike full int8
(tflite_int8.py) it takes no denylist, so a layer is kept float after conversion: its int8 weight
tensors are replaced by the float32 ones of the same operator in the converter's float32 model of
the same Keras model (the two graphs name their operators alike), and LiteRT then runs that
operator's float kernel on float inputs: the layer computes exactly what the float32 file does.
Dequantizing the int8 weights instead was tried and is not enough: a layer whose weights for one
input channel are far smaller than the rest (as a trained network can learn) loses that channel to
int8 rounding either way (tests/test_tflite_dynamic.py plants one). The file grows by three bytes
per weight of each kept layer. A heatmap artifact keeps its Grad-CAM layer float this way too
(export/heatmap.py), as the full-int8 one does.

Under `--int8-max-drop` the fix (int8_fix.py) tries no calibration (there is none) and ranks the
hybrid operators by the error each adds on its own: on a few parity images, its output's relative
error against the float32 model's same tensor, minus its input's, largest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat
from toolkit.export.heatmap import in_scope
from toolkit.export.tflite import convert_blob, describe_tflite, finish_tflite

RANK_IMAGES = 4  # parity images the ranking runs on reference kernels (each candidate is then scored on decisions)
FILENAME = "model_dynamic.tflite"
FLOAT_TWIN = "tflite-float32-twin"  # ctx.scratch: the float32 flatbuffer the kept layers' weights come from


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name


def _int8_weights(parsed, graph, op) -> list[int]:
    """Positions among the operator's inputs of its constant, quantized int8 tensors: its dynamically-quantized weights."""
    schema, _ = _schema()
    found = []
    for position, index in enumerate(op.inputs):
        tensor = graph.tensors[index] if index >= 0 else None
        if tensor is None or tensor.type != schema.TensorType.INT8:
            continue
        data, quant = parsed.buffers[tensor.buffer].data, tensor.quantization
        if data is not None and len(data) > 0 and quant is not None and quant.scale is not None:
            found.append(position)
    return found


def hybrid_operators(model: bytes) -> list[str]:
    """The operators with int8 weights on float inputs, by their first output tensor's name, in graph order."""
    schema, flatbuffer_utils = _schema()
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    graph = parsed.subgraphs[0]
    names = []
    for op in graph.operators:
        first = op.inputs[0] if len(op.inputs) else -1
        if first >= 0 and graph.tensors[first].type == schema.TensorType.FLOAT32 and _int8_weights(parsed, graph, op):
            names.append(_name(graph.tensors[op.outputs[0]]))
    return names


def _operators_by_name(graph) -> dict:
    return {_name(graph.tensors[op.outputs[0]]): op for op in graph.operators}


def keep_float(model: bytes, names: Iterable[str], float_model: bytes) -> bytes:
    """`model` with the named hybrid operators' weights taken from `float_model` (the same graph in float32).

    A name that is not a hybrid operator of `model`, or whose float twin differs in shape, is an ExportError.
    """
    _, flatbuffer_utils = _schema()
    wanted = set(names)
    if not wanted:
        return model
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    source = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_model))
    graph, twins = parsed.subgraphs[0], _operators_by_name(source.subgraphs[0])
    done: set[str] = set()
    for name, op in _operators_by_name(graph).items():
        if name not in wanted or name not in twins:
            continue
        for position in _int8_weights(parsed, graph, op):
            tensor = graph.tensors[op.inputs[position]]
            twin = source.subgraphs[0].tensors[twins[name].inputs[position]]
            if list(twin.shape) != list(tensor.shape):
                raise ExportError(f"TFLite operator {name}: its float32 weights have another shape")
            parsed.buffers[tensor.buffer].data = source.buffers[twin.buffer].data
            tensor.type, tensor.quantization = twin.type, None
            done.add(name)
    missing = sorted(wanted - done)
    if missing:
        raise ExportError(f"no TFLite operator named {missing[0]} to keep in float")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def _configure(tf, converter) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def float_twin(ctx: ExportContext) -> bytes:
    """The converter's float32 model of the same Keras model (no metadata), made once per export context."""
    if FLOAT_TWIN not in ctx.scratch:
        ctx.scratch[FLOAT_TWIN] = convert_blob(ctx, lambda tf, converter: None)
    return ctx.scratch[FLOAT_TWIN]


def convert_dynamic(ctx: ExportContext, dest: Path) -> None:
    """Dynamic-range int8, with `ctx.float_layers` (the fix's) and a heatmap's map path kept float."""
    blob = convert_blob(ctx, _configure)
    scope = in_scope(hybrid_operators(blob), ctx.float_scope) if ctx.float_scope else []
    floats = [*ctx.float_layers, *scope]
    dest.write_bytes(keep_float(blob, floats, float_twin(ctx)) if floats else blob)
    finish_tflite(ctx, dest)


def _tensors(model: bytes, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Every named tensor's value on `images`, from LiteRT's reference kernels (a delegate keeps no intermediates)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=model,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images.astype(np.float32))
    interpreter.invoke()
    by_name = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    return {name: np.array(interpreter.get_tensor(by_name[name])) for name in names if name in by_name}


def own_errors(model: bytes, float_model: bytes, images: np.ndarray) -> list[tuple[str, float]]:
    """Each hybrid operator's added relative error against `float_model` (its output's minus its input's), largest first."""
    from toolkit.export.tflite_int8 import graph_nodes

    hybrid = hybrid_operators(model)
    inputs = {node.name: node.inputs[0] for node in graph_nodes(model) if node.name in hybrid}
    names = sorted({*hybrid, *inputs.values()})
    quantised, reference = _tensors(model, images, names), _tensors(float_model, images, names)

    def relative(name: str) -> float:
        if name not in quantised or name not in reference:
            return 0.0
        ref = reference[name]
        return float(np.linalg.norm(quantised[name] - ref) / (np.linalg.norm(ref) + 1e-12))

    errors = [(name, relative(name) - relative(inputs[name])) for name in hybrid]
    return sorted(errors, key=lambda item: -item[1])


def _rank_layers(ctx: ExportContext, images: np.ndarray) -> list[list[str]]:
    """One operator per group (dynamic quantization carries no range from layer to layer), noisiest first."""
    artifact = ctx.scratch.get(FORMAT.base_key)  # the all-int8 file the fix starts from (pipeline._export_one)
    if artifact is None or not Path(artifact).is_file():
        return []
    return [[name] for name, _ in own_errors(Path(artifact).read_bytes(), float_twin(ctx), images[:RANK_IMAGES])]


FORMAT = ExportFormat(
    "tflite",
    "dynamic",
    FILENAME,
    convert_dynamic,
    describe_tflite,
    "--int8-max-drop 1 (layers kept float), or tflite float16, or full int8 with more --calib-images",
    "tensorflow.lite",
    rank_layers=_rank_layers,
)
