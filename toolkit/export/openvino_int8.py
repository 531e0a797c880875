"""OpenVINO IR in int8 through NNCF post-training quantization: OpenVINO's own int8 route on Intel CPUs.

ONNX Runtime's QDQ file is not an OpenVINO int8 model (OpenVINO 2026.4's CPU plugin
could not compile it on an AMX Xeon: "No suitable implementations"); peers that ship
int8 for Intel CPUs (Ultralytics `format=openvino int8=True`, Optimum Intel) run
NNCF on the OpenVINO model instead, which inserts FakeQuantize nodes that the CPU
plugin fuses into VNNI/AMX int8 kernels. Here NNCF quantizes the float IR (converted
from the Keras model's TF graph, `openvino.float_ir`) on the export's stratified training calibration images,
its activation range estimator chosen by `--calibration` (minmax -> MINMAX, entropy ->
HISTOGRAM, percentile -> MEAN_QUANTILE). The IR carries the toolkit's record in
`rt_info` as the bf16 IR does.

Under `--int8-max-drop` the fix is NNCF's own accuracy control
(`quantize_with_accuracy_control`): it ranks the quantized layers by their effect on
a validation metric (here the accuracy at the run's operating point on the parity
set's validation images, per image) and reverts layers to float until the drop is
within the budget; the pipeline then gates the result as any artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.errors import ExportError
from toolkit.export.base import AccuracyControl, ExportContext, ExportFormat, work_dir
from toolkit.export.int8_fix import finish_fix, fix_summary
from toolkit.export.onnx_float import OUTPUT_NAME
from toolkit.export.openvino import describe_ir, float_ir, save_ir
from toolkit.progress import phase

FILENAME = "model_int8.xml"
QUANTIZATION = "int8"  # rt_info toolkit/quantization: what the runtime reports as the IR's precision
FLOAT_PRECISION = "f32"  # what the IR's unquantized layers compute in
QUANTIZED_OPS = ("Convolution", "MatMul", "GroupConvolution")


def _range_estimator(method: str):
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Sets

    return {"minmax": Sets.MINMAX, "entropy": Sets.HISTOGRAM, "percentile": Sets.MEAN_QUANTILE}[method]


def _dataset(images: np.ndarray, labels: np.ndarray | None = None):
    """One image per item (float32 1xHxWx3), with its label when validating."""
    import nncf

    items = [
        (images[i : i + 1].astype(np.float32), None if labels is None else int(labels[i])) for i in range(len(images))
    ]
    return nncf.Dataset(items, lambda item: item[0])


def _validation_fn(decide: Callable[[np.ndarray], np.ndarray]):
    """NNCF's validation function: (accuracy, per-image correctness), which it uses to rank layers."""

    def validate(compiled, items) -> tuple[float, list[float]]:
        output = compiled.outputs[0]
        correct = []
        for image, label in items:
            probs = np.asarray(compiled(image)[output], dtype=np.float32)
            correct.append(float(decide(probs)[0] == label))
        return float(np.mean(correct)) if correct else 0.0, correct

    return validate


def map_only_ops(model) -> list[str]:
    """The IR's ops that feed only the heatmap output, not `probs`: a heatmap artifact keeps them float.

    The name pattern (`float_scope`) is not enough here: OpenVINO's TensorFlow frontend renames the ops
    it creates while moving Transposes (the map's gap+gmp split became "Transpose_1958", an Add), and
    NNCF quantised their inputs: every map of the demo run moved (p95 difference 1.0, AMX Xeon). Which
    ops belong to the map is a fact of the graph, not of names: those the probabilities do not depend on.
    """
    probs = [r for r in model.get_results() if OUTPUT_NAME in r.input_value(0).get_names()]
    needed, stack = set(), [r.input_value(0).get_node() for r in probs]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() not in needed:
            needed.add(node.get_friendly_name())
            stack.extend(value.get_node() for value in node.input_values())
    skip = ("Constant", "Result", "Parameter")
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() not in skip and op.get_friendly_name() not in needed]  # fmt: skip


def _quantize(ctx: ExportContext, model, control: AccuracyControl | None):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=_range_estimator(ctx.calibration["method"])
    )
    common = {
        "preset": nncf.QuantizationPreset.PERFORMANCE,  # symmetric activations: what VNNI/AMX kernels take
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": len(ctx.calibration_images),
    }
    if ctx.float_layers or ctx.float_scope:  # the fix's float layers; a heatmap artifact's map (export/heatmap.py)
        patterns = [ctx.float_scope] if ctx.float_scope else []
        names = list(ctx.float_layers) + (map_only_ops(model) if ctx.float_scope else [])
        common["ignored_scope"] = nncf.IgnoredScope(names=names, patterns=patterns, validate=False)
    calibration = _dataset(ctx.calibration_images)
    if control is None:
        return nncf.quantize(model, calibration, advanced_parameters=advanced, **common)
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    return nncf.quantize_with_accuracy_control(
        model,
        calibration,
        _dataset(control.images, control.labels),
        _validation_fn(control.decide),
        max_drop=control.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=advanced,
        # the float budget: without it NNCF may revert every layer (an "int8" IR all in float; ELPV module split)
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=control.max_float_layers
        ),
        **common,
    )


