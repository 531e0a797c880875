"""Grad-CAM as a second output of the classifier graph, so exported artifacts explain themselves.

Grad-CAM (Selvaraju et al. 2017) weighs each channel k of the base's last feature map A by
alpha_k = mean over positions of d score_c / d A_k, and the map is ReLU(sum_k alpha_k A_k). For the
toolkit's heads the gradient needs no autodiff: the head is pooling (or Flatten) followed by a chain of
Dense, BatchNormalization and Dropout layers, whose gradients are closed-form in forward ops:

- the score is the label's logit against the mean logit, z_c - mean_k z_k (softmax ignores a shift of every
  logit, so this is the logit made well-defined): d score / d logits = onehot(c) - 1/K, a constant. For two
  labels it is d log p_c / d logits (onehot(c) - p) divided by 2(1 - p_c): the same map once scaled to its
  peak. Not log p_c itself: its gradient vanishes with 1 - p_c, and an int8 artifact rounds a confident
  probability to 1, so its maps were all zero (the demo run: 12-28 of 150 images, AMX Xeon, 2026-12-07);
- Dense: g @ kernel^T, through a ReLU only where its output is positive;
- BatchNormalization in inference: g * gamma / sqrt(variance + epsilon); Dropout: g;
- global average pooling spreads g_k / HW over the positions; global max pooling puts g_k on the
  maximum's position; either way the mean over positions, alpha_k, is g_k / HW (gap+gmp: the sum);
- Flatten: g reshaped to H x W x C, averaged over positions;
- the base's own last max pooling, where its record names the map before it (`BaseSpec.cam_layer`: VGG's
  last convolution, 14 x 14 at 224 px instead of the pooled 7 x 7, as Grad-CAM takes the last convolutional
  layer): each window's gradient goes to one position, so the mean over the finer grid is the pooled
  mean times (pooled positions / positions). The same channel weights on a map with twice the resolution.

So the heatmap is matmuls, multiplies and comparisons that ONNX, TFLite, OpenVINO and onnxruntime-web
all run, and it is exactly the Grad-CAM that `toolkit.explain.grad_cam` takes with a GradientTape (the
tests hold the two equal). It is computed for every class at once: the output `heatmap` is
N x h x w x K (the feature map's grid, one map per label, in label order, before normalisation), and
the app picks the map of the class it reports. A head with any other layer is refused in one line.
"""

from __future__ import annotations

from toolkit.errors import ModelError
from toolkit.facts import HEATMAP_OUTPUT
from toolkit.model import features_part, head_part
from toolkit.tta import first_view, has_tta, mean_over_views, view_batch

POOLING = ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Concatenate")
CHAIN = ("Dense", "BatchNormalization", "Dropout")


def head_structure(head) -> tuple[str, list]:
    """(pooling: flatten | gap | gmp | gap+gmp, the chain of layers after it), or a one-line ModelError."""
    pooling: list[str] = []
    chain = []
    for layer in head.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind in POOLING and not chain:
            pooling.append(
                {"Flatten": "flatten", "GlobalAveragePooling2D": "gap", "GlobalMaxPooling2D": "gmp"}.get(kind, "")
            )
        elif kind in CHAIN:
            chain.append(layer)
        else:
            raise ModelError(f"no heatmap for this head: its layer {layer.name} ({kind}) has no Grad-CAM rule")
    named = "+".join(p for p in pooling if p)
    if named not in ("flatten", "gap", "gmp", "gap+gmp") or not chain or type(chain[-1]).__name__ != "Dense":
        raise ModelError(
            f"no heatmap for this head: expected pooling or Flatten, then Dense layers, got {named or 'none'}"
        )
    return named, chain


def _activation(layer) -> str:
    return getattr(layer.activation, "__name__", str(layer.activation))


def _centred_identity(classes: int):
    """onehot(c) - 1/K for every c, a constant K x K (`ops.eye` traces to MatrixDiagV3, which OpenVINO lacks)."""
    import numpy as np

    return np.eye(classes, dtype="float32") - np.float32(1.0 / classes)


def _pooled(ops, pooling: str, a):
    """The head's pooling (or Flatten) of the feature map `a`, as the head computes it."""
    if pooling == "flatten":
        return ops.reshape(a, (-1, a.shape[1] * a.shape[2] * a.shape[3]))
    parts = {"gap": [ops.mean(a, axis=(1, 2))], "gmp": [ops.max(a, axis=(1, 2))]}
    parts["gap+gmp"] = parts["gap"] + parts["gmp"]
    chosen = parts[pooling]
    return chosen[0] if len(chosen) == 1 else ops.concatenate(chosen, axis=-1)


