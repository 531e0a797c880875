"""The command line's contract: one vocabulary, choices checked before work, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()
RESULT_COMMANDS = ("demo-data", "train", "export", "predict", "evaluate", "bench")


def _options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params for o in p.opts} for name, cmd in group.commands.items()}


def _one_error_line(result, code: int, needle: str) -> None:
    """Exactly one `error:` line (progress lines may precede it) naming `needle`, and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_one_vocabulary_across_commands():
    options = _options()
    every = set().union(*options.values())
    assert not every & {"--batch", "--formats", "--size", "--cuda", "--no-cuda"}  # the old spellings are gone
    for name in ("train", "predict", "evaluate", "bench"):
        assert "--batch-size" in options[name], name
    for name in ("export", "bench"):
        assert {"--format", "--precision"} <= options[name], name
    for name in ("predict", "evaluate", "bench"):
        assert "--device" in options[name], name
    for name in ("demo-data", "train"):
        assert "--image-size" in options[name], name
    for name in RESULT_COMMANDS:
        assert "--json" in options[name], name
    assert "--base-precision" in options["train"] and "--precision" not in options["train"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "DATA", "--head", "dense"], "'dense' is not one of"),
        (["train", "DATA", "--monitor", "val_acc"], "'val_acc' is not one of"),
        (["train", "DATA", "--base-precision", "fp8"], "'fp8' is not one of"),
        (["predict", "m.onnx", "x.jpg", "--device", "tpu"], "'tpu' is not one of"),
        (["predict", "m.onnx", "x.jpg", "--batch-size", "0"], "greater than or equal to 1"),
        (["evaluate", "m.onnx", "DATA", "--batch-size", "0"], "greater than or equal to 1"),
        (["export", "RUN", "--precision", "float32,int9"], "'int9' not among"),
        (["export", "RUN", "--parity-images", "0"], "greater than or equal to 1"),
        (["bench", "RUN", "--format", "pytorch"], "'pytorch' not among"),
        (["export", "RUN", "--int8-max-drop", "-1"], "greater than or equal to 0"),
        (["export", "RUN", "--int8-max-float-layers", "0"], "greater than or equal to 1"),
        (["train", "DATA", "--fine-tune-schedule", "linear"], "'linear' is not one of"),
    ],
)
def test_bad_choices_are_refused_before_any_work(args, needle):
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and needle in " ".join(result.output.replace("│", " ").split()), result.output


def test_help_lists_the_choices():
    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "flatten|gap" in text and "val_loss, val_accuracy, val_auc" in text


def test_train_help_reads_at_80_columns_in_the_config_groups():
    """No line over 80 columns, no option name cut, the options under TrainConfig's concerns."""
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and max(map(len, lines)) <= 80 and "…" not in result.stdout
    for panel in ("Data:", "Base network:", "Head:", "Optimisation:", "Fine-tuning:", "Decision (two classes):"):
        assert panel in lines, panel
    text = " ".join(result.stdout.split())
    assert "--validate-on-test / --no-validate-on-test" in text and "resnet50v2: conv5, conv4" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--image-size", "16"], "--image-size must be at least 32 for vgg16, got 16"),
        (["--base", "mobilenetv2", "--fine-tune-from", "block5"], "one of block_13, block_6 for mobilenetv2"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--patience", "-1"], "--patience must be 0 or more"),
        (["--base", "resnet"], "unknown base resnet; choose from vgg16"),
    ],
)
def test_train_ranges_are_checked_once_by_the_library(args, needle, tmp_path):
    """The CLI carries no ranges: TrainConfig.validate refuses, in one line with exit 2, before any work."""
    result = runner.invoke(app, ["train", str(tmp_path / "absent"), "--out", str(tmp_path / "run"), *args])
    _one_error_line(result, 2, needle)


def test_internal_errors_are_one_line_with_exit_3_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    import toolkit.data.demo

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(toolkit.data.demo, "write_demo_dataset", broken)
    result = runner.invoke(app, ["demo-data", str(tmp_path / "d")])
    _one_error_line(result, 3, "internal error (ZeroDivisionError: a bug); run with --debug")
    debug = runner.invoke(app, ["--debug", "demo-data", str(tmp_path / "d")])
    assert debug.exit_code == 3 and "ZeroDivisionError: a bug" in debug.output  # the traceback, same exit code


