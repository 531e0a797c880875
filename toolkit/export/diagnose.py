"""Which layers int8 hurts most: a per-layer report of each int8 artifact against its float source.

Built on ONNX Runtime's `qdq_loss_debug`: both models are augmented to output every
activation, run on the same validation images, and matched tensor by tensor. For
each quantized activation the report gives two signal-to-quantization-noise ratios
(dB; lower is worse): `own_sqnr_db`, the noise that tensor's own quantize/dequantize
adds (measured against the clipped value where ONNX Runtime folded a Relu or Clip into
the quantization), and `model_sqnr_db`, how far the int8 model's tensor has drifted
from the float model's there (everything upstream included), so own >= model in dB. Rows are
ranked by `noise_added`, the drift a layer adds over the one before it (weights included),
the layer a fix would try in float first. The TFLite int8 model is measured by
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
    fused: str | None = None  # the activation ONNX Runtime folded into this tensor's quantization (Relu, Clip)
    noise_added: float = 0.0  # drift (noise / signal power) the model gains here over the tensor before it


SQNR_CAP_DB = 100.0  # an exactly reproduced channel counts as this, so one perfect channel cannot hide the others


def sqnr_db(signal: list[np.ndarray], noisy: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio in dB, per channel (axis 1) over every image, averaged over channels.

    Per channel, because int8 activations share one range per tensor: one outlier channel stretches the
    range and crushes every other channel, which a whole-tensor ratio (dominated by the outlier's energy)
    would hide. Silent channels are left out; exact ones count as SQNR_CAP_DB.
    """

    def per_channel(values: list[np.ndarray]) -> np.ndarray:
        return np.stack([np.moveaxis(np.asarray(v, np.float64), 1, 0).reshape(v.shape[1], -1) for v in values])

    if np.ndim(signal[0]) < 2:
        s, n = np.concatenate([np.ravel(v) for v in signal])[None], np.concatenate([np.ravel(v) for v in noisy])[None]
        power, noise = np.sum(s**2, axis=1), np.sum((s - n) ** 2, axis=1)
    else:
        s, n = per_channel(signal), per_channel(noisy)
        power, noise = np.sum(s**2, axis=(0, 2)), np.sum((s - n) ** 2, axis=(0, 2))
    live = power > 0
    if not live.any():
        return SQNR_CAP_DB if not noise.any() else -SQNR_CAP_DB
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(power[live] / noise[live])
    return float(np.mean(np.minimum(db, SQNR_CAP_DB)))


def fused_activations(float_model: Path, int8_model: Path) -> dict[str, tuple[str, float, float]]:
    """Tensors whose Relu or Clip the quantizer removed: tensor -> (op, low, high).

    ONNX Runtime drops a Relu/Clip after a quantized output and lets the QuantizeLinear's range do the
    clipping; the tensor keeps the activation's name but now holds the producer's raw, unclipped
    output. Its own quantization noise is then measured against the clipped value, as in the float model.
    """
    import onnx
    from onnx import numpy_helper

    float_graph = onnx.load(str(float_model), load_external_data=False).graph
    int8_producers = {
        out: n.op_type for n in onnx.load(str(int8_model), load_external_data=False).graph.node for out in n.output
    }
    constants = {
        i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in float_graph.initializer if i.dims in ([], [1])
    }
    fused = {}
    for node in float_graph.node:
        if node.op_type not in ("Relu", "Clip") or int8_producers.get(node.output[0], node.op_type) == node.op_type:
            continue
        low, high = (0.0, float("inf")) if node.op_type == "Relu" else _clip_bounds(node, constants)
        fused[node.output[0]] = (node.op_type, low, high)
    return fused


def _clip_bounds(node, constants: dict[str, float]) -> tuple[float, float]:
    attributes = {a.name: a.f for a in node.attribute}
    low = (
        constants.get(node.input[1], -float("inf"))
        if len(node.input) > 1 and node.input[1]
        else attributes.get("min", -float("inf"))
    )
    high = (
        constants.get(node.input[2], float("inf"))
        if len(node.input) > 2 and node.input[2]
        else attributes.get("max", float("inf"))
    )
    return low, high


def layer_errors(float_model: Path, int8_model: Path, images: np.ndarray) -> list[LayerError]:
    """Per-activation SQNRs of `int8_model` on `images`, worst (lowest own SQNR) first.

    `own_sqnr_db` compares each dequantized tensor with the value it stands for in the int8 model (the
    pre-quantization tensor, clipped by any fused activation); `model_sqnr_db` compares it with the
    float model's tensor of the same name, so it includes every upstream layer's drift too.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="toolkit-diagnose-") as tmp:
        float_aug, int8_aug = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(float_model), str(float_aug))
        modify_model_output_intermediate_tensors(str(int8_model), str(int8_aug))
        float_acts = collect_activations(str(float_aug), calibration_reader(images))
        int8_acts = collect_activations(str(int8_aug), calibration_reader(images))
    fused = fused_activations(float_model, int8_model)
    matches = create_activation_matching(int8_acts, float_acts)
    rows = []
    for name in _graph_order(float_model, matches):
        match = matches[name]
        op, low, high = fused.get(name, (None, -float("inf"), float("inf")))
        stands_for = [np.clip(t, low, high) for t in match["pre_qdq"]]
        own = sqnr_db(stands_for, match["post_qdq"])
        model = sqnr_db(match["float"], match["post_qdq"]) if "float" in match else None
        rows.append(LayerError(name, own, model, op))
    _add_noise_increments(rows)
    return sorted(rows, key=lambda r: -r.noise_added)


def _graph_order(float_model: Path, matches: dict) -> list[str]:
    """The matched tensors in the order the (topologically sorted) float graph computes them."""
    import onnx

    order = [o for n in onnx.load(str(float_model), load_external_data=False).graph.node for o in n.output]
    position = {name: i for i, name in enumerate(order)}
    return sorted(matches, key=lambda name: position.get(name, len(order)))


def _add_noise_increments(rows: list[LayerError]) -> None:
    """Each tensor's drift minus the drift of the tensor computed before it (relative noise power, linear).

    The drift a layer adds is what ranks it: a layer whose weights or activations int8 cannot hold shows a
    jump here even when its own activation quantization looks clean (an outlier input channel crushed in
    its per-channel weights, say), and everything downstream merely inherits it.
    """
    before = 0.0
    for row in rows:
        if row.model_sqnr_db is None:
            continue
        drift = 10 ** (-row.model_sqnr_db / 10)
        row.noise_added = drift - before
        before = drift


def rank_onnx_layers(float_model: Path, int8_model: Path, prepared: Path, images: np.ndarray) -> list[list[str]]:
    """Node groups to keep in float, the layer that adds most drift first (export/layer_groups.py).

    Names are the pre-processed float model's, as `nodes_to_exclude` wants.
    """
    import onnx

    from toolkit.export.layer_groups import ONNX_PASS_THROUGH, Node, float_groups

    rows = layer_errors(float_model, int8_model, images)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    nodes = [Node(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in graph.node]
    return float_groups(nodes, [row.tensor for row in rows], ONNX_PASS_THROUGH)


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
    meaning = "drift added at this layer (noise/signal power vs the layer before): higher is worse"
    return Diagnosis(int8_model.name, "noise_added", meaning, False, rows)


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
