"""Which layers int8 hurts most: a per-layer report of each int8 artifact against its float source.

Built on ONNX Runtime's `qdq_loss_debug`: both models are augmented to output every
activation, run on the same validation images, and matched tensor by tensor. For
each quantized activation the report gives two signal-to-quantization-noise ratios
(dB; lower is worse): `own_sqnr_db`, the noise that tensor's own quantize/dequantize
adds, and `model_sqnr_db`, how far the int8 model's tensor has drifted from the
float model's there (everything upstream included). Rows are ranked by their own
noise, the layer a fix would keep in float first. The TFLite int8 model is measured by
TFLite's QuantizationDebugger (tflite_int8.layer_noise): each layer's RMSE against its
float twin, in quantization steps.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from toolkit.export.onnx_calibration import calibration_reader
from toolkit.fileio import atomic_path, write_json_atomic

REPORT = "quant_report.json"
PLOT = "quant_report.png"
DIAGNOSIS_IMAGES = 16  # every activation of every image is held in memory (about 60 MB per 224 px image)


@dataclasses.dataclass
class LayerError:
    tensor: str
    own_sqnr_db: float
    model_sqnr_db: float | None


def layer_errors(float_model: Path, int8_model: Path, images: np.ndarray) -> list[LayerError]:
    """Per-activation SQNRs of `int8_model` on `images`, worst (lowest own SQNR) first."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="toolkit-diagnose-") as tmp:
        float_aug, int8_aug = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(float_model), str(float_aug))
        modify_model_output_intermediate_tensors(str(int8_model), str(int8_aug))
        float_acts = collect_activations(str(float_aug), calibration_reader(images))
        int8_acts = collect_activations(str(int8_aug), calibration_reader(images))
    errors = compute_activation_error(create_activation_matching(int8_acts, float_acts))
    rows = [
        LayerError(name, float(e["qdq_err"]), float(e["xmodel_err"]) if "xmodel_err" in e else None)
        for name, e in errors.items()
        if np.isfinite(e["qdq_err"])
    ]
    return sorted(rows, key=lambda r: r.own_sqnr_db)


def rank_onnx_layers(float_model: Path, int8_model: Path, prepared: Path, images: np.ndarray) -> list[list[str]]:
    """Node groups to keep in float, worst activation first: each activation's producer and its consumers.

    Keeping the producer and consumers of a noisy activation in float removes that tensor's
    quantize/dequantize pair; names are the pre-processed float model's, as `nodes_to_exclude` wants.
    """
    import onnx

    rows = layer_errors(float_model, int8_model, images)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    groups: list[list[str]] = []
    for row in rows:
        group = [n.name for n in graph.node if row.tensor in n.output or row.tensor in n.input]
        if group and group not in groups:
            groups.append(group)
    return groups


@dataclasses.dataclass
class Diagnosis:
    """One int8 artifact's layers, worst first, by one metric."""

    artifact: str
    metric: str  # the row key that ranks them
    meaning: str  # for the plot and the reader
    worst_is_low: bool
    layers: list[dict]


def onnx_diagnosis(float_model: Path, int8_model: Path, images: np.ndarray) -> Diagnosis:
    rows = [dataclasses.asdict(r) for r in layer_errors(float_model, int8_model, images)]
    return Diagnosis(int8_model.name, "own_sqnr_db", "own quantization SQNR (dB): lower is worse", True, rows)


def tflite_diagnosis(artifact: str, noise: list[tuple[str, float]]) -> Diagnosis:
    rows = [{"tensor": name, "rmse_steps": steps} for name, steps in noise]
    meaning = "RMSE of the int8 layer against float, in quantization steps: higher is worse"
    return Diagnosis(artifact, "rmse_steps", meaning, False, rows)


def plot_diagnoses(diagnoses: list[Diagnosis], dest: Path, worst: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [0.35 * min(worst, len(d.layers)) + 1.2 for d in diagnoses]
    fig, axes = plt.subplots(len(diagnoses), 1, figsize=(9, sum(heights)), squeeze=False)
    for ax, d in zip(axes[:, 0], diagnoses):
        shown = d.layers[:worst][::-1]
        ax.barh([r["tensor"][-60:] for r in shown], [r[d.metric] for r in shown], color="tab:red")
        ax.set_xlabel(d.meaning)
        ax.set_title(f"{d.artifact}: the {len(shown)} layers with the most quantization noise")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_quant_report(diagnoses: list[Diagnosis], export_dir: Path, images: int) -> Path:
    """quant_report.json (every quantized layer of each int8 artifact, ranked) and quant_report.png (the worst 20)."""
    payload = {"images": images, "artifacts": [dataclasses.asdict(d) for d in diagnoses]}
    write_json_atomic(export_dir / REPORT, payload)
    plot_diagnoses(diagnoses, export_dir / PLOT)
    return export_dir / REPORT
