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
    (row,) = report.records
    assert row.name == "openvino bf16" and row.backend == "openvino"
    assert row.size_mb * 1e6 == pytest.approx(_entry(exported_run)["size_bytes"], rel=1e-6)  # .xml and .bin


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
    assert names == [LOCK_NAME, "manifest.json", "model_bf16.bin", "model_bf16.xml"]