def test_unwritable_output_folders_are_one_line_errors(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_error_line(runner.invoke(app, ["demo-data", str(blocker / "demo"), "--per-class", "2"]), 2, "a-file")
    data = tmp_path / "data"
    runner.invoke(app, ["demo-data", str(data), "--per-class", "4", "--image-size", "32"])
    result = runner.invoke(app, ["train", str(data), "--out", str(blocker / "run"), "--weights", "none"])
    _one_error_line(result, 2, "a-file")


def test_damaged_run_files_are_one_line_errors(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    data = json.loads((run / "config.json").read_text())["data_dir"]
    (run / "train_state.json").write_text("{broken")
    result = runner.invoke(app, ["train", data, "--out", str(run), "--resume", "--image-size", "32"])
    _one_error_line(result, 2, "train_state.json")
    (run / "config.json").write_text("[1, 2")
    _one_error_line(runner.invoke(app, ["train", data, "--out", str(run), "--resume"]), 2, "config.json")
    _one_error_line(runner.invoke(app, ["export", str(run)]), 2, "config.json")
    (run / "labels.json").unlink()
    _one_error_line(runner.invoke(app, ["bench", str(run)]), 2, "labels.json")


def test_corrupt_labels_beside_a_keras_file_is_one_line(trained_run, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(trained_run / "best.keras", folder / "best.keras")
    (folder / "labels.json").write_text("{oops")
    image = next((Path(json.loads((trained_run / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))
    _one_error_line(runner.invoke(app, ["predict", str(folder / "best.keras"), str(image)]), 2, "labels.json")


def test_resume_refuses_flags_that_differ_from_the_stored_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("cache"))
    data = json.loads((run / "config.json").read_text())["data_dir"]
    result = runner.invoke(app, ["train", data, "--out", str(run), "--resume", "--lr", "0.5", "--head", "gap"])
    _one_error_line(result, 2, "these differ: head gap (stored: flatten); lr 0.5 (stored: 0.001)")
    other = runner.invoke(app, ["train", str(tmp_path), "--out", str(run), "--resume"])
    _one_error_line(other, 2, "data_dir")


def test_progress_is_one_line_per_phase_off_a_terminal_and_silent_with_json(exported_run):
    args = ["export", str(exported_run), "--format", "onnx", "--precision", "float32"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "converting onnx float32: done in" in shown.stderr
    assert "parity of onnx float32 on 24 images: done in" in shown.stderr
    silent = runner.invoke(app, [*args, "--json"])
    assert silent.exit_code == 0 and "done in" not in silent.stderr and json.loads(silent.stdout)["artifacts"]
    quiet = runner.invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0 and "done in" not in quiet.stderr


def test_training_reports_decoding_and_feature_extraction(demo_dir, tmp_path):
    args = ["train", str(demo_dir), "--out", str(tmp_path / "r"), "--image-size", "32", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--weights", "none", "--batch-size", "8", "--aug-views", "2"])
    assert result.exit_code == 0, result.output
    for phase in ("decoding training images: 20/20", "validation features: 4/4", "augmented view 2/2: 20/20"):
        assert phase in result.stderr, result.stderr


def test_json_results_on_train_evaluate_and_demo_data(exported_run, tmp_path):
    demo = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--per-class", "4", "--image-size", "32", "--json"])
    assert json.loads(demo.stdout)["counts"]["test"] == {"benign": 1, "malignant": 1}
    data = Path(json.loads((exported_run / "config.json").read_text())["data_dir"]) / "test"
    model = str(exported_run / "export" / "model_float32.onnx")
    result = runner.invoke(app, ["evaluate", model, str(data), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["metrics"]["count"] == 8
    assert "decoding images" not in result.stderr
    shown = runner.invoke(app, ["evaluate", model, str(data)])
    assert shown.exit_code == 0 and "decoding images: 8/8 done in" in shown.stderr


def test_both_onnxruntime_packages_are_refused_with_the_fix(exported_run, monkeypatch):
    from toolkit.runtime import onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "installed_onnxruntimes", lambda: {"onnxruntime", "onnxruntime-gpu"})
    image = next((Path(json.loads((exported_run / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))
    result = runner.invoke(app, ["predict", str(exported_run / "export" / "model_float32.onnx"), str(image)])
    _one_error_line(result, 2, "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def test_artifacts_are_readable_by_others_and_stale_temporaries_are_cleaned(exported_run, tmp_path):
    from toolkit.fileio import remove_stale_temporaries, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
    for name in ("model_float32.onnx", "model_int8.tflite", "manifest.json"):
        assert (exported_run / "export" / name).stat().st_mode & 0o044 == 0o044, name
    stale = tmp_path / ".best.keras.toolkit-tmp-abc123.keras"
    stale.write_bytes(b"half a model")
    keep = tmp_path / ".hidden-user-file"
    keep.write_text("mine")
    assert remove_stale_temporaries(tmp_path) == 1 and not stale.exists() and keep.exists()


@pytest.mark.slow  # a wheel, a venv, pip
def test_base_install_predicts_without_tensorflow(exported_run, tmp_path):
    """Build the wheel, install only the base into a fresh venv, and run predict on ONNX and TFLite."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(root),
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("toolkit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    python = str(venv / "bin/python")
    missing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'tf2onnx') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]"
    image = next((Path(json.loads((exported_run / "config.json").read_text())["data_dir"]) / "test").rglob("*.jpg"))
    for name in ("model_float32.onnx", "model_int8.tflite"):
        out = subprocess.run(
            [str(venv / "bin/toolkit"), "predict", str(exported_run / "export" / name), str(image), "--json"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["label"] in ("benign", "malignant")
    train = subprocess.run([str(venv / "bin/toolkit"), "train", str(tmp_path)], capture_output=True, text=True)
    assert train.returncode == 2 and "pip install 'toolkit[train]'" in train.stderr and "Traceback" not in train.stderr
    onnx = str(exported_run / "export" / "model_float32.onnx")
    for args, extra in (
        (["serve", onnx, "--port", "0"], "toolkit[serve]"),
        (["predict", onnx, str(image), "--engine", "ray", "--out", str(tmp_path / "p.csv")], "toolkit[ray]"),
        (["predict", onnx, str(image), "--out", str(tmp_path / "p.parquet")], "toolkit[ray]"),
    ):
        out = subprocess.run([str(venv / "bin/toolkit"), *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and extra in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr


def test_malformed_tf_config_under_multiworker_is_one_line(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: nope")
    args = ["train", str(demo_dir), "--out", str(tmp_path / "r"), "--strategy", "multiworker", "--weights", "none"]
    _one_error_line(runner.invoke(app, args), 2, "TF_CONFIG is not valid JSON")
