from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from typer.testing import CliRunner; from toolkit.cli import app; "
        "CliRunner().invoke(app, ['--help']); "
        "print([m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_errors_are_one_line_with_exit_code_2(tmp_path):
    """In-process (the exit code and stderr are the CLI's own; the no-TensorFlow checks keep their subprocesses)."""
    result = runner.invoke(
        app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--weights", "none"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not found" in lines[0]
    (tmp_path / "one" / "cls").mkdir(parents=True)
    result = runner.invoke(app, ["train", str(tmp_path / "one"), "--out", str(tmp_path / "run"), "--weights", "none"])
    assert result.exit_code == 2 and "at least two class folders" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_reports_bad_images_and_still_predicts_the_rest(exported_run, tmp_path):
    good = sorted((Path(json.loads((exported_run / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    model = exported_run / "export" / "model_float32.onnx"
    result = runner.invoke(app, ["predict", str(model), str(good[0]), str(bad), str(good[1]), "--json"])
    assert result.exit_code == 2
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["image"] for line in lines] == [str(good[0]), str(good[1])]
    assert set(lines[0]) == {"image", "label", "score", "probabilities", "calibrated"}
    assert lines[0]["calibrated"] is True  # the fixture's run is calibrated (the default)
    assert "broken.jpg" in result.stderr
    folder = good[0].parent
    ok = runner.invoke(app, ["predict", str(model), str(folder), "--top-k", "2"])
    assert ok.exit_code == 0
    rows = [line.split("\t") for line in ok.stdout.splitlines() if "\t" in line]
    assert [Path(r[0]).name for r in rows] == sorted(p.name for p in folder.iterdir())
    for _path, ranked, scores in rows:
        (first, p1), (second, p2) = [item.rsplit(" ", 1) for item in ranked.split(", ")]
        assert {first, second} == {"benign", "malignant"} and float(p1) >= float(p2)
        assert scores == "calibrated"
    assert "probabilities calibrated (temperature" in ok.stderr


def test_predict_missing_or_corrupt_model_exits_2(tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    result = runner.invoke(app, ["predict", str(tmp_path / "none.onnx"), str(image)])
    assert result.exit_code == 2 and "not found" in result.stderr
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    result = runner.invoke(app, ["predict", str(tmp_path / "bad.onnx"), str(image)])
    assert result.exit_code == 2 and "cannot load" in result.stderr


def test_evaluate_writes_metrics_and_confusion(exported_run, tmp_path):
    """On the validation images, evaluate reproduces the accuracy the parity gate recorded."""
    from tests.conftest import validation_folder

    data = validation_folder(exported_run, tmp_path / "val")
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    for name in ("model_int8.tflite", "model_float32.onnx"):
        out = tmp_path / name
        result = runner.invoke(app, ["evaluate", str(exported_run / "export" / name), str(data), "--out", str(out)])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
        entry = next(a for a in manifest["artifacts"] if a["path"] == name)
        assert metrics["accuracy"] == entry["parity"]["accuracy"]
        assert {"auc", "per_class", "confusion_matrix", "sensitivity", "specificity"} <= set(metrics)
        assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG" and (out / "roc.png").is_file()
        calibration = json.loads((out / "metrics.json").read_text())["calibration"]
        assert calibration["ece"] == pytest.approx(entry["parity"]["ece"], abs=1e-6)  # the gate's figure, again
        assert (out / "reliability.png").is_file() and "calibration: ECE" in result.stdout
        assert "probabilities calibrated (temperature" in result.stdout
    keras_result = runner.invoke(app, ["evaluate", str(exported_run / "best.keras"), str(data)])
    assert keras_result.exit_code == 0 and "accuracy" in keras_result.stdout


def test_export_cli_prints_table_and_json(exported_run):
    result = runner.invoke(app, ["export", str(exported_run), "--format", "onnx", "--precision", "float32", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    entry = next(a for a in manifest["artifacts"] if (a["format"], a["precision"]) == ("onnx", "float32"))
    assert entry["parity"]["passed"]
    table = runner.invoke(app, ["export", str(exported_run), "--format", "onnx", "--precision", "float32"])
    assert table.exit_code == 0, table.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.stdout.splitlines() if "│ onnx" in line]
    rows = [r for r in rows if r[1] == "float32"]
    assert len(rows) == 1
    fmt, precision, size, _diff, agreement, *_rest, parity = rows[0]
    assert (fmt, precision, parity) == ("onnx", "float32", "pass")
    assert float(size) == pytest.approx(entry["size_bytes"] / 1e6, abs=0.05)
    assert agreement == f"100.0% (0/{entry['parity']['images']})"
    assert "manifest:" in table.stdout


def test_truncated_real_models_are_one_line_errors_with_exit_2(exported_run, tmp_path):
    image = sorted((Path(json.loads((exported_run / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))[
        0
    ]
    for source in (
        exported_run / "export" / "model_int8.onnx",
        exported_run / "export" / "model_int8.tflite",
        exported_run / "best.keras",
    ):
        truncated = tmp_path / source.name
        data = source.read_bytes()
        truncated.write_bytes(data[: len(data) // 3])
        result = runner.invoke(app, ["predict", str(truncated), str(image)])
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, result.stderr
        assert len(errors) == 1 and errors[0].startswith("error:") and "Traceback" not in result.stderr
