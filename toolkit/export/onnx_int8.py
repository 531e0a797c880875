"""ONNX int8 through ONNX Runtime static quantisation (QDQ, per-channel weights).

Static rather than dynamic: on a CNN, `quantize_dynamic` leaves the
convolutions in float and is barely faster, while static QDQ ran about 3.5x
faster than float32 at 2 threads here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.export.base import ExportContext, ExportFormat, calibration_key, work_dir
from toolkit.export.diagnose import rank_onnx_layers
from toolkit.export.heatmap import in_scope
from toolkit.export.onnx_calibration import calibrate_ranges, calibration_reader, calibrator_options
from toolkit.export.onnx_float import convert_float32, describe_onnx, save_with_facts

FILENAME = "model_int8.onnx"


def float_onnx(ctx: ExportContext) -> Path:
    """The float32 ONNX model to quantise: the exported one, or a scratch copy."""
    if "onnx-float32" not in ctx.scratch:
        tmp = work_dir(ctx) / "float32.onnx"
        convert_float32(ctx, tmp)
        ctx.scratch["onnx-float32"] = tmp
    return ctx.scratch["onnx-float32"]


def _prepared(ctx: ExportContext) -> Path:
    """The float model after ONNX Runtime's pre-processing, made once per export (the fix re-quantises it)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work_dir(ctx) / "prepared.onnx"
    if not prepared.is_file():
        # skip_symbolic_shape: onnxruntime 1.32 made sympy optional; ONNX's own
        # shape inference is enough for a static-shaped CNN.
        quant_pre_process(str(float_onnx(ctx)), str(prepared), skip_symbolic_shape=True)
    return prepared


def _ranges(ctx: ExportContext, prepared: Path) -> Path:
    """Activation ranges for the context's calibration, computed once per method and percentile."""
    folder = prepared.parent / f"ranges-{calibration_key(ctx.calibration)}"
    if not (folder / "ranges.json").is_file():
        folder.mkdir(exist_ok=True)
        histograms = ctx.scratch.setdefault("onnx-histograms", {})
        calibrate_ranges(prepared, ctx.calibration_images, ctx.calibration, folder, histograms)
    return folder / "ranges.json"


def convert_int8(ctx: ExportContext, dest: Path) -> None:
    """Static QDQ int8; the nodes in `ctx.float_layers` stay float (the automatic fix's exclusions)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method, _ = calibrator_options(ctx.calibration)
    with tempfile.TemporaryDirectory(prefix="toolkit-quant-") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        try:
            prepared = _prepared(ctx)
            quantize_static(
                str(prepared),
                str(quantized),
                calibration_reader(ctx.calibration_images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                calibration_cache_path=str(_ranges(ctx, prepared)),
                nodes_to_exclude=list(ctx.float_layers) + _heatmap_nodes(ctx, prepared),
            )
        except Exception as exc:
            raise ExportError(f"ONNX int8 quantisation failed: {' '.join(str(exc).split())[:200]}") from exc
        model = onnx.load(str(quantized))
    save_with_facts(model, ctx.facts, dest)


def _heatmap_nodes(ctx: ExportContext, prepared: Path) -> list[str]:
    """A heatmap artifact's map path (kept in float, export/heatmap.py); none for the plain artifact."""
    import onnx

    if not ctx.float_scope:
        return []
    nodes = onnx.load(str(prepared), load_external_data=False).graph.node
    return in_scope((node.name for node in nodes), ctx.float_scope)


def _rank_layers(ctx: ExportContext, images: np.ndarray) -> list[list[str]]:
    return rank_onnx_layers(float_onnx(ctx), ctx.export_dir / FILENAME, _prepared(ctx), images)


FORMAT = ExportFormat(
    format="onnx",
    precision="int8",
    filename=FILENAME,
    convert=convert_int8,
    describe_io=describe_onnx,
    advice="--int8-max-drop 1 (other calibrations, the head in float, then float layers), or ship openvino bf16 or onnx float32",
    converter="onnxruntime.quantization",
    rank_layers=_rank_layers,
)
