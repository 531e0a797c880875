"""The base-network record and its registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import StrEnum

from toolkit.errors import ModelError

DEFAULT_BASE = "vgg16"


class Preprocessing(StrEnum):
    """How a base wants its pixels (keras.applications' modes); every classifier still takes raw RGB 0..255.

    caffe: RGB->BGR minus the ImageNet mean (VGG); tf: scaled to [-1, 1] (ResNetV2,
    MobileNets); torch: x/255 minus the ImageNet mean, over its std (EfficientNetV2-B,
    ConvNeXt). The classifier applies it as one frozen 1x1 convolution; bases that
    could carry their own (`include_preprocessing`) are built without it, because
    Keras's Normalization layer holds its mean as a captured constant that the ONNX
    converter turns into a missing graph input.
    """

    caffe = "caffe"
    tf = "tf"
    torch = "torch"


PREPROCESSING_TEXT = {
    Preprocessing.caffe: "caffe preprocessing (RGB->BGR, minus ImageNet mean) is in the graph",
    Preprocessing.tf: "tf preprocessing (x / 127.5 - 1) is in the graph",
    Preprocessing.torch: "torch preprocessing (x / 255, minus ImageNet mean, over ImageNet std) is in the graph",
}


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    """What the toolkit needs to know about a base network, in one place.

    `build(input_shape, weights=None)` returns the headless Keras model named
    `layer_name` (weights: None for random, "imagenet" or a file, as keras.applications
    takes them); it is called under the dtype policy the caller sets, which is how the
    bf16/fp16 copies of a base are made. `cuts` maps a fine-tuning start
    (`--fine-tune-from`, the first one is the default) to the last frozen layer: a
    block boundary that a single tensor crosses (tests/test_bases.py checks it on the
    built graph), so cached fine-tuning trains the graph above it on that layer's output.
    `cam_layer` is the feature map Grad-CAM weighs when the base ends in a max pooling of it
    (VGG's last convolution before `block5_pool`: twice the grid, 14 x 14 at 224 px, where the
    pooled 7 x 7 map put the demo's peaks in the lesion on 79% of test images and this one on 83%);
    None: the base's output, already its last convolutional activation.
    """

    name: str
    layer_name: str  # the nested Keras model's name inside a classifier's `features`
    build: Callable[..., object]
    preprocessing: Preprocessing
    default_size: int
    min_size: int
    cuts: dict[str, str]
    keras_weights_file: str | None  # Keras's ImageNet no-top file (None: no pretrained weights)
    offline_weights: bool = False  # the resolver has an offline source (VGG16's derived file)
    imagenet_top1: float | None = None  # published ImageNet top-1, for `toolkit bases` (not measured here)
    cam_layer: str | None = None  # Grad-CAM's feature map, when not the base's output (see above)
    test_only: bool = False
    description: str = ""

    @property
    def preprocessing_text(self) -> str:
        return "raw RGB pixels 0..255, NHWC; " + PREPROCESSING_TEXT[self.preprocessing]

    @property
    def default_cut(self) -> str:
        return next(iter(self.cuts))

    def cut_layer(self, cut: str) -> str:
        """The last frozen layer of fine-tuning from `cut`, refused in one line when the base has no such cut."""
        if cut not in self.cuts:
            raise ModelError(f"--fine-tune-from must be one of {', '.join(self.cuts)} for {self.name}, got {cut}")
        return self.cuts[cut]

    def flops(self, image_size: int, num_classes: int, head: str = "flatten") -> float:
        """Floating-point operations (2 per multiply-add) of one forward pass with `head`, counted on the graph."""
        from toolkit.bases.flops import classifier_flops

        return classifier_flops(self, image_size, num_classes, head)


REGISTRY: dict[str, BaseSpec] = {}


def register(spec: BaseSpec) -> BaseSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"base {spec.name} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def base_names(include_test: bool = False) -> list[str]:
    """The registered bases, the default first, then in the order their modules registered them."""
    names = [name for name, spec in REGISTRY.items() if include_test or not spec.test_only]
    return sorted(names, key=lambda name: name != DEFAULT_BASE)


def get_base(name: str) -> BaseSpec:
    if name not in REGISTRY:
        raise ModelError(f"unknown base {name}; choose from {', '.join(base_names())}")
    return REGISTRY[name]


def spec_for_layer(layer_name: str) -> BaseSpec:
    """The record of the nested base called `layer_name` in a classifier (how a saved model names its base)."""
    for spec in REGISTRY.values():
        if spec.layer_name == layer_name:
            return spec
    raise ModelError(f"the model's base {layer_name!r} is not a registered base ({', '.join(base_names())})")


def cuts_help() -> str:
    """Every public base's fine-tuning cuts, for `--fine-tune-from`'s help (default first)."""
    return "; ".join(f"{name}: {', '.join(get_base(name).cuts)}" for name in base_names())


def keras_application(name: str, layer_name: str, **options) -> Callable[..., object]:
    """A builder for keras.applications.<name> without its top, named `layer_name` (looked up at call time).

    keras.applications names some bases by their input size (MobileNetV2's
    "mobilenetv2_1.00_224"); the fixed name is how a saved classifier's base is found.
    """

    def build(input_shape: tuple[int, int, int], weights: str | None = None):
        import keras

        constructor = getattr(keras.applications, name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape, name=layer_name, **options)

    return build


def application_base(name: str, application: str, layer_name: str, **record) -> BaseSpec:
    """Register a keras.applications base (224 px by default, 32 at least); `options` go to its constructor
    (`include_preprocessing=False` where the record's mode runs in the classifier), `build` replaces the builder."""
    options = record.pop("options", {})
    builder = record.pop("build", None) or keras_application(application, layer_name, **options)
    shared = dict(default_size=224, min_size=32)
    return register(BaseSpec(name=name, layer_name=layer_name, build=builder, **shared, **record))