def _grad_cam_layer():
    import keras

    ops = keras.ops

    class GradCam(keras.layers.Layer):
        """feature map N x h x w x C -> Grad-CAM N x h x w x K, one map per class (module docstring)."""

        def __init__(self, head, **kwargs):
            super().__init__(name=HEATMAP_OUTPUT, **kwargs)
            self.pooling, self.chain = head_structure(head)
            for layer in self.chain[:-1]:
                if type(layer).__name__ == "Dense" and _activation(layer) not in ("relu", "linear"):
                    raise ModelError(f"no heatmap for this head: {layer.name} has activation {_activation(layer)}")
            if _activation(self.chain[-1]) != "softmax":
                raise ModelError("no heatmap for this head: its last layer is not a softmax Dense")

        def _backward(self, outputs: list, probs):
            """d (z_c - mean z) / d (pooled vector), for every class c: N x K x D (1 x K x D for a linear chain)."""
            classes = probs.shape[-1]
            g = ops.expand_dims(ops.cast(_centred_identity(classes), probs.dtype), 0)
            for layer, out in zip(reversed(self.chain), reversed(outputs)):
                kind = type(layer).__name__
                if kind == "Dense":
                    if layer is not self.chain[-1] and _activation(layer) == "relu":
                        g = g * ops.expand_dims(ops.cast(ops.greater(out, 0), g.dtype), 1)
                    g = ops.matmul(g, ops.transpose(layer.kernel))
                elif kind == "BatchNormalization":
                    scale = ops.rsqrt(layer.moving_variance + layer.epsilon)
                    g = g * (scale if layer.gamma is None else scale * layer.gamma)
            return g

        def _channel_weights(self, g, a):
            """alpha: N x K x C, the mean over positions of the gradient at the feature map."""
            h, w, c = a.shape[1], a.shape[2], a.shape[3]
            if self.pooling == "flatten":
                return ops.mean(ops.reshape(g, (-1, g.shape[1], h * w, c)), axis=2)
            if self.pooling == "gap+gmp":
                g = g[..., :c] + g[..., c:]
            return g / float(h * w)

        def call(self, maps):
            """(the map Grad-CAM weighs, the head's input): the same tensor, or the input of the base's last
            max pooling; its gradient routes each window's to one position, so its mean over positions is the
            pooled map's times (pooled positions / positions): the same channel weights, rescaled."""
            cam_map, a = maps
            x, outputs = _pooled(ops, self.pooling, a), []
            for layer in self.chain:
                x = layer(x, training=False)
                outputs.append(x)
            alpha = self._channel_weights(self._backward(outputs, x), a)
            h, w, c = cam_map.shape[1], cam_map.shape[2], cam_map.shape[3]
            alpha = alpha * float(a.shape[1] * a.shape[2] / (h * w))
            cam = ops.matmul(ops.reshape(cam_map, (-1, h * w, c)), ops.transpose(alpha, (0, 2, 1)))
            return ops.reshape(ops.relu(cam), (-1, h, w, alpha.shape[1]))

    return GradCam


def _cam_layer(features):
    """(the nested base, its record's `cam_layer`) when the base is the features' last layer and names one."""
    import keras

    from toolkit.bases import spec_for_layer

    base = features.layers[-1]
    if not isinstance(base, keras.Model):
        return None, None
    try:
        return base, spec_for_layer(base.name).cam_layer
    except ModelError:  # a base the registry does not know: its output is the map
        return base, None


def cam_features(model, image):
    """(the map Grad-CAM weighs, the head's input) of `image`: the base's record names the first when the
    base ends in a max pooling of it (VGG's last convolution: twice the grid); otherwise both are the output."""
    import keras

    features = features_part(model)
    base, cam_layer = _cam_layer(features)
    if cam_layer is None:
        feature_map = features(image, training=False)
        return feature_map, feature_map
    tapped = keras.Model(base.input, [base.get_layer(cam_layer).output, base.output], name=f"{base.name}_cam")
    x = image
    for layer in features.layers[1:-1]:  # the preprocessing before the base
        x = layer(x)
    return tuple(tapped(x, training=False))


def heatmap_model(model):
    """The classifier with two outputs: `probs` (the same graph as the model's) and `heatmap` (Grad-CAM)."""
    import keras

    head = head_part(model)
    image = keras.Input(tuple(model.input_shape[1:]), name="image")
    tta = has_tta(model)  # its probabilities average flipped views (toolkit.tta); the map explains the image as it is
    cam_map, feature_map = cam_features(model, view_batch(image) if tta else image)
    probs = head(feature_map, training=False)
    if tta:
        probs, cam_map, feature_map = mean_over_views(probs), first_view(cam_map), first_view(feature_map)
    cam = _grad_cam_layer()(head)((cam_map, feature_map))
    return keras.Model(image, [probs, cam], name="classifier_with_heatmap")


def heatmap_record(model) -> dict:
    """What the facts record says about the heatmap output (`ModelFacts.extra["heatmap"]`)."""
    features = features_part(model)
    base, cam_layer = _cam_layer(features)
    shape = (base.get_layer(cam_layer) if cam_layer else features).output.shape
    return {
        "output": HEATMAP_OUTPUT,
        "method": "grad-cam",
        "grid": [int(shape[1]), int(shape[2])],
        "layout": "N x grid height x grid width x labels, one unnormalised map per label, in label order",
        "source": f"the base's {cam_layer or 'output'} feature map; channel weights: the gradient of the label's "
        "logit minus the mean logit, in closed form",
    }


def heatmap_function(model):
    """The classifier's two outputs as one traced function of a uint8 batch: (probabilities, maps)."""
    from toolkit.keras_io import inference_function

    return inference_function(heatmap_model(model))


def keras_heatmaps(model, images, batch_size: int = 32, forward=None):
    """(probabilities N x K, maps N x h x w x K) of the classifier `model` for uint8 `images`, in batches.

    The reference every heatmap artifact is compared with, and `toolkit explain`'s maps for a `.keras` file;
    `forward` (`heatmap_function(model)`) lets a caller with many batches trace the graph once.
    """
    import numpy as np

    forward = forward or heatmap_function(model)
    chunks = [forward(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    if not chunks:
        grid, classes = heatmap_record(model)["grid"], model.output_shape[-1]
        return np.zeros((0, classes), np.float32), np.zeros((0, *grid, classes), np.float32)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
