"""The head's inputs standardised with training statistics: measured on what the head trains on, in every artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import train_config

pytestmark = pytest.mark.slow  # real (tiny) trainings


def _clean_training_statistics(run):
    """Mean and variance of the head's pre-norm inputs over the run's un-augmented training images."""
    from toolkit.data import load_dataset
    from toolkit.keras_io import load_keras_model
    from toolkit.model import features_part, head_part, pre_norm
    from toolkit.train import TrainConfig

    config = TrainConfig.from_flat(**json.loads((run / "config.json").read_text()))
    data = load_dataset(config.data.folder, config.base.image_size, config.split_options())
    model = load_keras_model(run / "best.keras")
    pooled = pre_norm(head_part(model)).predict(features_part(model).predict(data.train.images, verbose=0), verbose=0)
    pooled = pooled.reshape(len(pooled), -1).astype(np.float64)
    return model, pooled.mean(0), pooled.var(0)


@pytest.mark.parametrize(
    "mode",
    [
        dict(cache_features=True),  # one cached pass
        dict(cache_features=False),  # the tutorial recipe: one extra pass for the statistics
        # the frozen phase's features mapped from the fine-tuning cut's stores; a rate that leaves the base as it was
        dict(fine_tune_epochs=1, fine_tune_lr=1e-12),
    ],
    ids=["cached", "tutorial", "from-cut"],
)
def test_statistics_are_those_of_the_training_features(demo_dir, tmp_path, mode):
    from toolkit.model import feature_norm, head_part
    from toolkit.train import train

    run = tmp_path / "run"
    train(train_config(demo_dir, run, epochs=1, head="gap+gmp", **mode), log=lambda _m: None, verbose=0)
    model, mean, variance = _clean_training_statistics(run)
    stored_mean, stored_var = feature_norm(head_part(model)).get_weights()
    assert np.abs(mean).max() > 1e-3  # something to standardise
    np.testing.assert_allclose(stored_mean, mean, rtol=2e-3, atol=1e-4)  # float16 feature stores: ~1e-3
    np.testing.assert_allclose(stored_var, variance, rtol=5e-3, atol=1e-4)


def test_augmented_views_standardise_on_the_views_and_no_feature_norm_builds_no_layer(demo_dir, tmp_path):
    from toolkit.keras_io import load_keras_model
    from toolkit.model import feature_norm, head_part
    from toolkit.train import train

    views = tmp_path / "views"
    train(train_config(demo_dir, views, epochs=1, augment=True, aug_views=2), log=lambda _m: None, verbose=0)
    _, clean_mean, _ = _clean_training_statistics(views)
    stored_mean, stored_var = feature_norm(head_part(load_keras_model(views / "best.keras"))).get_weights()
    assert np.all(stored_var >= 0) and np.abs(stored_mean).max() > 1e-3
    assert not np.allclose(stored_mean, clean_mean, rtol=1e-3)  # measured on the augmented views, not clean images
    plain = tmp_path / "plain"
    train(train_config(demo_dir, plain, epochs=1, feature_norm=False), log=lambda _m: None, verbose=0)
    assert feature_norm(head_part(load_keras_model(plain / "best.keras"))) is None
    assert json.loads((plain / "config.json").read_text())["feature_norm"] is False


def test_every_exported_format_computes_the_standardisation(exported_run):
    """Each artifact reproduces the Keras model, whose outputs move when its standardisation is undone."""
    from toolkit import runtime
    from toolkit.data import load_labelled_folder
    from toolkit.keras_io import load_keras_model
    from toolkit.model import feature_norm, head_part

    model = load_keras_model(exported_run / "best.keras")
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    tolerance = {"float32": 1e-4, "float16": 5e-3, "bf16": 3e-2}  # bf16: OpenVINO's IR, 8 mantissa bits
    floats = {a["path"]: tolerance[a["precision"]] for a in manifest["artifacts"] if a["precision"] in tolerance}
    classifier = runtime.load(exported_run / "export" / next(iter(floats)))
    test_dir = json.loads((exported_run / "config.json").read_text())["data_dir"] + "/test"
    _, arrays = load_labelled_folder(test_dir, classifier.image_size, classifier.labels)
    images = arrays.images.astype(np.float32)
    keras_probs = model.predict(images, verbose=0)
    layer = feature_norm(head_part(model))
    mean, variance = layer.get_weights()
    layer.set_weights([np.zeros_like(mean), np.ones_like(variance)])
    undone = model.predict(images, verbose=0)
    assert np.abs(undone - keras_probs).max() > 1e-2  # the layer matters on this run
    assert len(floats) >= 4
    for path, atol in floats.items():  # onnx, tflite and openvino
        probs = runtime.load(exported_run / "export" / path).predict_arrays(arrays.images)
        np.testing.assert_allclose(probs, keras_probs, atol=atol, err_msg=path)
