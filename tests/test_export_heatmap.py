"""`toolkit export --heatmap`: each format once more with Grad-CAM as a second output, gated on its probabilities
and on its maps' agreement with the Keras model's, read back by the TF-free runtime and by `toolkit explain`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import validation_files
from toolkit.cli import app

pytestmark = pytest.mark.slow  # TensorFlow, a training run and four conversions
runner = CliRunner()


def _artifacts(run) -> list[dict]:
    return json.loads((run / "export" / "manifest.json").read_text())["artifacts"]


def test_heatmap_artifacts_pass_both_gates_under_their_own_names(heatmap_run):
    from toolkit.parity import MAX_MAP_DIFF

    entries = _artifacts(heatmap_run)
    assert sorted(e["path"] for e in entries) == [
        "model_bf16_heatmap.xml",
        "model_float16_heatmap.tflite",
        "model_float32_heatmap.onnx",
        "model_float32_heatmap.tflite",
    ]
    for e in entries:
        assert e["variant"] == "heatmap" and e["parity"]["passed"], e["parity"]["failures"]
        assert e["heatmap"]["passed"] and e["heatmap"]["p95_max_diff"] <= MAX_MAP_DIFF[e["precision"]]
        assert e["heatmap"]["images"] == e["parity"]["images"]
    assert not (heatmap_run / "export" / "model_float32.onnx").exists()  # the plain files are another export's


def test_the_runtime_reads_the_maps_each_artifact_carries(heatmap_run):
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.keras_io import load_keras_model
    from toolkit.runtime import load

    model = load_keras_model(heatmap_run / "best.keras")
    files = validation_files(heatmap_run)
    for entry in _artifacts(heatmap_run):
        classifier = load(heatmap_run / "export" / entry["path"])
        assert classifier.has_heatmap and classifier.info.heatmap["grid"] == [4, 4]
        pixels = np.stack([classifier.preprocess(f) for f in files])
        probs, maps = classifier.heatmap_arrays(pixels, batch_size=4)
        keras_probs, keras_maps = keras_heatmaps(model, pixels)
        assert maps.shape == (len(files), 4, 4, len(classifier.labels))
        np.testing.assert_allclose(probs, classifier.predict_arrays(pixels), atol=1e-6)  # the same graph's output
        if entry["precision"] == "float32":
            np.testing.assert_allclose(maps, keras_maps, rtol=1e-3, atol=1e-4 * keras_maps.max())


def test_a_map_that_points_elsewhere_fails_its_gate(heatmap_run, tmp_path, monkeypatch):
    from toolkit.export import ExportOptions, export_run
    from toolkit.runtime.onnx import OnnxBackend

    run = tmp_path / "run"
    shutil.copytree(heatmap_run, run)
    honest = OnnxBackend.run_heatmap

    def elsewhere(self, batch):
        probs, maps = honest(self, batch)
        return probs, maps[:, ::-1, ::-1]  # the same maps, turned half a circle

    monkeypatch.setattr(OnnxBackend, "run_heatmap", elsewhere)
    report = export_run(run, ExportOptions(format="onnx", precisions=["float32"], heatmap=True))
    (failed,) = report.failed
    assert failed["variant"] == "heatmap" and not failed["heatmap"]["passed"]
    assert any("heatmap" in f for f in failed["parity"]["failures"])


def test_explain_on_an_artifact_gives_the_keras_files_labels_and_peaks(heatmap_run, tmp_path):
    files = [str(f) for f in validation_files(heatmap_run)[:4]]
    results = {}
    for name in ("best.keras", "export/model_float32_heatmap.tflite"):
        out = tmp_path / name.replace("/", "_")
        result = runner.invoke(app, ["explain", str(heatmap_run / name), *files, "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        results[name] = json.loads(result.stdout)
        assert len(list(out.glob("*.png"))) == len(files)
    keras, tflite = results.values()
    assert [r["label"] for r in keras] == [r["label"] for r in tflite]
    for a, b in zip(keras, tflite):
        assert np.allclose(a["peak"], b["peak"], atol=0.02) and abs(a["probability"] - b["probability"]) < 1e-4


def test_int8_keeps_the_grad_cam_layer_and_the_head_float_by_one_name_pattern():
    """The Grad-CAM layer's and the head's ops, as every converter names them; the base is quantised as usual."""
    from toolkit.export.heatmap import MAP_SCOPE, float_scope, in_scope

    names = [
        "classifier_with_heatmap_1/heatmap_1/Tensordot/MatMul",  # ONNX and OpenVINO node names
        "classifier_with_heatmap_1/heatmap_1/sub;classifier_with_heatmap_1/heatmap_1/ExpandDims",  # a TFLite tensor
        "classifier_with_heatmap_1/features_1/vgg16_1/block5_conv1_1/convolution",
        "classifier_with_heatmap_1/head_1/probs_1/MatMul",
        "classifier_with_heatmap_1/heatmaps_1/odd",  # another layer's name that starts alike
    ]
    assert in_scope(names, float_scope()) == names[:2]
    assert in_scope(names, MAP_SCOPE) == [*names[:2], names[3]]
    assert in_scope(names, float_scope(["heatmap", "block5_conv1"])) == names[:3]


def _quantised_head_ops(export) -> dict[str, list[str]]:
    """What each quantised heatmap file quantises inside the head: ONNX Q/DQ nodes, TFLite non-float tensors."""
    import onnx
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.export.heatmap import in_scope
    from toolkit.export.int8_fix import HEAD_SCOPE

    nodes = onnx.load(str(export / "model_int8_heatmap.onnx"), load_external_data=False).graph.node
    found = {"onnx int8": [n.name for n in nodes if "QuantizeLinear" in n.op_type and in_scope([n.name], HEAD_SCOPE)]}
    for precision in ("int8", "dynamic"):
        graph = flatbuffer_utils.read_model(str(export / f"model_{precision}_heatmap.tflite")).subgraphs[0]
        names = {(t.name.decode() if isinstance(t.name, bytes) else t.name): t.type for t in graph.tensors}
        found[f"tflite {precision}"] = [n for n in in_scope(names, HEAD_SCOPE) if names[n] != 0]  # 0: FLOAT32
    return found


def test_quantised_heatmap_files_keep_the_map_and_the_head_float(demo_dir, tmp_path):
    """The base is quantised, the map and the head are not (export/heatmap.py: the head's int8 activations
    moved the demo run's maps most). OpenVINO: no FakeQuantize feeds an op the map alone depends on.

    With the mlp head (the default: its ReLU makes the channel weights per image), OpenVINO's TensorFlow
    frontend renames ops it creates for the map (the gap+gmp gradient's split and sum became "Transpose_..."),
    out of reach of the name pattern the other formats use (export/openvino_int8.py).
    """
    import openvino as ov

    from tests.conftest import HEATMAP_SIZE, train_config
    from toolkit.export import ExportOptions, export_run
    from toolkit.export.heatmap import in_scope
    from toolkit.export.int8_fix import HEAD_SCOPE
    from toolkit.export.openvino_int8 import map_only_ops
    from toolkit.parity import ParityOverrides
    from toolkit.train import train

    run = tmp_path / "run"
    train(train_config(demo_dir, run, image_size=HEATMAP_SIZE, head="mlp", epochs=1), log=lambda _m: None, verbose=0)
    loose = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0, max_map_diff=1.0)  # the files' graphs are judged
    export_run(run, ExportOptions(precisions=["int8", "dynamic"], calib_images=8, heatmap=True, overrides=loose))
    assert _quantised_head_ops(run / "export") == {"onnx int8": [], "tflite int8": [], "tflite dynamic": []}
    model = ov.Core().read_model(str(run / "export" / "model_int8_heatmap.xml"))
    map_only = set(map_only_ops(model))
    assert any(not name.startswith("classifier") for name in map_only)  # a renamed op is among them
    fed = {
        target.get_node().get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        for target in op.output(0).get_target_inputs()
    }
    assert fed and not fed & map_only, sorted(fed & map_only)
    assert not in_scope(fed, HEAD_SCOPE), in_scope(fed, HEAD_SCOPE)
