from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import IMAGE_SIZE, train_config
from toolkit.errors import Interrupted, TrainingError, WeightsError

RUN_FILES = (
    "best.keras",
    "labels.json",
    "run.json",
    "config.json",
    "history.csv",
    "curves.png",
    "metrics.json",
    "confusion.png",
    "data_report.json",
)


def test_run_folder_is_complete_and_self_describing(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    run = json.loads((trained_run / "run.json").read_text())
    assert run["weights"]["source"] == "none"
    assert run["dataset"]["classes"] == ["benign", "malignant"]
    assert run["dataset"]["counts"]["train"] == {"benign": 12, "malignant": 12}
    assert 1 <= run["best_epoch"] <= 3 and run["best_epoch_metrics"]["epoch"] == run["best_epoch"]
    assert run["parameters"]["trainable"] < run["parameters"]["total"]
    assert "tensorflow" in run["versions"] and "keras" in run["versions"]
    assert json.loads((trained_run / "labels.json").read_text()) == ["benign", "malignant"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["count"] == 8 and np.array(metrics["confusion_matrix"]).sum() == 8
    with open(trained_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "val_loss", "accuracy", "val_auc"} <= set(rows[0])
    assert (trained_run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_saved_model_takes_raw_pixels_and_keeps_preprocessing_inside(trained_run):
    from toolkit.model import features_part, load_keras_model

    model = load_keras_model(trained_run / "best.keras")
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert features_part(model).get_layer("caffe_preprocess") is not None
    assert not any("augment" in layer.name for layer in model.layers)
    probs = model.predict(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_seeded_runs_are_repeatable(demo_dir, tmp_path):
    from toolkit.train import train

    results = [
        train(train_config(demo_dir, tmp_path / name, epochs=2), log=lambda _m: None, verbose=0) for name in ("a", "b")
    ]
    hist = [(tmp_path / name / "history.csv").read_text() for name in ("a", "b")]
    assert hist[0] == hist[1]
    assert results[0].val_accuracy == results[1].val_accuracy


def test_interrupted_run_resumes_and_keeps_best_and_history(demo_dir, tmp_path, monkeypatch):
    import toolkit.train as train_module

    out = tmp_path / "run"
    real_write = train_module.write_history_csv
    calls = {"n": 0}

    def interrupt_on_second_epoch(history, path):
        calls["n"] += 1
        real_write(history, path)
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_history_csv", interrupt_on_second_epoch)
    with pytest.raises(Interrupted, match="--resume"):
        train_module.train(train_config(demo_dir, out, epochs=4), log=lambda _m: None, verbose=0)
    assert (out / "best.keras").is_file() and not (out / "run.json").exists()
    best_before = json.loads((out / "train_state.json").read_text())["best_value"]
    monkeypatch.setattr(train_module, "write_history_csv", real_write)

    with pytest.raises(TrainingError, match="already holds a run"):
        train_module.train(train_config(demo_dir, out, epochs=4), log=lambda _m: None, verbose=0)
    result = train_module.train(train_config(demo_dir, out, epochs=4), resume=True, log=lambda _m: None, verbose=0)
    with open(out / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4]
    assert result.best_value <= best_before
    assert (out / "run.json").is_file()


def test_fine_tuning_unfreezes_block5_and_continues_epochs(demo_dir, tmp_path):
    from toolkit.model import load_keras_model, vgg_base
    from toolkit.train import train

    out = tmp_path / "ft"
    train(train_config(demo_dir, out, epochs=1, fine_tune_epochs=1, augment=True), log=lambda _m: None, verbose=0)
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "frozen"), ("2", "finetune")]
    base = vgg_base(load_keras_model(out / "best.keras"))
    assert base.get_layer("block1_conv1") is not None


def test_cached_and_uncached_training_reach_equivalent_heads(demo_dir, tmp_path):
    """Training the head on cached features is the same computation as the tutorial recipe."""
    from toolkit.model import head_part, load_keras_model
    from toolkit.train import train

    for name, cached in (("cached", True), ("tutorial", False)):
        train(
            train_config(demo_dir, tmp_path / name, epochs=2, cache_features=cached, monitor="val_loss"),
            log=lambda _m: None,
            verbose=0,
        )
    heads = [head_part(load_keras_model(tmp_path / n / "best.keras")).get_weights() for n in ("cached", "tutorial")]
    for a, b in zip(heads[0], heads[1]):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_aug_views_precompute_k_views(demo_dir, tmp_path):
    from toolkit.train import train

    out = tmp_path / "views"
    train(train_config(demo_dir, out, epochs=2, augment=True, aug_views=2), log=lambda _m: None, verbose=0)
    views = np.load(out / "cache" / "features-train-views.npy", mmap_mode="r")
    assert views.shape[:2] == (2, 24)
    assert not np.array_equal(views[0], views[1])  # two different augmentations


def test_plain_augmented_mode_refreshes_features_before_every_epoch_reads_them(demo_dir, tmp_path, monkeypatch):
    """Every batch of epoch e is read after epoch e's own refresh, never prefetched from e-1."""
    from toolkit import train as train_module

    events: list[tuple[str, int | None]] = []
    snapshots: list[np.ndarray] = []
    real_refresh, real_gather = train_module.EpochFeatures.refresh, train_module.EpochFeatures.gather

    def refresh(self, epoch):
        real_refresh(self, epoch)
        events.append(("refresh", epoch))
        snapshots.append(np.array(self.store, dtype=np.float32))

    def gather(self, idx):
        events.append(("read", self.epoch))
        return real_gather(self, idx)

    monkeypatch.setattr(train_module.EpochFeatures, "refresh", refresh)
    monkeypatch.setattr(train_module.EpochFeatures, "gather", gather)
    out = tmp_path / "plain"
    train_module.train(train_config(demo_dir, out, epochs=3, augment=True, aug_views=0), log=lambda _m: None, verbose=0)
    events = [e for e in events if e != ("read", None)]  # a model-building read before training, if any
    # 24 training images in batches of 8: three reads per epoch, all after that epoch's refresh.
    assert events == [step for e in range(3) for step in [("refresh", e), ("read", e), ("read", e), ("read", e)]]
    assert not np.array_equal(snapshots[0], snapshots[1])  # a fresh augmentation each epoch
    with open(out / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]


def test_plain_augmented_mode_refuses_batches_read_ahead_of_the_refresh(demo_dir, tmp_path):
    import tensorflow as tf

    from toolkit.data import load_dataset
    from toolkit.train import EpochFeatures

    _, arrays, _, _ = load_dataset(str(demo_dir), IMAGE_SIZE, 0.2, 1, tmp_path / "cache")
    forward = tf.function(lambda x: tf.reduce_mean(tf.cast(x, tf.float32), axis=(1, 2), keepdims=True))
    fresh = EpochFeatures(forward, arrays, 2, 8, 1, tmp_path / "f.npy", (1, 1, 3))
    fresh.refresh(0)
    assert fresh.store.shape == (24, 1, 1, 3) and float(np.abs(fresh.store).max()) > 0
    for _ in range(fresh.batches_per_epoch):
        fresh.gather(np.arange(8))
    fresh.check_reads()  # one epoch's worth: fine
    fresh.gather(np.arange(8))  # a batch fetched ahead for the next epoch
    with pytest.raises(TrainingError, match="stale features"):
        fresh.refresh(1)


def test_missing_weights_file_and_offline_imagenet_are_one_line_errors(demo_dir, tmp_path, monkeypatch):
    import keras

    from toolkit.train import train

    with pytest.raises(WeightsError, match="not found"):
        train(
            train_config(demo_dir, tmp_path / "w1", weights=str(tmp_path / "nope.h5")), log=lambda _m: None, verbose=0
        )
    real_vgg = keras.applications.VGG16

    def offline(*args, weights=None, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://example: None -- [Errno -2] Name or service not known")
        return real_vgg(*args, weights=weights, **kwargs)

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(WeightsError, match="--weights PATH"):
        train(train_config(demo_dir, tmp_path / "w2", weights="imagenet"), log=lambda _m: None, verbose=0)
    result = train(
        train_config(demo_dir, tmp_path / "w3", weights="imagenet", allow_random_weights=True, epochs=1),
        log=lambda _m: None,
        verbose=0,
    )
    assert result.weights_source.startswith("random") and result.warnings
    assert json.loads((tmp_path / "w3" / "run.json").read_text())["weights"]["source"].startswith("random")


# --------------------------------------------------------------------------- faults and interruptions


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
    from toolkit.model import load_keras_model
    from toolkit.train import train

    train(train_config(demo_dir, out, epochs=4), resume=True, log=lambda _m: None, verbose=0)
    with open(out / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    load_keras_model(out / "best.keras")
    assert (out / "run.json").is_file()


def test_sigkill_mid_epoch_keeps_a_good_checkpoint_and_resumes(demo_dir, tmp_path):
    import signal

    from toolkit.model import load_keras_model

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

    from toolkit.model import load_keras_model

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

    import toolkit.train as t
    from toolkit.fileio import DiskFullError

    monkeypatch.setattr(t, "_improved", lambda value, best, mode: True)
    real_save = keras.Model.save
    calls = {"n": 0}

    def save_until_full(self, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError, match="no space left"):
        t.train(train_config(demo_dir, out, epochs=3), log=lambda _m: None, verbose=0)
    monkeypatch.setattr(keras.Model, "save", real_save)
    from toolkit.model import load_keras_model

    load_keras_model(out / "best.keras")
    assert not list(out.glob(".best.keras.*"))
    assert hashlib.sha256((out / "best.keras").read_bytes()).hexdigest()


def test_real_world_folder_trains_on_readable_images_and_reports_the_rest(tmp_path):
    """JPEG, PNG+alpha, grayscale, palette GIF, CMYK, 16-bit, WebP, BMP, TIFF, EXIF, odd names, and junk."""
    import io

    from PIL import Image

    from toolkit.train import train

    rng = np.random.default_rng(0)

    def image(colour, mode="RGB"):
        arr = np.clip(np.array(colour)[None, None] + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert(mode)

    root = tmp_path / "clinic"
    for split in ("train", "test"):
        for cls, colour in (("benign", (200, 150, 120)), ("malignant", (60, 30, 20))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            image(colour).save(folder / "plain.jpg")
            image(colour, "RGBA").save(folder / "alpha.png")
            image(colour, "L").save(folder / "gray.png")
            image(colour).convert("P").save(folder / "palette.gif")
            image(colour, "CMYK").save(folder / "cmyk.jpg")
            Image.fromarray(np.asarray(image(colour, "L")).astype(np.uint16) * 257).save(folder / "deep16.png")
            image(colour).save(folder / "photo.webp")
            image(colour).save(folder / "bitmap.bmp")
            image(colour).save(folder / "scan.tiff")
            exif = Image.Exif()
            exif[0x0112] = 6
            image(colour).save(folder / "rotated.jpg", exif=exif.tobytes())
            image(colour).save(folder / "UPPER.JPG")
            image(colour).save(folder / "läsion ü 1.jpeg")
            buf = io.BytesIO()
            image(colour).save(buf, "JPEG")
            (folder / "truncated.jpg").write_bytes(buf.getvalue()[:200])
            (folder / "empty.png").write_bytes(b"")
            (folder / "notes.jpg").write_text("this is text")
            (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
            (folder / "._plain.jpg").write_bytes(b"\0\5\26\7")
            (folder / "README.txt").write_text("scanned at the clinic")
    result = train(train_config(root, tmp_path / "run", epochs=1), log=lambda _m: None, verbose=0)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["counts"] == {"train": {"benign": 12, "malignant": 12}, "val": {"benign": 12, "malignant": 12}}
    assert report["skipped_count"] == 4 * 7
    assert report["used"] + report["skipped_count"] == report["scanned"] == 4 * 19
    reasons = {}
    for s in report["skipped"]:
        reasons.setdefault(s["path"].rsplit("/", 1)[-1], set()).add(s["reason"].split(":")[0])
    assert reasons["empty.png"] == {"empty file"} and reasons["._plain.jpg"] == {"hidden file"}
    assert reasons["README.txt"] == {"not an image file (extension)"}
    assert reasons["truncated.jpg"] == {"cannot decode image"} and "notes.jpg" in reasons
    assert result.val_accuracy >= 0.0 and (tmp_path / "run" / "best.keras").is_file()


def test_bf16_features_stay_close_to_float32(trained_run):
    """The bf16 extractor is the same network: relative feature error stays near bf16's 8-bit mantissa."""
    from toolkit.model import features_part, load_keras_model
    from toolkit.train import build_feature_extractor

    model = load_keras_model(trained_run / "best.keras")
    x = np.random.default_rng(0).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    reference = features_part(model)(x, training=False).numpy()
    low = build_feature_extractor(model, "bf16")(x, training=False).numpy()
    assert low.dtype == np.float32 and low.shape == reference.shape
    relative = np.linalg.norm(low - reference) / np.linalg.norm(reference)
    assert relative < 2e-2


def test_final_metrics_are_those_of_the_saved_model_on_validation_images(trained_run):
    from toolkit.data import discover_dataset, load_split_images
    from toolkit.metrics import classification_metrics
    from toolkit.model import load_keras_model
    from toolkit.train import predict_in_batches

    config = json.loads((trained_run / "config.json").read_text())
    val = load_split_images(discover_dataset(config["data_dir"]).val, (IMAGE_SIZE, IMAGE_SIZE), None)
    probs = predict_in_batches(load_keras_model(trained_run / "best.keras"), val.images)
    expected = classification_metrics(probs, val.labels, ["benign", "malignant"])
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved["confusion_matrix"] == expected.confusion_matrix
    assert saved["auc"] == pytest.approx(expected.auc, abs=1e-6)
