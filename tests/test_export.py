from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from toolkit.errors import ExportError
from toolkit.fileio import LOCK_NAME

EXPECTED = {
    ("onnx", "float32"),
    ("onnx", "int8"),
    ("tflite", "float32"),
    ("tflite", "float16"),
    ("tflite", "dynamic"),
    ("tflite", "int8"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
}


def _manifest(run):
    return json.loads((run / "export" / "manifest.json").read_text())


def test_manifest_lists_every_artifact_with_matching_sha256(exported_run):
    manifest = _manifest(exported_run)
    assert {(a["format"], a["precision"]) for a in manifest["artifacts"]} == EXPECTED
    assert manifest["source"]["sha256"] == hashlib.sha256((exported_run / "best.keras").read_bytes()).hexdigest()
    for a in manifest["artifacts"]:
        path = exported_run / "export" / a["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"]
        weights = a.get("weights")  # an OpenVINO IR's .bin, hashed and counted in the artifact's size
        if weights:
            bin_path = path.with_name(weights["path"])
            assert hashlib.sha256(bin_path.read_bytes()).hexdigest() == weights["sha256"]
        assert a["size_bytes"] == path.stat().st_size + (weights["size_bytes"] if weights else 0)
        assert a["labels"] == ["benign", "malignant"] and a["image_size"] == 32
        assert a["source_sha256"] == manifest["source"]["sha256"]
        p = a["parity"]
        # 6 validation images judge accuracy; the 18 training images join them for agreement
        assert p["images"] == 24 and p["accuracy_images"] == 6 and p["parts"]["validation"]["images"] == 6
        assert p["decision_rule"] and len(p["agreement_ci95"]) == 2 and p["flips"] >= 0
        assert {
            "max_abs_diff",
            "mean_abs_diff",
            "top1_agreement",
            "accuracy",
            "reference_accuracy",
            "thresholds",
            "passed",
        } <= set(p)
    float32 = [a for a in manifest["artifacts"] if a["precision"] == "float32"]
    assert all(a["parity"]["passed"] and a["parity"]["max_abs_diff"] < 1e-4 for a in float32)
    assert [p.name for p in (exported_run / "export").glob(".*")] == [LOCK_NAME]  # no temporary leftovers


def test_onnx_artifacts_run_in_onnxruntime_with_named_io_and_metadata(exported_run):
    import onnx
    import onnxruntime as ort

    for name in ("model_float32.onnx", "model_int8.onnx"):
        path = exported_run / "export" / name
        model = onnx.load(str(path))
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["labels"]) == ["benign", "malignant"] and meta["toolkit_version"]
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        assert inp.name == "image" and inp.shape[0] == "batch" and session.get_outputs()[0].name == "probs"
        out = session.run(None, {"image": np.full((3, 32, 32, 3), 128, np.float32)})[0]
        assert out.shape == (3, 2) and np.allclose(out.sum(1), 1, atol=1e-2)
    int8 = onnx.load(str(exported_run / "export" / "model_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)


def test_tflite_artifacts_run_in_litert(exported_run):
    from ai_edge_litert.interpreter import Interpreter

    for precision in ("float32", "float16", "dynamic", "int8"):
        interpreter = Interpreter(model_path=str(exported_run / "export" / f"model_{precision}.tflite"))
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        if precision == "int8":
            assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)
            x = np.full((1, 32, 32, 3), 128, np.uint8)
        else:
            assert inp["dtype"] == np.float32
            x = np.full((1, 32, 32, 3), 128, np.float32)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert out.shape == (1, 2) and np.isfinite(out).all()


def test_gate_catches_an_artifact_whose_weights_changed_after_export(trained_run, tmp_path, monkeypatch):
    """Tamper with the converted ONNX weights: the gate must fail and keep the artifact, marked."""
    import onnx
    from onnx import numpy_helper

    from toolkit.export import ExportOptions, export_run, onnx_float
    from toolkit.export.base import ExportFormat

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    real = onnx_float.FORMAT

    def convert_then_tamper(ctx, dest):
        real.convert(ctx, dest)
        model = onnx.load(str(dest))
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.ndim == 2:  # the Dense kernel of the head
                init.CopyFrom(numpy_helper.from_array((arr * -3.0).astype(arr.dtype), init.name))
        onnx.save(model, str(dest))

    tampered = ExportFormat(**{**real.__dict__, "convert": convert_then_tamper})
    monkeypatch.setitem(__import__("toolkit.export", fromlist=["REGISTRY"]).REGISTRY, "onnx-float32", tampered)
    report = export_run(run, ExportOptions(format="onnx", precisions=["float32"]))
    assert len(report.failed) == 1
    entry = report.manifest["artifacts"][0]
    assert entry["parity"]["passed"] is False and entry["parity"]["failures"] and entry["advice"]
    assert (run / "export" / "model_float32.onnx").is_file()


def test_failed_conversion_leaves_no_artifact_and_no_manifest_entry(trained_run, tmp_path, monkeypatch):
    from toolkit.export import REGISTRY, ExportOptions, export_run
    from toolkit.export.base import ExportFormat

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)

    def broken(ctx, dest):
        dest.write_bytes(b"half a model")
        raise ExportError("converter crashed")

    real = REGISTRY["tflite-float16"]
    monkeypatch.setitem(REGISTRY, "tflite-float16", ExportFormat(**{**real.__dict__, "convert": broken}))
    with pytest.raises(ExportError, match="converter crashed"):
        export_run(run, ExportOptions(format="tflite", precisions=["float16"]))
    assert not (run / "export" / "model_float16.tflite").exists()
    assert [p.name for p in (run / "export").iterdir()] == [LOCK_NAME]  # only the (released) lock file


