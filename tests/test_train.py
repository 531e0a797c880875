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
