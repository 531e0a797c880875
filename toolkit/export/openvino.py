"""OpenVINO IR run in bfloat16: float fidelity at about twice fp32's speed, with no calibration.

The shipping answer when an int8 gate fails on a CPU with AVX512-BF16 or AMX:
measured on this project's EPYC, the bf16 IR ran the ELPV model in about half
of ONNX Runtime's fp32 time with probabilities within 1e-2 (README "int8 on real
data"). The IR is converted from the Keras model's TensorFlow graph (`float_ir`),
its weights stored as float16 (half the file; the CPU plugin computes in bf16
either way), and it carries the toolkit's metadata and
the bf16 precision hint in its `rt_info`, so `openvino.Core().compile_model`
runs it in bf16 without being told. A CPU without native bf16 runs the same IR
in f32: correct, just not faster.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat, variant_filename
from toolkit.export.onnx_float import INPUT_NAME, onnx_metadata, output_name
from toolkit.fileio import TEMP_MARK, sha256_file
from toolkit.runtime.digest import openvino_digest

FILENAME = "model_bf16.xml"
INFERENCE_PRECISION = "bf16"
METADATA_SECTION = "toolkit"  # rt_info section the runtime reads labels, size and decision from


def weights_path(xml: Path) -> Path:
    """The IR's weights file: OpenVINO reads the .bin with the .xml's name beside it."""
    return xml.with_suffix(".bin")


def import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("--format openvino needs the openvino package (pip install 'toolkit[train]')") from exc
    return ov


def float_ir(ctx: ExportContext):
    """The Keras model's traced TensorFlow graph as an in-memory OpenVINO model (a copy each call).

    Converted from TensorFlow, not from the float32 ONNX file: OpenVINO's TF frontend
    reads the NHWC graph and sinks its layout changes, while tf2onnx's NCHW rewrite left
    92 Transposes in MobileNetV3Large's IR (around every squeeze-excite block) that cost
    more than its convolutions: 7.5 ms against 1.8 ms at batch 1 in bf16 on a 2-core AMX
    Xeon (2026-12-07). The input is `image` with an open batch, the outputs `probs` and,
    for a heatmap model, `heatmap`, as in the ONNX files. Converted once per context (the
    bf16 IR, the int8 IR and NNCF's accuracy control each take a clone, which they annotate).
    """
    if "openvino-float" not in ctx.scratch:
        ctx.scratch["openvino-float"] = _convert_from_tf(ctx.model)
    return ctx.scratch["openvino-float"].clone()


def _convert_from_tf(model):
    from toolkit.keras_io import traced_forward

    traced = traced_forward(model, INPUT_NAME).get_concrete_function()
    # `output`: only the function's own outputs; without it the frontend also made a Result of every
    # custom-gradient activation (swish's IdentityN: 55 in EfficientNetV2B0), which kept its Transposes.
    ir = import_openvino().convert_model(traced, output=[tensor.name for tensor in traced.outputs])
    ir.inputs[0].get_tensor().set_names({INPUT_NAME})
    for index, output in enumerate(ir.outputs):
        name = output_name(index, len(output.get_partial_shape()), len(ir.outputs))
        if name is not None:
            output.get_tensor().set_names({name})
    return ir


def convert_bf16(ctx: ExportContext, dest: Path) -> None:
    """Write the bf16 IR: the float model with the bf16 precision hint in its runtime options."""
    try:
        model = float_ir(ctx)
        model.set_rt_info(INFERENCE_PRECISION, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    except Exception as exc:
        raise ExportError(f"OpenVINO conversion failed: {' '.join(str(exc).split())[:200]}") from exc
    save_ir(ctx, model, dest, FILENAME, {"inference_precision": INFERENCE_PRECISION}, fp16_weights=True)


def save_ir(ctx: ExportContext, model, dest: Path, filename: str, extra: dict[str, str], fp16_weights: bool) -> None:
    """Write an IR to `dest` (atomic_path's temporary name for `filename`): the weights first, then the .xml.

    In the export folder the weights go straight to their final name (`filename`'s .bin),
    since OpenVINO finds them by the .xml's name once `dest` is renamed; the .xml is the
    commit point. Staged beside the export (os.replace stays on one file system); a killed
    export's leftover folder carries the temporary mark, which the next export removes.
    """
    ov = import_openvino()
    filename = variant_filename(filename, ctx.variant)  # a heatmap IR's weights go beside its own .xml
    final = ctx.export_dir / filename if dest.parent.resolve() == ctx.export_dir.resolve() else dest
    try:
        with tempfile.TemporaryDirectory(prefix=f".{filename}{TEMP_MARK}", dir=dest.parent) as tmp:
            staged = Path(tmp) / filename
            _save_with_facts(ov, model, ctx.facts, staged, extra, fp16_weights)
            os.replace(weights_path(staged), weights_path(final))
            os.replace(staged, dest)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"OpenVINO serialisation failed: {' '.join(str(exc).split())[:200]}") from exc


def _set_facts(model, facts, extra: dict[str, str]) -> None:
    for key, value in {**onnx_metadata(facts), **extra}.items():
        model.set_rt_info(value, [METADATA_SECTION, key])


def _save_with_facts(ov, model, facts, staged: Path, extra: dict[str, str], fp16_weights: bool) -> None:
    """Save the IR twice: once to digest it (the toolkit section excluded), once with the digest in its record."""
    _set_facts(model, facts, extra)
    ov.save_model(model, str(staged), compress_to_fp16=fp16_weights)
    digest = openvino_digest(staged)
    _set_facts(model, dataclasses.replace(facts, content_sha256=digest), extra)
    ov.save_model(model, str(staged), compress_to_fp16=fp16_weights)
    if openvino_digest(staged) != digest:
        raise ExportError("OpenVINO serialisation is not stable: the content digest changed with the metadata")


def describe_ir(path: Path) -> dict:
    """Input/output names and shape, plus the weights file (its name and hash, for the manifest)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    inp, out = model.inputs[0], model.outputs[0]
    shape = [d.get_length() if d.is_static else "batch" for d in inp.get_partial_shape()]
    weights = weights_path(path)
    section = {
        key: model.get_rt_info([METADATA_SECTION, key]).astype(str)
        for key in ("inference_precision", "quantization")
        if model.has_rt_info([METADATA_SECTION, key])
    }
    return {
        "input": {"name": inp.get_any_name(), "shape": shape, "dtype": inp.get_element_type().to_dtype().name},
        "output": {"name": out.get_any_name()},
        "weights": {"path": weights.name, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size},
        "inference_precision": section.get("quantization") or section.get("inference_precision") or "f32",
    }


FORMAT = ExportFormat(
    format="openvino",
    precision="bf16",
    filename=FILENAME,
    convert=convert_bf16,
    describe_io=describe_ir,
    advice="ship onnx float32 (or tflite float16) instead, and report the failing layer",
    converter="openvino",
)
