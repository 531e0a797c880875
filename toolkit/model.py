"""The classifier: the base's preprocessing in-graph, a frozen base (VGG16 by default), a small head.

Preprocessing lives inside the model, as a standard Keras layer, so that every
exported format takes raw RGB pixels (0..255) and nobody downstream has to
remember ImageNet's channel order or mean. The model is assembled from two
named sub-models, `features` (preprocessing + base) and `head`, so training can
run the frozen part once and fit only the head on its cached output. What a base
is (its builder, cuts, blocks) is its record in `toolkit.bases`, never parsed here.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from toolkit.bases import DEFAULT_BASE, BaseSpec, Preprocessing, get_base, spec_for_layer
from toolkit.bases.flops import HIDDEN_UNITS
from toolkit.errors import ModelError, WeightsError
from toolkit.keras_io import IMAGENET_BGR_MEAN
from toolkit.weights import WeightsInfo, WeightsRequest, imagenet_base

FEATURE_NORM = "feature_norm"  # the head's standardisation layer (build_head)
HEAD_LAYER = "head"  # the classifier's head sub-model (build_head): int8 files can keep it float by this name
OUTPUT_LAYER = "probs"  # the head's last layer: Dense + softmax (temperature scaling divides its weights)
IMAGENET_RGB_MEAN, IMAGENET_RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torch mode, on 0..1


class Head(StrEnum):
    """The new head: flatten (Flatten+Dense, the tutorial's), pooled: gap, gmp, gap+gmp (+Dropout+Dense),
    or mlp: gap+gmp, then one hidden layer (fastai's head: Dense 512 + ReLU + BatchNorm + Dropout)."""

    flatten = "flatten"
    gap = "gap"
    gmp = "gmp"
    gap_gmp = "gap+gmp"
    mlp = "mlp"


def _keras():
    import keras

    return keras


# The preprocessing a base wants, as one frozen 1x1 convolution: (kernel[in, out], bias) on raw RGB 0..255.
def _affine(kind: Preprocessing):
    import numpy as np

    kernel = np.zeros((3, 3), np.float32)
    if kind == Preprocessing.caffe:  # RGB -> BGR minus the ImageNet mean, as VGG was trained
        for out_channel, in_channel in enumerate((2, 1, 0)):
            kernel[in_channel, out_channel] = 1.0
        return kernel, -np.asarray(IMAGENET_BGR_MEAN, np.float32)
    if kind == Preprocessing.tf:  # x / 127.5 - 1, to [-1, 1]
        np.fill_diagonal(kernel, 1.0 / 127.5)
        return kernel, np.full(3, -1.0, np.float32)
    mean, std = np.asarray(IMAGENET_RGB_MEAN, np.float32), np.asarray(IMAGENET_RGB_STD, np.float32)
    np.fill_diagonal(kernel, 1.0 / (255.0 * std))  # torch: (x / 255 - mean) / std
    return kernel, -mean / std


def pixel_preprocess(x, kind: Preprocessing, suffix: str = "", dtype: str | None = None):
    """The base's preprocessing applied to the Keras tensor `x` of raw RGB 0..255.

    Built from one standard layer, a frozen 1x1 `Conv2D` (named "caffe_preprocess",
    "tf_preprocess" or "torch_preprocess"), so plain Keras opens `best.keras` without
    this package. caffe's products are by 1 and 0, so float32 results equal
    `x[..., ::-1] - mean` exactly;
    full-int8 converters quantise the layer per channel without loss (a REVERSE_V2
    channel swap had cost full-int8 TFLite 20 points of agreement).
    """
    layer = _keras().layers.Conv2D(3, 1, name=f"{kind}_preprocess{suffix}", trainable=False, dtype=dtype)
    y = layer(x)
    kernel, bias = _affine(kind)
    layer.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    return y


def build_base(spec: BaseSpec, image_size: int, request: WeightsRequest):
    """The base without its top, frozen; returns (base, WeightsInfo).

    `request.weights` is "imagenet", "none" or a path to a local weights file.
    "imagenet" goes through `toolkit.weights` (Keras's cache, its download, then the
    derived offline file); when none of them works that is a one-line error naming
    the alternatives, or, with `allow_random_fallback`, random weights recorded as such.
    """
    shape = (image_size, image_size, 3)
    if image_size < spec.min_size:
        raise ModelError(f"--image-size must be at least {spec.min_size} for {spec.name}, got {image_size}")
    weights = request.weights
    lowered = weights.lower()
    if lowered == "none":
        base, info = spec.build(shape), WeightsInfo(weights, "none")
    elif lowered == "imagenet":
        if spec.keras_weights_file is None:
            raise WeightsError(f"{spec.name} has no ImageNet weights; use --weights none or a weights file")
        base, info = imagenet_base(spec, shape, request)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path} (use imagenet, none, or a path)")
        try:  # through the builder, as keras.applications loads a file (a base may convert after loading)
            base = spec.build(shape, str(path))
        except Exception as exc:
            raise WeightsError(f"cannot load {spec.name} weights from {path}: {str(exc).splitlines()[0]}") from exc
        info = WeightsInfo(weights, "file", path=str(path.resolve()))
    base.trainable = False
    return base, info


def build_head(feature_shape: tuple[int, ...], num_classes: int, head: str, dropout: float, normalize: bool = False):
    """A small head on the base's feature map.

    `flatten` is the classic recipe (Flatten + Dense: 25,088 inputs at 224 px, which
    overfits a few thousand images); the pooled heads keep one number per channel:
    `gap` averages (how much of a pattern), `gmp` takes the maximum (whether a small
    defect appears anywhere), `gap+gmp` concatenates both. Dropout comes before the
    Dense layer on the pooled heads. `mlp` is gap+gmp with one hidden layer between
    (dropout/2, Dense 512 + ReLU, BatchNormalization, dropout), fastai's head: enough
    capacity to separate grades that one linear layer on frozen features cannot.

    `normalize` standardises the head's inputs with the training features' mean and
    variance (`set_feature_statistics`), as a frozen `BatchNormalization` named
    "feature_norm": pooled VGG16 activations reach the Dense layer on scales from 0.5
    (averaged) to 100 (maxed), which one learning rate cannot serve. A standard layer
    in the graph, so every artifact carries it and plain Keras opens the model.
    """
    keras = _keras()
    if head not in tuple(Head):
        raise ModelError(f"--head must be one of {', '.join(Head)}, got {head}")
    inputs = keras.Input(feature_shape, name="features")
    if head == "flatten":
        x = keras.layers.Flatten(name="flatten")(inputs)
    else:
        pooled = []
        if head in ("gap", "gap+gmp", "mlp"):
            pooled.append(keras.layers.GlobalAveragePooling2D(name="gap")(inputs))
        if head in ("gmp", "gap+gmp", "mlp"):
            pooled.append(keras.layers.GlobalMaxPooling2D(name="gmp")(inputs))
        x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="gap_gmp")(pooled)
    if normalize:
        x = keras.layers.BatchNormalization(center=False, scale=False, name=FEATURE_NORM, trainable=False)(x)
    if head == "mlp":
        x = keras.layers.Dropout(dropout / 2, name="hidden_dropout")(x)
        x = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden")(x)
        x = keras.layers.BatchNormalization(name="hidden_norm")(x)
    if head != "flatten":
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=OUTPUT_LAYER, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=HEAD_LAYER)


