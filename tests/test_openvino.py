"""The OpenVINO bf16 IR: exported and gated (conftest), run by OpenVINO as shipped and by the toolkit runtime."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import RuntimeModelError
from toolkit.fileio import LOCK_NAME
from toolkit.hardware import cpu_supports_bf16


def _entry(run, precision="bf16"):
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return next(a for a in manifest["artifacts"] if (a["format"], a["precision"]) == ("openvino", precision))


def test_ir_runs_in_plain_openvino_in_bf16_with_the_toolkit_metadata(exported_run):
    """An app that only calls Core().compile_model gets bf16 (where the CPU has it) and finds labels in rt_info."""
    import openvino as ov

    entry = _entry(exported_run)
    assert entry["path"] == "model_bf16.xml" and entry["weights"]["path"] == "model_bf16.bin"
    assert entry["parity"]["passed"] and entry["parity"]["thresholds"]["max_abs_diff"] == pytest.approx(0.25)
    core = ov.Core()
    model = core.read_model(str(exported_run / "export" / "model_bf16.xml"))
    assert json.loads(model.get_rt_info(["toolkit", "labels"]).astype(str)) == ["benign", "malignant"]
    compiled = core.compile_model(model, "CPU")  # no hint given: the IR's runtime_options carry it
    expected = "bf16" if cpu_supports_bf16() else "f32"
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == expected
    out = compiled(np.full((2, 32, 32, 3), 128, np.float32))[compiled.outputs[0]]
    assert out.shape == (2, 2) and np.allclose(out.sum(1), 1, atol=1e-2)


def test_runtime_loads_the_ir_and_matches_the_float_onnx_model(exported_run):
    from toolkit.runtime import load

    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ir = load(exported_run / "export" / "model_bf16.xml", device="cpu")
    reference = load(exported_run / "export" / "model_float32.onnx", device="cpu").predict_arrays(images)
    assert ir.labels == ["benign", "malignant"] and ir.backend.kind == "openvino"
    assert ir.backend.precision == ("bf16" if cpu_supports_bf16() else "f32")
    assert np.abs(ir.predict_arrays(images) - reference).max() < 8e-2


def test_ir_without_its_weights_is_a_one_line_error(exported_run, tmp_path):
    from toolkit.runtime import load

    shutil.copy(exported_run / "export" / "model_bf16.xml", tmp_path / "lonely.xml")
    with pytest.raises(RuntimeModelError, match=r"lonely\.bin is missing"):
        load(tmp_path / "lonely.xml")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "lonely.xml"), str(image)])
    assert result.exit_code == 2 and "lonely.bin is missing" in result.output
    assert "Traceback" not in result.output


def test_cli_predict_and_bench_take_the_ir(exported_run):
    from toolkit.bench import BenchOptions, run_bench

    ir = exported_run / "export" / "model_bf16.xml"
    images = exported_run.parent / "imgs"
    images.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(images / "a.png")
    result = CliRunner().invoke(app, ["predict", str(ir), str(images / "a.png"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["label"] in ("benign", "malignant")
    report = run_bench(exported_run, [], BenchOptions(formats=["openvino"], batches=(1,), warmup=1, runs=2, threads=1))
    rows = {row.name: row for row in report.records}
    assert sorted(rows) == ["openvino bf16", "openvino int8"] and {r.backend for r in rows.values()} == {"openvino"}
    for precision in ("bf16", "int8"):  # the size counts the .xml and its .bin
        size = _entry(exported_run, precision)["size_bytes"]
        assert rows[f"openvino {precision}"].size_mb * 1e6 == pytest.approx(size, rel=1e-6)
    assert rows["openvino int8"].floor_precision == "int8" and rows["openvino bf16"].floor_precision in ("bf16", "fp32")
    # what OpenVINO says it ran: the int8 IR's convolutions in int8 kernels; the bf16 IR's in bf16 only where native
    int8_convs = {k: n for k, n in rows["openvino int8"].kernels.items() if k.split()[-1] in ("u8", "i8")}
    assert sum(n for k, n in int8_convs.items() if k.startswith("Convolution")) == 6  # preprocessing + tiny's 5
    # (the primitive's name says what it computes in; runtimePrecision, its last word, is the weights' f16 there)
    bf16_convs = {k.split()[1] for k in rows["openvino bf16"].kernels if k.startswith("Convolution")}
    assert bf16_convs and all(k.lower().endswith("bf16" if cpu_supports_bf16() else "f32") for k in bf16_convs)


def test_a_killed_conversion_leaves_a_staging_folder_the_next_export_removes(trained_run, tmp_path):
    from toolkit.export import ExportOptions, export_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    leftover = run / "export" / ".model_bf16.xml.toolkit-tmp-abc"
    leftover.mkdir(parents=True)
    (leftover / "model_bf16.bin").write_bytes(b"partial")
    report = export_run(run, ExportOptions(format="openvino"))
    assert not report.failed and not leftover.exists()
    names = sorted(p.name for p in (run / "export").iterdir())
    assert names == [LOCK_NAME, "manifest.json", "model_bf16.bin", "model_bf16.xml", "model_int8.bin", "model_int8.xml"]


def test_int8_ir_is_nncf_quantized_gated_and_runs_in_int8(exported_run):
    """OpenVINO's own int8: FakeQuantize before the convolutions, calibrated on training images, the record in rt_info."""
    import openvino as ov

    from toolkit.data import load_labelled_folder
    from toolkit.export.openvino_int8 import quantized_layers
    from toolkit.runtime import load

    entry = _entry(exported_run, "int8")
    ir = exported_run / "export" / "model_int8.xml"
    assert entry["path"] == "model_int8.xml" and entry["weights"]["path"] == "model_int8.bin"
    assert entry["calibration"] == {"method": "minmax", "images": 16} and entry["inference_precision"] == "int8"
    assert "nncf" in entry["versions"]
    assert len(quantized_layers(ir)) == 7  # the preprocessing conv, the tiny base's 5 convolutions and the head
    model = ov.Core().read_model(str(ir))
    assert json.loads(model.get_rt_info(["toolkit", "labels"]).astype(str)) == ["benign", "malignant"]
    classifier = load(ir, device="cpu")
    assert classifier.backend.precision == "int8"
    # Images like the calibration's (the test split): noise lies outside the calibrated ranges, where int8 clips.
    test_dir = json.loads((exported_run / "config.json").read_text())["data_dir"] + "/test"
    _, arrays = load_labelled_folder(test_dir, (32, 32), ["benign", "malignant"])
    reference = load(exported_run / "export" / "model_float32.onnx", device="cpu").predict_arrays(arrays.images)
    assert np.abs(classifier.predict_arrays(arrays.images) - reference).max() < 0.05


