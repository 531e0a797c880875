"""Shared, session-scoped fixtures: one tiny data set, one trained run, one export.

Everything is small (32 px images, the test-only `tiny` base with random weights, a
few epochs) so the whole suite stays within minutes on two CPU cores. Tests about
VGG16 itself (its cuts, its GFLOP, its caffe preprocessing) use `vgg16_run`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOOLKIT_BENCH_PEAK_SIZE", "256")  # bench's matrix peaks: a quick multiply, not the 2048 one
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per xdist worker (make test runs one worker per core)
    # Intra-op only: a single inter-op thread can starve multi-worker training's blocking collectives.
    for _var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

IMAGE_SIZE = 32
HEATMAP_SIZE = 64  # the tiny base's Grad-CAM grid at 64 px (block5_conv1): 4 x 4, enough for a map to point somewhere


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from toolkit.data.demo import DemoDataConfig, write_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DemoDataConfig(per_class=16, size=48, seed=3))
    return out


def train_config(data_dir: Path, out: Path, **overrides):
    from toolkit.train import TrainConfig

    settings = dict(
        data_dir=str(data_dir),
        out=str(out),
        base="tiny",  # a few thousand parameters: the plumbing is the subject, not VGG16
        image_size=IMAGE_SIZE,
        epochs=3,
        batch_size=8,
        weights="none",
        augment=False,
        precision="fp32",
        seed=1,
        lr=1e-3,
        head="flatten",  # the tests' fixtures were built around these two; the defaults are tested via the CLI
        monitor="val_loss",
        val_split=0.25,  # train/ + test/: 3 of each class's 12 training images validate, test/ stays held out
    )
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


@pytest.fixture(scope="session")
def trained_run(demo_dir, tmp_path_factory) -> Path:
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs") / "run"
    train(train_config(demo_dir, out), log=lambda _m: None, verbose=0)
    return out


@pytest.fixture(scope="session")
def near_tie_run(demo_dir, tmp_path_factory) -> Path:
    """trained_run without feature_norm: its random-weight probabilities sit near 0.5, so int8 noise flips
    decisions and the int8 gate fails without a fix (tests/test_int8_fix.py); standardised, the head is sure.
    Not calibrated either: a temperature fitted on its 6 validation images would move the ties it needs."""
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs") / "near-tie"
    config = train_config(demo_dir, out, feature_norm=False, score_calibration="none")
    train(config, log=lambda _m: None, verbose=0)
    return out


@pytest.fixture(scope="session")
def vgg16_run(demo_dir, tmp_path_factory) -> Path:
    """One small VGG16 run (random weights, 32 px, 1 epoch) for the tests about VGG16 itself."""
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs") / "vgg16"
    # Without feature_norm its random-weight probabilities sit near 0.5, where the int8-fix tests put a razor-thin
    # operating point (tests/test_int8_fix.py); the standardisation itself is tested on trained_run's exports.
    config = train_config(demo_dir, out, base="vgg16", epochs=1, feature_norm=False)
    train(config, log=lambda _m: None, verbose=0)
    return out


@pytest.fixture(scope="session")
def heatmap_run(demo_dir, tmp_path_factory):
    """A pooled-head run (gap+gmp, standardised) with its heatmap artifacts: ONNX, TFLite float32/float16, OpenVINO."""
    from toolkit.export import ExportOptions, export_run
    from toolkit.train import train

    out = tmp_path_factory.mktemp("runs") / "heatmap"
    train(train_config(demo_dir, out, image_size=HEATMAP_SIZE, head="gap+gmp"), log=lambda _m: None, verbose=0)
    report = export_run(out, ExportOptions(calib_images=16, precisions=["float32", "float16", "bf16"], heatmap=True))
    assert not report.failed, [a["parity"]["failures"] for a in report.failed]
    return out


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run with every format exported.

    The run has random base weights at 32 px, whose features carry almost no
    signal, so its probabilities sit near 0.5 and int8 may flip near-ties: only
    the int8 agreement and accuracy-drop gates are relaxed here. The float32 and
    float16 gates run at their defaults and must pass, and int8 must still
    reproduce the probabilities closely (checked below).
    """
    from toolkit.export import ExportOptions, export_run
    from toolkit.parity import ParityOverrides

    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run)
    floats = export_run(run, ExportOptions(calib_images=16, precisions=["float32", "float16", "bf16"]))
    assert not floats.failed, [a["parity"]["failures"] for a in floats.failed]  # default float gates
    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)
    options = ExportOptions(calib_images=16, precisions=["dynamic", "int8"], overrides=relaxed)
    report = export_run(run, options)
    assert report.manifest_path.is_file()
    records = {(a["format"], a["precision"]): a["parity"] for a in report.manifest["artifacts"]}
    assert len(records) == 8  # onnx, tflite and openvino files (web bundles: by name only)
    for key, parity in records.items():
        if key[1] in ("float32", "float16", "bf16"):
            assert parity["passed"] and parity["thresholds"]["min_agreement"] >= 0.99, (key, parity)
        else:
            assert parity["max_abs_diff"] < 0.05, (key, parity)  # int8 moves probabilities a little, not a lot
    return run


def go_offline(monkeypatch, application: str) -> None:
    """keras.applications.<application> as on a machine without internet: weights="imagenet" fails to download."""
    import keras

    real = getattr(keras.applications, application)

    def offline(*args, weights=None, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://example: None -- [Errno -2] Name or service not known")
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(keras.applications, application, offline)


def validation_files(run: Path) -> list[Path]:
    """The image files of a test run's validation split (what export's parity gate ran on), sorted by class."""
    import json

    from toolkit.data import SplitOptions, discover_dataset

    config = json.loads((run / "config.json").read_text())
    split = discover_dataset(
        config["data_dir"], SplitOptions(config["val_split"], config["test_split"], config["seed"])
    )
    return [Path(f.path) for f in split.val]


def validation_folder(run: Path, dest: Path) -> Path:
    """The validation split copied into DEST/<class>/, a labelled folder for `toolkit evaluate`."""
    for path in validation_files(run):
        (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.parent.name / path.name)
    return dest
