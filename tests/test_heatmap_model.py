"""The in-graph Grad-CAM (toolkit.heatmap_model) equals Grad-CAM taken with a GradientTape, for every head."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.errors import ModelError

SIZE = 64  # the tiny base's Grad-CAM grid at 64 px (block5_conv1, before its last pooling): 4 x 4


def tape_grad_cam(model, pixels: np.ndarray) -> np.ndarray:
    """The oracle: Grad-CAM of every class by autodiff, N x h x w x K (unnormalised); score z_c - mean z."""
    import keras
    import tensorflow as tf

    from toolkit.bases import get_base
    from toolkit.model import features_part, head_part

    features = features_part(model)
    base = features.layers[-1]  # the tiny base: its record's cam_layer feeds its last layer, a max pooling
    below = keras.Model(base.input, base.get_layer(get_base("tiny").cam_layer).output)
    activations = below(features.layers[1](tf.constant(pixels, tf.float32)), training=False)
    head = head_part(model)
    last = head.layers[-1]  # the softmax Dense: its logits, taken apart from its activation
    penultimate = keras.Model(head.inputs, last.input)
    maps = []
    for c in range(model.output_shape[-1]):
        with tf.GradientTape() as tape:
            tape.watch(activations)
            pooled = base.layers[-1](activations)
            logits = tf.matmul(penultimate(pooled, training=False), last.kernel) + last.bias
            score = logits[:, c] - tf.reduce_mean(logits, axis=-1)  # z_c - mean z: the logits' shift cancels
        weights = tf.reduce_mean(tape.gradient(score, activations), axis=(1, 2), keepdims=True)
        maps.append(tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1)).numpy())
    return np.stack(maps, axis=-1)


def _randomised_norms(model, rng) -> None:
    """BatchNormalization statistics away from 0/1, so their gradient rule is exercised."""
    from toolkit.model import head_part

    for layer in head_part(model).layers:
        if type(layer).__name__ == "BatchNormalization":
            weights = layer.get_weights()
            new = [rng.uniform(0.5, 2.0, w.shape).astype(np.float32) for w in weights]
            new[-2] = rng.normal(size=weights[-2].shape).astype(np.float32)  # moving mean
            layer.set_weights(new)


@pytest.mark.parametrize(
    ("head", "normalize"),
    [("flatten", True), ("gap", False), ("gmp", True), ("gap+gmp", True), ("mlp", True), ("mlp", False)],
)
def test_the_in_graph_map_is_grad_cam_for_every_head(head, normalize):
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.model import build_classifier

    rng = np.random.default_rng(0)
    model, _ = build_classifier(3, SIZE, "none", head=head, dropout=0.2, base="tiny", normalize=normalize)
    _randomised_norms(model, rng)
    pixels = rng.integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.uint8)
    probs, maps = keras_heatmaps(model, pixels)
    oracle = tape_grad_cam(model, pixels)
    assert maps.shape == (4, 4, 4, 3)
    np.testing.assert_allclose(probs, model.predict(pixels.astype(np.float32), verbose=0), atol=1e-6)
    scale = oracle.max(axis=(1, 2)) + 1e-30
    assert (scale > 1e-6).sum() >= len(pixels)  # maps with a peak to compare, saturated probabilities too
    assert (np.abs(maps - oracle).max(axis=(1, 2)) / scale).max() < 1e-3


def test_a_head_layer_without_a_rule_is_refused_in_one_line():
    import keras

    from toolkit.heatmap_model import heatmap_model

    image = keras.Input((SIZE, SIZE, 3), name="image")
    features = keras.Model(image, keras.layers.Conv2D(4, 3)(image), name="features")
    inputs = keras.Input(features.output.shape[1:])
    x = keras.layers.LayerNormalization(name="odd")(keras.layers.GlobalAveragePooling2D()(inputs))
    head = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probs")(x), name="head")
    outer = keras.Input((SIZE, SIZE, 3), name="image")
    model = keras.Model(outer, head(features(outer)))
    with pytest.raises(ModelError, match="odd"):
        heatmap_model(model)


def test_a_saturated_probability_keeps_its_map():
    """Logits scaled until float32 rounds p to exactly 1: each label's map, scaled to its peak, does not change.

    A map built on d log p / d logits = onehot - p vanishes there, as int8 artifacts round confident
    probabilities to 1 (the demo run's maps were all zero on 12-28 of 150 images). With a linear head and no
    bias, the reported label's logit margin is the mean of its unrectified map, so that map has a peak.
    """
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.model import build_classifier, head_part
    from toolkit.runtime.heatmap import class_maps, normalized

    rng = np.random.default_rng(1)
    model, _ = build_classifier(2, SIZE, "none", head="gap", dropout=0.0, base="tiny", normalize=False)
    pixels = rng.integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.uint8)
    last = head_part(model).layers[-1]
    kernel, bias = last.get_weights()
    runs = []
    for scale in (1e-3, 1e4):  # probabilities near 1/2, then rounded to exactly 0 and 1
        last.set_weights([kernel * scale, np.zeros_like(bias)])
        runs.append(keras_heatmaps(model, pixels))
    (_, gentle), (probs, saturated) = runs
    assert (probs.max(axis=1) == 1.0).all()
    reported = probs.argmax(axis=1)
    reference = normalized(class_maps(gentle, reported))
    assert (reference.reshape(len(pixels), -1).max(axis=1) == 1.0).all()
    np.testing.assert_allclose(normalized(class_maps(saturated, reported)), reference, atol=1e-4)