def test_int8_ir_fix_is_nncf_accuracy_control_within_the_budget(vgg16_run, tmp_path, monkeypatch):
    """A failing OpenVINO int8 gate under --int8-max-drop: NNCF reverts layers until validation accuracy holds.

    On the VGG16 run: with a razor-thin operating point, int8 noise costs it validation accuracy, which
    NNCF's accuracy control (ranking by accuracy on labelled images) can see; the tiny base's accuracy
    sits at chance, so no reverted layer could show there.
    """
    from tests.test_int8_fix import _razor_thin_operating_point
    from toolkit.export import ExportOptions, export_run
    from toolkit.export.openvino_int8 import quantized_layers
    from toolkit.parity import ParityOverrides

    run = tmp_path / "run"
    shutil.copytree(vgg16_run, run)
    _razor_thin_operating_point(run)
    strict = ParityOverrides(min_agreement=1.0)
    base = dict(format="openvino", precisions=["int8"], calib_images=1, overrides=strict)
    assert export_run(run, ExportOptions(**base)).failed, "the strict gate must fail without the fix"
    import nncf

    restorer = []
    real = nncf.quantize_with_accuracy_control

    def recorded(*args, **kwargs):
        restorer.append(kwargs["advanced_accuracy_restorer_parameters"].max_num_iterations)
        return real(*args, **kwargs)

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", recorded)
    report = export_run(run, ExportOptions(**base, int8_max_drop=0, int8_max_float_layers=3))
    assert restorer == [3]  # --int8-max-float-layers bounds the groups NNCF may revert
    (entry,) = report.manifest["artifacts"]
    fix = entry["int8_fix"]
    assert [a.get("method") for a in fix["attempts"]] == [None, "nncf.quantize_with_accuracy_control"]
    parity = entry["parity"]
    assert parity["accuracy"] >= parity["reference_accuracy"] - 1e-9  # the budget of 0 points held
    reverted = set(fix["float_layers"])
    assert reverted and reverted.isdisjoint(quantized_layers(run / "export" / "model_int8.xml"))
    assert fix["latency_ms"]["timing"] == "interleaved"
