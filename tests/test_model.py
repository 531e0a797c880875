from __future__ import annotations

import numpy as np

from tests.conftest import IMAGE_SIZE


def test_saved_model_takes_raw_pixels_and_keeps_preprocessing_inside(trained_run):
    from toolkit.model import IMAGENET_BGR_MEAN, features_part, load_keras_model, vgg_base

    model = load_keras_model(trained_run / "best.keras")
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert not any("augment" in layer.name for layer in model.layers)
    rgb = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    # VGG16's own recipe by hand: RGB -> BGR, minus the ImageNet mean, then the base.
    by_hand = vgg_base(model)(rgb[..., ::-1] - np.array(IMAGENET_BGR_MEAN, np.float32), training=False).numpy()
    inside = features_part(model)(rgb, training=False).numpy()
    np.testing.assert_allclose(inside, by_hand, rtol=1e-4, atol=1e-3)
    assert not np.allclose(features_part(model)(rgb[..., ::-1], training=False).numpy(), inside, atol=1e-3)
    probs = model.predict(rgb, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bf16_features_stay_close_to_float32(trained_run):
    """The bf16 extractor is the same network: relative feature error stays near bf16's 8-bit mantissa."""
    from toolkit.model import build_feature_extractor, features_part, load_keras_model

    model = load_keras_model(trained_run / "best.keras")
    x = np.random.default_rng(0).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    reference = features_part(model)(x, training=False).numpy()
    low = build_feature_extractor(model, "bf16")(x, training=False).numpy()
    assert low.dtype == np.float32 and low.shape == reference.shape
    relative = np.linalg.norm(low - reference) / np.linalg.norm(reference)
    assert relative < 2e-2
