"""Two processes, one folder; files that vouch for themselves; one line for every error.

Each test names the case of the reliability issue it covers. Concurrency uses real
processes (a lock holder, or two exports) with bounded waits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import FolderBusyError, RuntimeModelError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from toolkit.fileio import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    """A second process holding `folder`'s lock for `seconds` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, env=_env())
    assert proc.stdout.readline().strip() == b"held"
    return proc


def _one_line(result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output


def _flip(path: Path, at: float = 0.5) -> None:
    """Flip one byte inside the weights, so that the file still parses (an ONNX file: its largest tensor)."""
    data = bytearray(path.read_bytes())
    start, length = 0, len(data)
    if path.suffix == ".onnx":
        import onnx

        raw = max((t.raw_data for t in onnx.load(str(path)).graph.initializer), key=len)
        start, length = data.find(raw), len(raw)
    data[start + int(length * at)] ^= 0xFF
    path.write_bytes(bytes(data))


# 1. two trainings into one --out


@pytest.mark.slow
@pytest.mark.xdist_group("locks")  # racing processes: timing-sensitive, kept off the other worker
def test_second_writer_of_a_run_folder_exits_2_naming_the_holder(demo_dir, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out, 60)
    try:
        args = ["train", str(demo_dir), "--out", str(out), "--weights", "none", "--image-size", "32", "--epochs", "1"]
        result = runner.invoke(app, args)
        _one_line(result, 2, f"in use by PID {holder.pid}")
        assert str(out) in result.stderr and not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait(10)


@pytest.mark.slow
@pytest.mark.xdist_group("locks")  # racing processes: timing-sensitive, kept off the other worker
def test_lock_is_released_when_its_holder_is_killed_and_wait_waits(tmp_path):
    from toolkit.fileio import folder_lock

    folder = tmp_path / "f"
    holder = _holder(folder, 60)
    with pytest.raises(FolderBusyError, match=f"PID {holder.pid}"), folder_lock(folder):
        pass
    holder.kill()  # SIGKILL: no clean-up code runs, the OS drops the lock
    holder.wait(10)
    with folder_lock(folder):
        pass
    short = _holder(folder, 1.5)
    started = time.monotonic()
    with folder_lock(folder, wait=True):
        assert time.monotonic() - started > 0.5  # waited for the holder instead of failing
    short.wait(10)


def test_a_child_forked_while_the_lock_is_held_does_not_keep_the_folder_busy(tmp_path):
    """A helper a library forks mid-export (and leaves running) must not hold the folder after the export."""
    import os
    import signal

    from toolkit.fileio import folder_lock

    folder = tmp_path / "f"
    ready, started = os.pipe()
    with folder_lock(folder):
        child = os.fork()
        if child == 0:  # the helper: lives on after its parent lets go of the folder
            os.write(started, b"1")  # (its fork hooks have run by now)
            time.sleep(30)
            os._exit(0)
        os.read(ready, 1)
    try:
        with folder_lock(folder):  # the next export
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# 2. two exports into one folder


@pytest.mark.slow
@pytest.mark.xdist_group("locks")  # racing processes: timing-sensitive, kept off the other worker
def test_concurrent_exports_with_wait_keep_every_manifest_entry(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    base = [sys.executable, "-m", "toolkit.cli", "export", str(run), "--quiet", "--wait"]
    first = subprocess.Popen([*base, "--format", "onnx", "--precision", "float32"], env=_env(), stderr=subprocess.PIPE)
    second = subprocess.Popen(
        [*base, "--format", "tflite", "--precision", "float32"], env=_env(), stderr=subprocess.PIPE
    )
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert {(a["format"], a["precision"]) for a in manifest["artifacts"]} == {
        ("onnx", "float32"),
        ("tflite", "float32"),
    }


@pytest.mark.slow
@pytest.mark.xdist_group("locks")  # racing processes: timing-sensitive, kept off the other worker
def test_an_export_while_another_holds_the_folder_exits_2(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export"))
    holder = _holder(run / "export", 60)
    try:
        _one_line(runner.invoke(app, ["export", str(run), "--format", "onnx"]), 2, f"in use by PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait(10)


# 3 and 4. verification follows the content


def test_bench_refuses_a_tampered_file_alone_and_through_its_run_folder(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    _flip(run / "export" / "model_float32.onnx")
    quick = ["--format", "onnx", "--precision", "float32", "--runs", "1", "--warmup", "0", "--batch-size", "1"]
    _one_line(runner.invoke(app, ["bench", str(run), *quick]), 2, "model_float32.onnx")
    lone = tmp_path / "lone" / "model_float32.onnx"
    lone.parent.mkdir()
    shutil.copy(run / "export" / "model_float32.onnx", lone)
    data = ["--data", str(tmp_path), "--runs", "1", "--warmup", "0", "--batch-size", "1"]
    _one_line(runner.invoke(app, ["bench", str(lone), *data]), 2, "content digest")


@pytest.mark.parametrize("name", ["model_float32.onnx", "model_int8.tflite", "model_bf16.xml"])
def test_a_renamed_copy_or_a_link_of_a_tampered_file_is_refused(exported_run, tmp_path, name):
    from toolkit.runtime import load

    export = tmp_path / "export"
    shutil.copytree(exported_run / "export", export)
    target = export / name
    tampered = target.with_suffix(".bin") if name.endswith(".xml") else target
    _flip(tampered, 0.6)
    copy = export / f"renamed{target.suffix}"
    shutil.copy(target, copy)
    link = export / f"link{target.suffix}"
    link.symlink_to(target.name)
    if name.endswith(".xml"):
        for alias in (copy, link):
            shutil.copy(tampered, alias.with_suffix(".bin"))
    for alias in (copy, link):  # beside the same manifest, under names it does not list
        with pytest.raises(RuntimeModelError, match="content digest"):
            load(alias)
    assert load(copy, verify=False).labels  # --no-verify still loads it


def test_a_file_without_a_digest_loads_with_one_unverified_warning(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x2"], ["y"]),
            helper.make_node("ReduceMean", ["x"], ["x2"], axes=[1, 2], keepdims=0),
        ],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    shown = runner.invoke(app, ["predict", str(model), str(tmp_path / "x.png")])
    assert shown.exit_code == 0 and shown.stderr.count("unverified") == 1, shown.output
    quiet = runner.invoke(app, ["predict", str(model), str(tmp_path / "x.png"), "--no-verify"])
    assert quiet.exit_code == 0 and "unverified" not in quiet.stderr


# 5 and 6. damaged input of any shape is exit 2, naming the file


def test_a_png_or_truncated_file_named_best_keras_is_named_as_damaged(tmp_path):
    from PIL import Image

    png = tmp_path / "best.keras"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    result = runner.invoke(app, ["predict", str(png), str(png)])
    _one_line(result, 2, "not a Keras model file")
    assert "File not found" not in result.output


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"artifacts": "x"}', '{"artifacts": [1]}'])
def test_a_manifest_of_the_wrong_shape_is_exit_2(exported_run, tmp_path, manifest):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    (run / "export" / "manifest.json").write_text(manifest)
    image = str(run / "config.json")
    _one_line(runner.invoke(app, ["predict", str(run / "export" / "model_float32.onnx"), image]), 2, "manifest.json")
    _one_line(runner.invoke(app, ["bench", str(run), "--runs", "1"]), 2, "manifest.json")


def test_a_config_with_image_size_0_is_exit_2_naming_file_and_key(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "image_size": 0}))
    _one_line(runner.invoke(app, ["export", str(run)]), 2, "'image_size'")


# 7. usage errors


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "DATA", "--image-size", "0"], "--image-size"),
        (["train", "DATA", "--epochs", "-1"], "--epochs"),
        (["export", "RUN", "--parity-images", "0"], "--parity-images"),
        (["export", "RUN", "--format", "bogus"], "--format"),
        (["predict", "model.onnx"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(args, needle):
    _one_line(runner.invoke(app, args, env={"COLUMNS": "80"}), 2, needle)


def test_help_is_still_the_full_help():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "--int8-max-drop" in result.stdout and len(result.stdout.splitlines()) > 20


# 8. logs without terminal codes


def test_training_output_off_a_terminal_has_one_line_per_epoch_and_no_terminal_codes(demo_dir, tmp_path):
    args = ["train", str(demo_dir), "--out", str(tmp_path / "r"), "--weights", "none", "--image-size", "32"]
    args += ["--epochs", "2", "--no-augment", "--base-precision", "fp32", "--val-split", "0.25"]
    result = runner.invoke(app, args, env={"TERM": "xterm-256color"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x08" not in result.output and "\r" not in result.output
    epoch_lines = [line for line in result.stdout.splitlines() if " - loss: " in line]
    assert len(epoch_lines) == 2, result.stdout


# 9. --debug keeps the documented exit code


def test_debug_shows_the_traceback_and_keeps_exit_3(tmp_path, monkeypatch):
    import toolkit.data.demo

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(toolkit.data.demo, "write_demo_dataset", broken)
    result = runner.invoke(app, ["--debug", "demo-data", str(tmp_path / "d")])
    assert result.exit_code == 3 and "Traceback" in result.output and "ZeroDivisionError: a bug" in result.output


# Also noticed: failed starts, and the full-disk message


def test_a_failed_start_leaves_no_half_made_run_folder(demo_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(demo_dir), "--out", str(out), "--weights", "none", "--positive-class", "nosuch"]
    _one_line(runner.invoke(app, args), 2, "nosuch")
    assert not out.exists()


def test_full_disk_says_nothing_was_written_when_there_was_no_previous_file(tmp_path, monkeypatch):
    import errno

    from toolkit.errors import DiskFullError
    from toolkit.fileio import write_text_atomic

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError, match="nothing was written"):
        write_text_atomic(tmp_path / "new.txt", "x")
    monkeypatch.undo()
    write_text_atomic(tmp_path / "old.txt", "old")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError, match="previous file was kept"):
        write_text_atomic(tmp_path / "old.txt", "new")
    monkeypatch.undo()
    assert (tmp_path / "old.txt").read_text() == "old"
