from __future__ import annotations

import csv

import pytest

from tests.conftest import train_config
from toolkit.errors import DiskFullError

pytestmark = pytest.mark.slow  # killed and resumed training subprocesses


def _start_fault(mode: str, marker, *args):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults", mode, str(marker), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(marker, proc, timeout=240.0):
    import time

    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before the fault point: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("fault point never reached")
        time.sleep(0.2)


def _resume_and_check(demo_dir, out):
    from toolkit.keras_io import load_keras_model
    from toolkit.train import train

    train(train_config(demo_dir, out, epochs=4), resume=True, log=lambda _m: None, verbose=0)
    with open(out / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    load_keras_model(out / "best.keras")
    assert (out / "run.json").is_file()


def test_sigkill_mid_epoch_keeps_a_good_checkpoint_and_resumes(demo_dir, tmp_path):
    import signal

    from toolkit.keras_io import load_keras_model

    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = _start_fault("train-epoch", marker, demo_dir, out)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    load_keras_model(out / "best.keras")  # the epoch-1 checkpoint, intact
    _resume_and_check(demo_dir, out)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(demo_dir, tmp_path):
    import hashlib
    import signal

    from toolkit.keras_io import load_keras_model

    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = _start_fault("train-checkpoint", marker, demo_dir, out)
    _wait_for(marker, proc)
    before = hashlib.sha256((out / "best.keras").read_bytes()).hexdigest()
    assert list(out.glob(".best.keras.*"))  # the new checkpoint is half-way, in its temporary file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hashlib.sha256((out / "best.keras").read_bytes()).hexdigest() == before
    load_keras_model(out / "best.keras")
    _resume_and_check(demo_dir, out)


def test_ctrl_c_stops_cleanly_with_exit_130_and_resumes(demo_dir, tmp_path):
    import signal

    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = _start_fault("cli-train-epoch", marker, demo_dir, out)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in stderr
    _resume_and_check(demo_dir, out)


def test_full_disk_while_checkpointing_is_one_error_and_keeps_the_good_file(demo_dir, tmp_path, monkeypatch):
    import errno
    import hashlib

    import keras

    import toolkit.train.fit as fit_module
    from toolkit.train import train

    monkeypatch.setattr(fit_module, "improved", lambda value, best, mode: True)
    real_save = keras.Model.save
    calls = {"n": 0}
    good: dict[str, str] = {}

    def save_until_full(self, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            good.setdefault("sha", hashlib.sha256((out / "best.keras").read_bytes()).hexdigest())
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError, match="no space left"):
        train(train_config(demo_dir, out, epochs=3), log=lambda _m: None, verbose=0)
    monkeypatch.setattr(keras.Model, "save", real_save)
    from toolkit.keras_io import load_keras_model

    load_keras_model(out / "best.keras")
    assert not list(out.glob(".best.keras.*"))
    assert hashlib.sha256((out / "best.keras").read_bytes()).hexdigest() == good["sha"]
