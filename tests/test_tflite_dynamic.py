"""TFLite dynamic range: layers kept float after conversion, and the automatic fix that chooses them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_int8_fix import planted_run  # noqa: F401  (the module-scoped fixture, shared)
from toolkit.cli import app
from toolkit.errors import ExportError
from toolkit.export import ExportOptions, export_run
from toolkit.export.tflite_dynamic import hybrid_operators, keep_float, own_errors
from toolkit.runtime.tflite import TFLiteBackend

pytestmark = pytest.mark.slow  # TFLite conversions


def _pixels(run, n: int = 8) -> np.ndarray:
    from toolkit.run_folder import load_run

    return np.asarray(load_run(run).load_data().val.images[:n])


def test_every_layer_kept_float_computes_what_the_float32_file_computes(exported_run, tmp_path):
    blob = (exported_run / "export" / "model_dynamic.tflite").read_bytes()
    twin = (exported_run / "export" / "model_float32.tflite").read_bytes()
    hybrid = hybrid_operators(blob)
    assert hybrid and all(isinstance(name, str) for name in hybrid)  # the convolutions and dense layers
    (tmp_path / "float.tflite").write_bytes(keep_float(blob, hybrid, twin))
    assert hybrid_operators((tmp_path / "float.tflite").read_bytes()) == []  # nothing left hybrid
    pixels = _pixels(exported_run)
    float32 = TFLiteBackend(exported_run / "export" / "model_float32.tflite").run(pixels)
    restored = TFLiteBackend(tmp_path / "float.tflite").run(pixels)
    dynamic = TFLiteBackend(exported_run / "export" / "model_dynamic.tflite").run(pixels)
    assert np.abs(restored - float32).max() < 1e-6  # float weights, float kernels: the float32 file's outputs
    assert np.abs(dynamic - float32).max() > 1e-4  # the int8 rounding that was there
    with pytest.raises(ExportError, match="no TFLite operator named nowhere"):
        keep_float(blob, ["nowhere"], twin)


def test_a_plain_dynamic_export_fails_on_the_planted_layer_and_the_fix_keeps_its_reader_float(planted_run, tmp_path):  # noqa: F811
    """block3_conv1 has one channel 1000x wider: quantizing block4_conv1's input per batch crushes the rest."""
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    plain = export_run(run, ExportOptions(format="tflite", precisions=["float32", "dynamic"]))
    assert [a["precision"] for a in plain.failed] == ["dynamic"], "the planted model must fail without the fix"
    blob, twin = ((run / "export" / f"model_{p}.tflite").read_bytes() for p in ("dynamic", "float32"))
    ranked = [name for name, _ in own_errors(blob, twin, _pixels(run, 4).astype(np.float32))]
    assert "block4_conv1" in ranked[0], ranked[:3]  # the planted range's reader adds the most error
    fixed = CliRunner().invoke(
        app,
        ["export", str(run), "--format", "tflite", "--precision", "dynamic"]
        + ["--int8-max-drop", "0", "--int8-max-float-layers", "3"],
    )
    assert fixed.exit_code == 0, fixed.output
    artifacts = json.loads((run / "export" / "manifest.json").read_text())["artifacts"]
    (entry,) = [a for a in artifacts if a["precision"] == "dynamic"]
    fix = entry["int8_fix"]
    assert entry["parity"]["passed"] and entry["parity"]["flips"] == 0
    assert "calibration" not in fix and "calibration" not in entry  # dynamic range calibrates nothing
    assert fix["attempts"][0]["float_layers"] == 0 and not fix["attempts"][0]["passed"]
    assert any("block4_conv1" in name for name in fix["float_layers"]), fix["float_layers"]
    assert fix["latency_ms"]["timing"] == "interleaved"
    assert f"tflite dynamic: passed after {len(fix['attempts'])} attempts;" in fixed.output
