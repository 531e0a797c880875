"""ONNX float32 through tf2onnx (via Keras's exporter), with named I/O and metadata."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat
from toolkit.facts import FACTS_KEY, HEATMAP_OUTPUT, ModelFacts
from toolkit.runtime.digest import onnx_digest

INPUT_NAME = "image"
OUTPUT_NAME = "probs"


def onnx_metadata(facts: ModelFacts) -> dict[str, str]:
    """Stored in `metadata_props` (and an IR's rt_info): the facts record, plus its fields as separate keys.

    The separate keys are the record's fields as toolkit 0.2 wrote them, for readers
    that look for `labels` or `decision` directly (Netron shows them too).
    """
    decision = {"decision": json.dumps(facts.decision)} if facts.decision else {}
    return {
        FACTS_KEY: facts.dumps(),
        **decision,
        "labels": json.dumps(list(facts.labels)),
        "image_size": json.dumps(list(facts.image_size)),
        "pixel_scale": facts.input.pixel_range,
        "layout": facts.input.layout,
        "preprocessing": facts.preprocessing,
        "toolkit_version": facts.toolkit_version,
        "source_sha256": facts.source_sha256 or "",
    }


def set_metadata(model, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_with_facts(model, facts: ModelFacts, dest: Path) -> None:
    """Write `model` with the facts record and its content digest (everything but the metadata) to `dest`."""
    set_metadata(model, onnx_metadata(facts))
    digest = onnx_digest(model.SerializeToString())
    set_metadata(model, onnx_metadata(dataclasses.replace(facts, content_sha256=digest)))
    data = model.SerializeToString()
    if onnx_digest(data) != digest:
        raise ExportError("ONNX serialisation is not stable: the content digest changed with the metadata")
    dest.write_bytes(data)


def _rename_output(model, index: int, new_name: str) -> None:
    old = model.graph.output[index].name
    if old == new_name:
        return
    for node in model.graph.node:
        node.output[:] = [new_name if o == old else o for o in node.output]
        node.input[:] = [new_name if i == old else i for i in node.input]
    model.graph.output[index].name = new_name


def output_name(index: int, rank: int, outputs: int) -> str | None:
    """`probs` for the N x K output; `heatmap` for a heatmap model's N x h x w x K one (export/heatmap.py).

    The one naming rule of the ONNX files and the OpenVINO IRs (export/openvino.py).
    """
    if rank == 4 and outputs > 1:
        return HEATMAP_OUTPUT
    return OUTPUT_NAME if index == 0 or rank == 2 else None


def _name_outputs(model) -> None:
    outputs = model.graph.output
    for index, value in enumerate(outputs):
        name = output_name(index, len(value.type.tensor_type.shape.dim), len(outputs))
        if name is not None:
            _rename_output(model, index, name)


def _name_batch_dim(model) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"


_HANDLERS: list = []


def register_tf2onnx_handlers() -> None:
    """TensorFlow ops tf2onnx 1.17 lacks, as ONNX ops: Erfc (exact GELU, ConvNeXt's) = 1 - Erf."""
    if _HANDLERS:
        return
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            out = node.output[0]
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(out))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output("Sub", out, inputs=[one.output[0], out], name=utils.make_name(node.name))

    _HANDLERS.append(Erfc)


def convert_float32(ctx: ExportContext, dest: Path) -> None:
    import onnx
    import tensorflow as tf

    register_tf2onnx_handlers()

    spec = tf.TensorSpec((None, ctx.image_size, ctx.image_size, 3), tf.float32, name=INPUT_NAME)
    raw = dest.with_name(dest.name + ".raw.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx.model.export(str(raw), format="onnx", input_signature=[spec], opset_version=ctx.opset, verbose=False)
        model = onnx.load(str(raw))
    except Exception as exc:
        raise ExportError(f"tf2onnx conversion failed: {' '.join(str(exc).split())[:200]}") from exc
    finally:
        raw.unlink(missing_ok=True)
    _name_outputs(model)
    _name_batch_dim(model)
    onnx.checker.check_model(model)
    save_with_facts(model, ctx.facts, dest)


def describe_onnx(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inp, out = model.graph.input[0], model.graph.output[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    elem = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"input": {"name": inp.name, "shape": dims, "dtype": elem}, "output": {"name": out.name}, "opset": opset}


FORMAT = ExportFormat(
    format="onnx",
    precision="float32",
    filename="model_float32.onnx",
    convert=convert_float32,
    describe_io=describe_onnx,
    advice="check for unsupported ops with another --opset (13-18)",
    converter="tf2onnx",
)