def build_classifier(
    num_classes: int,
    image_size: int,
    weights: str | WeightsRequest = "imagenet",
    head: str = "flatten",
    dropout: float = 0.3,
    base: str = DEFAULT_BASE,
    normalize: bool = False,
):
    """Return (model, WeightsInfo): image -> `features` sub-model -> `head` sub-model."""
    keras = _keras()
    if num_classes < 2:
        raise ModelError("a classifier needs at least two classes")
    request = weights if isinstance(weights, WeightsRequest) else WeightsRequest(weights)
    spec = get_base(base)
    base, info = build_base(spec, image_size, request)
    image = keras.Input((image_size, image_size, 3), name="image")
    x = pixel_preprocess(image, spec.preprocessing)
    x = base(x, training=False)
    features = keras.Model(image, x, name="features")
    features.trainable = False
    head_model = build_head(tuple(features.output.shape[1:]), num_classes, head, dropout, normalize)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = head_model(features(inputs, training=False))
    return keras.Model(inputs, outputs, name="classifier"), info


def features_part(model):
    return model.get_layer("features")


def head_part(model):
    return model.get_layer(HEAD_LAYER)


def fold_temperature(model, temperature: float) -> None:
    """Divide the last layer's kernel and bias by `temperature`: the model then outputs softmax(logits / T),
    the calibrated probabilities, and so does every artifact converted from it (no extra op anywhere)."""
    import numpy as np

    layer = head_part(model).get_layer(OUTPUT_LAYER)
    layer.set_weights([np.asarray(w, np.float64) / temperature for w in layer.get_weights()])


