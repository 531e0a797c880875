"""Fault injection for subprocess tests: run training or export, pausing at a chosen point.

Usage: python -m tests.faults MODE MARKER ARGS...  The chosen point writes MARKER and then
sleeps, so the test can deliver SIGKILL or SIGINT exactly there.
  train-epoch MARKER DATA OUT        pause in the middle of epoch 2 (after its first batch)
  train-checkpoint MARKER DATA OUT   pause inside the second checkpoint write, before the rename
  cli-train-epoch MARKER DATA OUT    like train-epoch, through the `toolkit train` command line
  export-float16 MARKER RUN          pause half-way through writing the TFLite float16 artifact
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

_INTERRUPTED = threading.Event()


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.set()  # wakes a pause that Keras runs on a callback thread, whose sleep SIGINT cannot interrupt
    signal.default_int_handler(signum, frame)


def _pause(marker: Path) -> None:
    marker.write_text("paused")
    _INTERRUPTED.wait(120)


def _patch_epoch_pause(marker: Path) -> None:
    import keras

    import toolkit.train.fit as t

    class PauseMidEpoch(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                _pause(marker)

    real = t.make_run_callback

    def with_pause(*args, **kwargs):
        callback = real(*args, **kwargs)
        pause = PauseMidEpoch()
        original = callback.on_train_batch_end

        def on_train_batch_end(batch, logs=None):
            original(batch, logs)
            pause.on_train_batch_end(batch, logs)

        original_begin = callback.on_epoch_begin

        def on_epoch_begin(epoch, logs=None):
            original_begin(epoch, logs)
            pause.on_epoch_begin(epoch, logs)

        callback.on_train_batch_end = on_train_batch_end
        callback.on_epoch_begin = on_epoch_begin
        return callback

    t.make_run_callback = with_pause


def _train_args(data: str, out: str) -> list[str]:
    return [
        data,
        "--out",
        out,
        "--base",
        "tiny",
        "--image-size",
        "32",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--weights",
        "none",
        "--no-augment",
        "--base-precision",
        "fp32",
        "--seed",
        "1",
        "--val-split",
        "0.25",  # the settings of tests.conftest.train_config, which resumes these runs
        "--head",
        "flatten",
        "--monitor",
        "val_loss",
        "--quiet",
    ]


def main() -> None:
    mode, marker = sys.argv[1], Path(sys.argv[2])
    signal.signal(signal.SIGINT, _on_sigint)
    import toolkit.run_folder as run_folder
    import toolkit.train.fit as t

    if mode in ("train-epoch", "cli-train-epoch"):
        _patch_epoch_pause(marker)
    elif mode == "train-checkpoint":
        t.improved = lambda value, best, mode: True  # every epoch checkpoints
        real = t.save_model_atomic
        calls = {"n": 0}

        def pausing_save(model, dest):
            calls["n"] += 1
            if calls["n"] < 2:
                return real(model, dest)
            with run_folder.atomic_path(dest, suffix=".keras") as tmp:
                model.save(tmp)
                _pause(marker)

        t.save_model_atomic = pausing_save
    if mode.startswith("train") or mode == "cli-train-epoch":
        from toolkit.cli import app

        app(["train", *_train_args(sys.argv[3], sys.argv[4])])
    elif mode == "export-float16":
        from toolkit.export import REGISTRY
        from toolkit.export.base import ExportFormat

        real_format = REGISTRY["tflite-float16"]

        def half_written(ctx, dest):
            real_format.convert(ctx, dest)
            data = dest.read_bytes()
            dest.write_bytes(data[: len(data) // 2])
            _pause(marker)

        REGISTRY["tflite-float16"] = ExportFormat(**{**real_format.__dict__, "convert": half_written})
        from toolkit.cli import app

        app(
            [
                "export",
                sys.argv[3],
                "--format",
                "tflite",
                "--precision",
                "float32,float16",
                "--min-agreement",
                "0",
                "--max-accuracy-drop",
                "1",
            ]
        )


if __name__ == "__main__":
    main()