def convert_int8(ctx: ExportContext, dest: Path) -> None:
    """NNCF post-training quantization of the float IR (with accuracy control when the fix asks for it)."""
    try:
        import nncf  # noqa: F401
    except ImportError as exc:
        raise ExportError("--format openvino --precision int8 needs nncf (pip install 'toolkit[train]')") from exc
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its own progress bars and INFO lines: the phase line says it
    try:
        model = float_ir(ctx)
        # The layers left in float run in f32, not the CPU plugin's default bf16 on AMX/AVX512_BF16 CPUs:
        # the int8 layers carry the speed, and NNCF's accuracy control compiles with this hint too.
        model.set_rt_info(FLOAT_PRECISION, ["runtime_options", "INFERENCE_PRECISION_HINT"])
        model = _quantize(ctx, model, ctx.accuracy_control)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"NNCF int8 quantization failed: {' '.join(str(exc).split())[:200]}") from exc
    # The record names both: int8 for the quantized layers, f32 for the rest, which the runtime compiles
    # with (the CPU plugin's default on AMX/AVX512_BF16 would be bf16, noise the gate never saw). The
    # float layers' weights stay f32 too: fp16 weights would add noise the accuracy control did not measure.
    extra = {"quantization": QUANTIZATION, "inference_precision": FLOAT_PRECISION}
    save_ir(ctx, model, dest, FILENAME, extra, fp16_weights=False)


LAYOUT_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze")  # what NNCF may put between an FQ and its op


def _reads_fake_quantize(op) -> bool:
    node = op.input_value(0).get_node()
    while node.get_type_name() in LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


def _has_int8_weights(op) -> bool:
    """NNCF folds a weight FakeQuantize into an int8 constant that a Convert (+ Multiply) dequantizes."""
    node = op.input_value(1).get_node()
    for _ in range(3):
        if node.get_type_name() == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8")
        if node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def quantized_layers(path: Path) -> set[str]:
    """Names of the convolutions and matmuls NNCF quantized: an int8 activation (FakeQuantize) or int8 weights."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in QUANTIZED_OPS and (_reads_fake_quantize(op) or _has_int8_weights(op))
    }


def _copy_ir(xml: Path, dest: Path) -> Path:
    import shutil

    shutil.copyfile(xml, dest)
    shutil.copyfile(xml.with_suffix(".bin"), dest.with_suffix(".bin"))
    return dest


def fix_with_accuracy_control(
    fmt: ExportFormat, ctx: ExportContext, export_one, parity, max_drop: float, max_float_layers: int
) -> dict:
    """All-int8 first; if its gate fails, NNCF's accuracy control within `max_drop` points, gated again.

    NNCF reverts at most `max_float_layers` layer groups (its iterations; `--int8-max-float-layers`).

    The entry's `int8_fix` names the layers NNCF reverted to float and their batch-1
    cost, timed interleaved against the all-int8 IR (`int8_fix.finish_fix`).
    """
    entry = export_one()
    attempts = [fix_summary(entry, ctx)]
    if entry["parity"]["passed"]:
        return finish_fix(entry, ctx, attempts, None, parity.images[0], [])
    all_int8 = _copy_ir(ctx.export_dir / FILENAME, work_dir(ctx) / f"all-int8-{FILENAME}")
    validation = parity.parts.get("validation", np.ones(len(parity.images), bool))
    decide = parity.decide or (lambda probs: probs.argmax(axis=1))
    ctx.accuracy_control = AccuracyControl(
        parity.images[validation], parity.labels[validation], decide, max_drop / 100, max_float_layers
    )
    try:
        with phase(f"NNCF accuracy control on {int(validation.sum())} validation images (max drop {max_drop:g})"):
            entry = export_one()
    finally:
        ctx.accuracy_control = None
    ctx.float_layers = sorted(quantized_layers(all_int8) - quantized_layers(ctx.export_dir / FILENAME))
    attempts.append({**fix_summary(entry, ctx), "method": "nncf.quantize_with_accuracy_control"})
    return finish_fix(entry, ctx, attempts, all_int8, parity.images[0], [])


FORMAT = ExportFormat(
    format="openvino",
    precision="int8",
    filename=FILENAME,
    convert=convert_int8,
    describe_io=describe_ir,
    advice="--int8-max-drop 1 (NNCF's accuracy control), or ship openvino bf16 or onnx float32",
    converter="nncf",
    fix=fix_with_accuracy_control,
)