def feature_norm(head):
    """The head's frozen standardisation layer, or None when the head has none."""
    names = {layer.name for layer in head.layers}
    return head.get_layer(FEATURE_NORM) if FEATURE_NORM in names else None


def pre_norm(head):
    """The head up to its standardisation: what `set_feature_statistics` measures."""
    return _keras().Model(head.input, feature_norm(head).input, name="head_pre_norm")


def set_feature_statistics(head, mean, variance) -> None:
    """Store the training features' mean and variance in the head's `feature_norm` layer."""
    import numpy as np

    layer = feature_norm(head)
    layer.set_weights([np.asarray(mean, np.float32), np.asarray(variance, np.float32)])


def base_model(model):
    """The classifier's nested base network (a VGG16 run's is the layer "vgg16")."""
    return features_part(model).get_layer(base_spec(model).layer_name)


def base_spec(model) -> BaseSpec:
    """The registry record of the classifier's base, found by its nested model's layer name."""
    nested = [layer.name for layer in features_part(model).layers if hasattr(layer, "layers")]
    if len(nested) != 1:
        raise ModelError(f"expected one base network inside the model's features, found {nested or 'none'}")
    return spec_for_layer(nested[0])


def fine_tune_cut(model, cut: str) -> str:
    """The last frozen layer when fine-tuning starts at `cut`: cached fine-tuning trains on its output."""
    return base_spec(model).cut_layer(cut)


def above_cut(base, cut_layer: str):
    """The base's graph from `cut_layer`'s output to its own output, as a model sharing the base's layers.

    Keras replays the graph between the two tensors (residual branches included), so
    it is valid for any base whose cut a single tensor crosses; it fails in one line
    (Keras's "graph disconnected") for a layer inside a block.
    """
    keras = _keras()
    cut = base.get_layer(cut_layer)
    try:
        return keras.Model(cut.output, base.output, name=f"{base.name}_above_{cut_layer}")
    except ValueError as exc:
        raise ModelError(f"{cut_layer} is not a cut of {base.name} that one tensor crosses: {exc}") from exc


def fine_tuned_base_layers(model, cut: str) -> list:
    """The base's layers above the cut before `cut`: what fine-tuning trains (the head excluded)."""
    inner = above_cut(base_model(model), fine_tune_cut(model, cut))
    return [layer for layer in inner.layers if not isinstance(layer, _keras().layers.InputLayer)]


def unfreeze_for_fine_tuning(model, cut: str) -> int:
    """Make the base's layers above the cut trainable (the rest and the preprocessing stay frozen); return their count.

    The base keeps being called with training=False (build_classifier, `_from_cut`), so
    BatchNormalization layers normalise with their ImageNet statistics while their scale
    and offset train, as Keras's transfer-learning guide does.
    """
    trainable = {id(layer) for layer in fine_tuned_base_layers(model, cut)}
    features = features_part(model)
    features.trainable = True
    base = base_model(model)
    base.trainable = True
    for layer in features.layers:
        if layer is not base:
            layer.trainable = False
    for layer in base.layers:
        layer.trainable = id(layer) in trainable
    freeze_head_statistics(head_part(model))
    return len(trainable)


