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
from toolkit.export.onnx_float import INPUT_NAME, convert_float32, describe_onnx, onnx_metadata, set_metadata

CALIBRATION_BATCH = 8
FILENAME = "model_int8.onnx"


def float_onnx(ctx: ExportContext) -> Path:
    """The float32 ONNX model to quantise: the exported one, or a scratch copy."""
    if "onnx-float32" not in ctx.scratch:
        tmp = work_dir(ctx) / "float32.onnx"
        convert_float32(ctx, tmp)
        ctx.scratch["onnx-float32"] = tmp
    return ctx.scratch["onnx-float32"]


def calibration_reader(images: np.ndarray):
    """Batches of calibration images as ONNX Runtime reads them, restartable at any range of batches."""
    from onnxruntime.quantization import CalibrationDataReader

    starts = list(range(0, len(images), CALIBRATION_BATCH))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(starts))

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(starts[start_index:end_index])

        def get_next(self):
            first = next(self.pending, None)
            if first is None:
                return None
            return {INPUT_NAME: images[first : first + CALIBRATION_BATCH].astype(np.float32)}

    return Reader()


def calibrator_options(calibration: dict):
    """(ONNX Runtime's CalibrationMethod, the calibrator's options) for a manifest calibration record.

    Entropy gets TensorRT's 2,048 histogram bins searched down to 128 (`quantize_static` would
    leave ONNX Runtime's 128 and 128, which leaves nothing to search: the ranges equal min/max);
    percentile clips each side separately, since most activations here follow a ReLU.
    """
    from onnxruntime.quantization import CalibrationMethod

    method = calibration["method"]
    if method == "entropy":
        return CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128}
    if method == "percentile":
        return CalibrationMethod.Percentile, {
            "num_bins": 2048,
            "percentile": calibration["percentile"],
            "symmetric": False,
        }
    return CalibrationMethod.MinMax, {}


def calibrate_ranges(model: Path, images: np.ndarray, calibration: dict, folder: Path) -> Path:
    """Activation ranges from the calibration images, one batch at a time, saved where quantize_static reads them.

    Collecting batch by batch keeps memory flat: the histogram calibrators would otherwise hold every
    activation of every image at once (about 60 MB per 224 px VGG16 image).
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    method, options = calibrator_options(calibration)
    calibrator = create_calibrator(
        model, None, augmented_model_path=str(folder / "augmented.onnx"), calibrate_method=method, extra_options=options
    )
    reader = calibration_reader(images)
    for batch in range(len(reader)):
        reader.set_range(batch, batch + 1)
        calibrator.collect_data(reader)
    ranges = folder / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


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
        calibrate_ranges(prepared, ctx.calibration_images, ctx.calibration, folder)
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
                nodes_to_exclude=list(ctx.float_layers),
            )
        except Exception as exc:
            raise ExportError(f"ONNX int8 quantisation failed: {' '.join(str(exc).split())[:200]}") from exc
        model = onnx.load(str(quantized))
    set_metadata(model, onnx_metadata(ctx))
    onnx.save(model, str(dest))


def _rank_layers(ctx: ExportContext, images: np.ndarray) -> list[list[str]]:
    from toolkit.export.diagnose import rank_onnx_layers

    return rank_onnx_layers(float_onnx(ctx), ctx.export_dir / FILENAME, _prepared(ctx), images)


FORMAT = ExportFormat(
    format="onnx",
    precision="int8",
    filename=FILENAME,
    convert=convert_int8,
    describe_io=describe_onnx,
    advice="--int8-max-drop 1 (other calibrations, then float layers), or ship openvino bf16 or onnx float32",
    converter="onnxruntime.quantization",
    rank_layers=_rank_layers,
)
