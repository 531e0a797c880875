"""Test-time augmentation folded into the classifier graph, so every artifact carries it (`toolkit train --tta`).

The classifier sees each image four times, as the square's flips keep it: as it is, mirrored left to
right, upside down, and turned half a circle, in one batch through the same `features` and `head`
sub-models, and returns the mean of the four probability vectors. The views are fixed, not tuned: they
are what a registered, symmetric object (a solar cell, a slide, a dermoscopy image) looks like from the
other side, and they cost four times the compute. On the ELPV cell run of `make bench-real` (AMX Xeon,
2026-12-07) the four views moved the Keras test accuracy from 87.6% to 89.5%; the image with one flip
alone gave 87.3% (left-right) and 88.2% (upside down).

Built from keras.ops on symbolic tensors (flip, concatenate, reshape, mean): no custom layer, so the
model loads with `safe_mode=True` and every converter (ONNX, TFLite, OpenVINO) sees standard ops. The
wrapped model keeps `features` and `head` as its own layers, so what reads them (temperature folding,
the heatmap, the int8 fix's head scope) finds them where it always does.
"""

from __future__ import annotations

from toolkit.model import features_part, head_part

VIEWS = ("identity", "flip_left_right", "flip_up_down", "rotate_180")
TTA_MODEL = "classifier_tta"  # the wrapped model's name: how a saved model says it averages views


def has_tta(model) -> bool:
    return model.name == TTA_MODEL


def _views(image) -> list:
    """The image batch as each of VIEWS sees it (NHWC: axis 1 is height, 2 is width)."""
    import keras

    flip = keras.ops.flip
    return [image, flip(image, axis=2), flip(image, axis=1), flip(flip(image, axis=1), axis=2)]


def view_batch(image):
    """N images -> 4N, view by view: one pass of the network sees every view."""
    import keras

    return keras.ops.concatenate(_views(image), axis=0)


def _per_view(x):
    import keras

    return keras.ops.reshape(x, (len(VIEWS), -1, *x.shape[1:]))


def mean_over_views(x):
    """The mean over the views of a `view_batch` result (4N x ... -> N x ...)."""
    import keras

    return keras.ops.mean(_per_view(x), axis=0)


def first_view(x):
    """The rows of a `view_batch` result that belong to the image as it is."""
    return _per_view(x)[0]


def with_tta(model):
    """The classifier averaging its probabilities over VIEWS; a model that already does is returned as it is."""
    import keras

    if has_tta(model):
        return model
    image = keras.Input(tuple(model.input_shape[1:]), name="image")
    probs = head_part(model)(features_part(model)(view_batch(image), training=False), training=False)
    return keras.Model(image, mean_over_views(probs), name=TTA_MODEL)


def tta_record(model) -> list[str] | None:
    """What the facts record says (`ModelFacts.extra["tta"]`): the views averaged, or None."""
    return list(VIEWS) if has_tta(model) else None