def freeze_head_statistics(head) -> None:
    """Keep the head's BatchNormalization in inference mode while the base fine-tunes (Keras's guide).

    In training mode its moving statistics trail the base's changing features by a couple of
    epochs, so the checkpoint's validation score would judge a model normalised with stale
    statistics (on ELPV it swung by tens of points between epochs); frozen, it is a fixed affine
    map that the Dense layers around it adapt to.
    """
    keras = _keras()
    for layer in head.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _base_in(model, precision: str):
    """The model's base, or a copy of it computing in bf16/fp16 (same weights)."""
    keras = _keras()
    base = base_model(model)
    if precision == "fp32":
        return base
    policy = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        low = base_spec(model).build(tuple(base.input.shape[1:]))
    finally:
        keras.config.set_dtype_policy(previous)
    low.set_weights(base.get_weights())
    return low


def build_feature_extractor(model, precision: str, until: str | None = None):
    """The frozen part as a model of raw pixels: preprocessing + the base up to layer `until` (default: all).

    bf16/fp16 rebuild the base in that compute precision; preprocessing runs in
    float32 and the output is cast back, so what follows sees float32 features.
    `until` is the last frozen layer when fine-tuning trains on cached features.
    """
    keras = _keras()
    features = features_part(model)
    if precision == "fp32" and until is None:
        return features
    base = _base_in(model, precision)
    if until is not None:
        base = keras.Model(base.input, base.get_layer(until).output, name=f"{base.name}_to_{until}")
    image = keras.Input(tuple(features.input.shape[1:]), name="image")
    x = pixel_preprocess(image, base_spec(model).preprocessing, suffix="_float32", dtype="float32")
    x = keras.ops.cast(base(x, training=False), "float32")
    return keras.Model(image, x, name=f"features_{precision}" + (f"_to_{until}" if until else ""))


def build_tap_extractor(model, layers: list[str | None]):
    """One fp32 pass of raw pixels with several outputs: the base's output at each of `layers` (None: its top,
    what `features_part` computes). The tuner stores the top and every cut's features from this single pass."""
    keras = _keras()
    base = base_model(model)
    taps = keras.Model(base.input, [base.output if name is None else base.get_layer(name).output for name in layers])
    image = keras.Input(tuple(features_part(model).input.shape[1:]), name="image")
    x = pixel_preprocess(image, base_spec(model).preprocessing, suffix="_float32", dtype="float32")
    return keras.Model(image, taps(x, training=False), name="features_taps")


def _from_cut(model, cut: str):
    """(input tensor at the cut before `cut`, the base's output) through the model's own layers, BN in inference."""
    keras = _keras()
    base = base_model(model)
    inner = above_cut(base, fine_tune_cut(model, cut))
    inputs = keras.Input(tuple(inner.input.shape[1:]), name="cut_features")
    return inputs, inner(inputs, training=False)


def build_upper_model(model, cut: str):
    """The trainable part of cached fine-tuning: `cut` onwards plus the head, on the cut's features.

    Its layers are the classifier's own (shared, not copied), so training it trains
    the classifier that the checkpoint saves.
    """
    keras = _keras()
    inputs, x = _from_cut(model, cut)
    return keras.Model(inputs, head_part(model)(x), name=f"from_{cut}")


def build_middle_model(model, cut: str):
    """The base from the cut before `cut` to its output: turns cached cut features into the head's features."""
    keras = _keras()
    inputs, x = _from_cut(model, cut)
    return keras.Model(inputs, x, name=f"base_from_{cut}")


def with_precision(model, precision: str):
    """The whole classifier with its base computing in `precision` (bf16/fp16), head in float32."""
    if precision == "fp32":
        return model
    keras = _keras()
    image = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(image, head_part(model)(build_feature_extractor(model, precision)(image)))