def test_bad_options_are_export_errors(trained_run):
    from toolkit.export import ExportOptions, export_run

    with pytest.raises(ExportError, match="--format"):
        export_run(trained_run, ExportOptions(format="coreml"))
    with pytest.raises(ExportError, match="--opset"):
        export_run(trained_run, ExportOptions(opset=19))


@pytest.mark.slow  # a killed export subprocess
def test_export_killed_halfway_leaves_nothing_that_looks_valid(trained_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults", "export-float16", str(marker), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "export" / "model_float16.tflite").exists()
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert [(a["format"], a["precision"]) for a in manifest["artifacts"]] == [("tflite", "float32")]
    for a in manifest["artifacts"]:
        assert hashlib.sha256((run / "export" / a["path"]).read_bytes()).hexdigest() == a["sha256"]


def test_full_disk_during_export_is_one_error_and_keeps_the_previous_artifact(exported_run, tmp_path, monkeypatch):
    import errno

    from toolkit.errors import DiskFullError
    from toolkit.export import REGISTRY, ExportOptions, export_run
    from toolkit.export.base import ExportFormat

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    before = (run / "export" / "model_int8.tflite").read_bytes()

    def disk_full(ctx, dest):
        dest.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    real = REGISTRY["tflite-int8"]
    monkeypatch.setitem(REGISTRY, "tflite-int8", ExportFormat(**{**real.__dict__, "convert": disk_full}))
    with pytest.raises(DiskFullError, match="previous file was kept"):
        export_run(run, ExportOptions(format="tflite", precisions=["int8"]))
    assert (run / "export" / "model_int8.tflite").read_bytes() == before
    assert [p.name for p in (run / "export").iterdir() if p.name.startswith(".")] == [LOCK_NAME]


def _activation_scales(path) -> dict[str, float]:
    """Per-tensor activation scales of an int8 artifact (ONNX initialisers named *_scale; TFLite tensor details)."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        return {
            i.name: float(numpy_helper.to_array(i))
            for i in model.graph.initializer
            if i.name.endswith("_scale") and numpy_helper.to_array(i).size == 1
        }
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return {
        d["name"]: float(d["quantization_parameters"]["scales"][0])
        for d in details
        if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1
    }


@pytest.mark.slow  # three int8 exports per format
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_each_calibration_method_is_used_and_recorded(trained_run, tmp_path, fmt):
    """minmax, entropy and percentile give different activation ranges, on stratified training images."""
    from toolkit.export import ExportOptions, export_run
    from toolkit.parity import ParityOverrides

    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)  # the random 32 px model (conftest)
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        run = tmp_path / method
        shutil.copytree(trained_run, run)
        options = ExportOptions(
            format=fmt,
            precisions=["int8"],
            calib_images=8,
            calibration=method,
            calibration_percentile=99.0,
            overrides=relaxed,
        )
        entry = export_run(run, options).manifest["artifacts"][0]
        expected = {"method": method, "images": 8, **({"percentile": 99.0} if method == "percentile" else {})}
        assert entry["calibration"] == expected
        scales[method] = _activation_scales(run / "export" / entry["path"])
    shared = set(scales["minmax"]) & set(scales["entropy"]) & set(scales["percentile"])
    assert len(shared) >= 7  # the tiny base: preprocessing, 5 convolutions, the head's input (at least)
    for other in ("entropy", "percentile"):  # clipped ranges: smaller activation scales somewhere
        assert any(scales[other][n] < scales["minmax"][n] * 0.99 for n in shared), other


def test_onnx_percentile_after_entropy_reads_the_same_histograms_without_running_the_model(
    exported_run, tmp_path, monkeypatch
):
    """One ONNX Runtime histogram collection serves both methods: the second one's ranges equal a fresh one's."""
    import onnxruntime.quantization.calibrate as ort_calibrate

    from toolkit.export.onnx_calibration import calibrate_ranges
    from toolkit.run_folder import load_run

    model = exported_run / "export" / "model_float32.onnx"
    images = np.asarray(load_run(exported_run).load_data().train.images[:12])
    percentile = {"method": "percentile", "percentile": 99.0, "images": 12}
    folders = {name: tmp_path / name for name in ("fresh", "entropy", "shared")}
    for folder in folders.values():
        folder.mkdir()
    fresh = calibrate_ranges(model, images, percentile, folders["fresh"], {})
    histograms: dict = {}
    entropy = calibrate_ranges(model, images, {"method": "entropy", "images": 12}, folders["entropy"], histograms)
    assert histograms and entropy.read_text() != fresh.read_text()

    def no_second_run(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(ort_calibrate, "create_calibrator", no_second_run)
    shared = calibrate_ranges(model, images, percentile, folders["shared"], histograms)
    assert shared.read_text() == fresh.read_text()


def test_entropy_search_reads_a_histogram_merged_back_to_its_bin_count(monkeypatch):
    """ONNX Runtime adds bins when a later image reaches further than the first (a quiet first image: many
    times 2,048); its entropy search is quadratic in them, so it gets the histogram merged back, counts kept."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from toolkit.export.onnx_calibration import bounded_histogram, histogram_collector, histogram_thresholds

    rng = np.random.default_rng(0)
    collector = histogram_collector({"method": "entropy", "images": 2})
    collector.collect_value({"t": rng.normal(0, 0.01, 1_000).astype(np.float32)})
    collector.collect_value({"t": rng.normal(0, 1.0, 100_000).astype(np.float32)})
    grown = collector.histogram_dict["t"]
    assert len(grown[0]) > 20 * 2048  # what ONNX Runtime's merge does
    counts, edges, *_ = bounded_histogram(grown, 2048)
    assert 2048 <= len(counts) < 2 * 2048 + 2 and counts.sum() == grown[0].sum() and len(edges) == len(counts) + 1
    assert edges[len(counts) // 2] == pytest.approx(0.0, abs=1e-6) and edges[0] == pytest.approx(-edges[-1])
    assert edges[0] <= grown[1][0] and np.argmax(counts) in (len(counts) // 2 - 1, len(counts) // 2)
    searched = []

    def spy(self, histogram, num_quantized_bins):
        searched.append(len(histogram[0]))
        return histogram[1][0], histogram[1][-1]

    monkeypatch.setattr(HistogramCollector, "get_entropy_threshold", spy)
    histogram_thresholds({"method": "entropy", "images": 2}, {"t": grown}, collect=None)
    assert searched == [len(counts)]


def test_calibration_images_come_from_every_class_of_train(trained_run, monkeypatch):
    import toolkit.export.pipeline as export_module
    from toolkit.run_folder import load_run

    train = load_run(trained_run).load_data().train
    images = export_module._calibration_subset(train, 4, seed=0)
    per_class = [int((train.labels == c).sum()) for c in (0, 1)]
    assert len(images) == 4 and min(per_class) >= 2
    index = {bytes(np.asarray(train.images[i]).tobytes()): int(train.labels[i]) for i in range(len(train.labels))}
    assert sorted(index[bytes(img.tobytes())] for img in images) == [0, 0, 1, 1]


@pytest.mark.slow  # int8 exports and diagnosis
def test_diagnose_ranks_every_quantized_layer_of_both_int8_paths_and_runs_when_a_gate_fails(trained_run, tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.export import ExportOptions, export_run
    from toolkit.parity import ParityOverrides

    run = tmp_path / "asked"
    shutil.copytree(trained_run, run)
    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)  # the random 32 px model (conftest)
    options = ExportOptions(precisions=["int8"], calib_images=8, diagnose=True, overrides=relaxed)
    report = json.loads(export_run(run, options).diagnosis.read_text())
    onnx, tflite = report["artifacts"]
    assert report["images"] == 16 and (onnx["artifact"], tflite["artifact"]) == ("model_int8.onnx", "model_int8.tflite")
    added = [row["noise_added"] for row in onnx["layers"]]
    assert len(added) > 10 and added == sorted(added, reverse=True)  # worst (most drift added) first
    assert any("block1_conv1" in row["tensor"] for row in onnx["layers"])
    steps = [row["rmse_steps"] for row in tflite["layers"]]
    assert len(steps) > 10 and steps == sorted(steps, reverse=True)  # worst (most quantization steps) first
    assert any("block1_conv1" in row["tensor"] for row in tflite["layers"])
    assert (run / "export" / "quant_report.png").stat().st_size > 0

    failing = tmp_path / "failing"
    shutil.copytree(trained_run, failing)
    impossible = ParityOverrides(min_agreement=1.01)  # no artifact can agree more than 100%: the gate fails
    report = export_run(
        failing, ExportOptions(format="onnx", precisions=["float32", "int8"], calib_images=8, overrides=impossible)
    )
    assert report.failed and report.diagnosis == failing / "export" / "quant_report.json"
    assert [d["artifact"] for d in json.loads(report.diagnosis.read_text())["artifacts"]] == ["model_int8.onnx"]

    shown = CliRunner().invoke(
        app,
        [
            "export",
            str(run),
            "--format",
            "onnx",
            "--precision",
            "int8",
            "--diagnose",
            "--calib-images",
            "8",
            "--min-agreement",
            "0",
            "--max-accuracy-drop",
            "1",
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert "noisiest layers of model_int8.onnx" in shown.output


def test_two_step_tflite_int8_with_minmax_matches_the_converters_one_step_model(exported_run, tmp_path):
    """Calibrate, then quantise (what makes --calibration and the denylist possible) changes nothing by default."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from toolkit.export.tflite import anchored_calibration
    from toolkit.keras_io import load_keras_model
    from toolkit.run_folder import load_run

    run = load_run(exported_run)
    train = run.load_data().train
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["path"] == "model_int8.tflite")
    assert entry["calibration"]["method"] == "minmax"
    import toolkit.export.pipeline as export_module

    images = export_module._calibration_subset(train, entry["calibration"]["images"], int(run.config["seed"]))
    converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(run.best))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([i[None].astype(np.float32)] for i in anchored_calibration(images))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type, converter.inference_output_type = tf.uint8, tf.float32
    one_step = converter.convert()

    def outputs(**source):
        interpreter = Interpreter(**source)
        interpreter.allocate_tensors()
        x = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    two_step = outputs(model_path=str(exported_run / "export" / "model_int8.tflite"))
    np.testing.assert_array_equal(two_step, outputs(model_content=one_step))


def test_each_tflite_file_holds_the_weights_its_precision_names(exported_run):
    """float16 stores float16 weights, dynamic and int8 int8 ones, float32 neither (a converter flag gone wrong)."""
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {}
    for precision in ("float32", "float16", "dynamic", "int8"):
        details = Interpreter(
            model_path=str(exported_run / "export" / f"model_{precision}.tflite")
        ).get_tensor_details()
        dtypes[precision] = {np.dtype(d["dtype"]).name for d in details}
    assert "float16" in dtypes["float16"] and "int8" not in dtypes["float16"]
    assert not {"float16", "int8"} & dtypes["float32"]
    assert "int8" in dtypes["dynamic"] and "int8" in dtypes["int8"]
