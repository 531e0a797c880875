from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import IMAGE_SIZE
from toolkit.bases import Preprocessing, base_names, get_base


def test_saved_model_takes_raw_pixels_and_keeps_preprocessing_inside(vgg16_run):
    from toolkit.keras_io import IMAGENET_BGR_MEAN, load_keras_model
    from toolkit.model import base_model, features_part

    model = load_keras_model(vgg16_run / "best.keras")
    assert base_model(model).name == "vgg16"
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert not any("augment" in layer.name for layer in model.layers)
    rgb = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    # VGG16's own recipe by hand: RGB -> BGR, minus the ImageNet mean, then the base.
    by_hand = base_model(model)(rgb[..., ::-1] - np.array(IMAGENET_BGR_MEAN, np.float32), training=False).numpy()
    inside = features_part(model)(rgb, training=False).numpy()
    np.testing.assert_allclose(inside, by_hand, rtol=1e-4, atol=1e-3)
    assert not np.allclose(features_part(model)(rgb[..., ::-1], training=False).numpy(), inside, atol=1e-3)
    probs = model.predict(rgb, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bf16_features_stay_close_to_float32(trained_run):
    """The bf16 extractor is the same network: relative feature error stays near bf16's 8-bit mantissa."""
    from toolkit.keras_io import load_keras_model
    from toolkit.model import build_feature_extractor, features_part

    model = load_keras_model(trained_run / "best.keras")
    x = np.random.default_rng(0).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    reference = features_part(model)(x, training=False).numpy()
    low = build_feature_extractor(model, "bf16")(x, training=False).numpy()
    assert low.dtype == np.float32 and low.shape == reference.shape
    relative = np.linalg.norm(low - reference) / np.linalg.norm(reference)
    assert relative < 2e-2


@pytest.mark.slow  # TensorFlow in a subprocess
def test_best_keras_opens_in_plain_keras_without_the_toolkit(trained_run):
    """A colleague with only Keras installed can open the model and gets the same probabilities."""
    import subprocess
    import sys

    from toolkit.keras_io import load_keras_model, predict_in_batches

    x = np.random.default_rng(1).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    expected = predict_in_batches(load_keras_model(trained_run / "best.keras"), x)
    code = (
        "import sys, json, numpy as np, keras\n"
        f"model = keras.saving.load_model({str(trained_run / 'best.keras')!r}, safe_mode=True)\n"
        f"x = np.array(json.loads(sys.stdin.read()), np.float32)\n"
        "print(json.dumps(model.predict(x, verbose=0).tolist()))\n"
        "print('toolkit' in sys.modules, file=sys.stderr)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(x.tolist()), capture_output=True, text=True, env=env, cwd="/"
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stderr.strip().splitlines()[-1] == "False"
    np.testing.assert_allclose(np.array(json.loads(out.stdout.splitlines()[-1])), expected, atol=1e-5)


def test_run_folders_from_before_the_standard_preprocessing_layer_still_load(tmp_path):
    """Models saved with the old custom CaffePreprocess layer load and compute the same features."""
    import keras

    from toolkit.keras_io import IMAGENET_BGR_MEAN, custom_objects, load_keras_model

    legacy = custom_objects()["CaffePreprocess"]
    image = keras.Input((8, 8, 3))
    model = keras.Model(image, legacy(name="caffe_preprocess")(image))
    model.save(tmp_path / "old.keras")
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    loaded = load_keras_model(tmp_path / "old.keras")
    np.testing.assert_allclose(loaded(x).numpy(), x[..., ::-1] - np.array(IMAGENET_BGR_MEAN, np.float32), atol=1e-4)


BASE_CUTS = [(name, cut) for name in base_names() for cut in get_base(name).cuts]


@pytest.mark.parametrize("kind", list(Preprocessing))
def test_each_preprocessing_layer_computes_what_keras_applications_computes(kind):
    """The frozen 1x1 convolution equals keras.applications' own preprocess_input for that mode."""
    import keras

    from toolkit.model import pixel_preprocess

    image = keras.Input((8, 8, 3))
    model = keras.Model(image, pixel_preprocess(image, kind))
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=str(kind))
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-4)
    assert model.layers[-1].name == f"{kind}_preprocess" and not model.layers[-1].trainable


@pytest.mark.parametrize(("base", "block"), BASE_CUTS)
def test_the_cut_and_the_layers_above_it_compose_to_the_whole_model(base, block):
    """Cached fine-tuning's pieces: frozen part up to the cut, then the base above it (+ head) = the classifier.

    For every base and cut: residual bases replay their graph from the cut (BatchNorm in inference mode).
    """
    from toolkit.model import (
        build_classifier,
        build_feature_extractor,
        build_middle_model,
        build_upper_model,
        features_part,
        fine_tune_cut,
    )

    model, _ = build_classifier(2, 32, weights="none", head="gap+gmp", base=base)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    cut = build_feature_extractor(model, "fp32", until=fine_tune_cut(model, block))(x, training=False)
    np.testing.assert_allclose(
        build_middle_model(model, block)(cut, training=False),
        features_part(model)(x, training=False),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        build_upper_model(model, block)(cut, training=False), model(x, training=False), atol=1e-6
    )


@pytest.mark.parametrize("head", ["flatten", "gap", "gap+gmp", "mlp"])
def test_every_head_counts_the_flops_its_graph_has_and_standardises_its_inputs(head):
    """head_flops (the bench's floors) against the layers built; feature_norm sits right before the head's layers."""
    from toolkit.bases.flops import head_flops, model_flops
    from toolkit.model import build_head, feature_norm

    built = build_head((7, 7, 64), 3, head, 0.3, normalize=True)
    assert head_flops((7, 7, 64), 3, head) == pytest.approx(model_flops(built), rel=0.02)
    norm = feature_norm(built)
    assert norm is not None and not norm.trainable
    assert norm.input.shape[-1] == {"flatten": 7 * 7 * 64, "gap": 64}.get(head, 128)
    assert feature_norm(build_head((7, 7, 64), 3, head, 0.3)) is None


def test_fine_tuning_trains_the_unfrozen_blocks_and_keeps_the_heads_batch_norm_statistics():
    """The head's BatchNormalization stays in inference mode while the base fine-tunes: a training-mode pass moves
    no statistic of it (in training mode they trailed the base's changing features: ELPV's validation swung)."""
    from toolkit.model import build_classifier, fine_tuned_base_layers, head_part, unfreeze_for_fine_tuning

    model, _ = build_classifier(2, 32, weights="none", head="mlp", base="vgg16")
    norm = head_part(model).get_layer("hidden_norm")
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    model(x, training=True)
    moved = [w.numpy().copy() for w in norm.weights]  # before fine-tuning, a training pass updates them
    model(x, training=True)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(moved, norm.weights))
    unfreeze_for_fine_tuning(model, "block5")
    before = [w.numpy().copy() for w in norm.weights]
    model(x, training=True)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, norm.weights))
    trainable = {id(w) for w in model.trainable_weights}
    assert all(id(w) in trainable for layer in fine_tuned_base_layers(model, "block5") for w in layer.weights)
    assert not any(id(w) in trainable for w in norm.weights)
