"""The base-network record and its registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from toolkit.errors import ModelError

DEFAULT_BASE = "vgg16"

# A convolution chain as data: (in channels, out channels) for a 3x3 conv, "pool" for a 2x2 max-pool.
ConvChain = tuple[tuple[int, int] | str, ...]


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    """What the toolkit needs to know about a base network, in one place.

    `build(input_shape, weights=None)` returns the headless Keras model (weights: None
    for random, "imagenet" or a file, as keras.applications takes them); it is called
    under the dtype policy the caller sets, which is how the bf16/fp16 copies of a base
    are made. `cuts` maps a
    fine-tuning start (`--fine-tune-from`) to the last frozen layer, a block boundary
    that a single tensor crosses: cached fine-tuning trains on that layer's output.
    `blocks` lists the block prefix of every layer name from which a block is
    trainable (data, not parsed from names at run time).
    """

    name: str
    layer_name: str  # the nested Keras model's name inside a classifier's `features`
    build: Callable[..., object]
    preprocessing: str  # "caffe": RGB->BGR minus the ImageNet mean, in the graph
    preprocessing_text: str
    default_size: int
    min_size: int
    cuts: dict[str, str]
    blocks: tuple[str, ...]  # block prefixes in order: "block1", ..., "block5"
    conv_chain: ConvChain  # for the FLOP count of a plain chain of 3x3 convolutions
    features_channels: int
    keras_weights_file: str | None  # Keras's ImageNet no-top file (None: no pretrained weights)
    offline_weights: bool = False  # the resolver has an offline source (VGG16's derived file)
    imagenet_top1: float | None = None  # published ImageNet top-1 (keras.applications' table), for `toolkit bases`
    test_only: bool = False
    description: str = ""

    def block_index(self, layer_name: str) -> int:
        """1-based position of the block `layer_name` belongs to (0: no block, e.g. the input)."""
        for i, block in enumerate(self.blocks, start=1):
            if layer_name.startswith(block + "_"):
                return i
        return 0

    def cut_block(self, block: str) -> int:
        """The block index of a fine-tuning start, refused in one line when the base has no such cut."""
        if block not in self.cuts:
            raise ModelError(f"--fine-tune-from must be one of {', '.join(self.cuts)} for {self.name}, got {block}")
        return self.blocks.index(block) + 1

    def flops(self, image_size: int, num_classes: int, head: str = "flatten") -> float:
        """Floating-point operations (2 per multiply-add) of one forward pass with `head`."""
        side, flops = image_size, 0.0
        for layer in self.conv_chain:
            if layer == "pool":
                side //= 2
                continue
            c_in, c_out = layer
            flops += 2.0 * side * side * 9 * c_in * c_out
        c = self.features_channels
        features = {"flatten": side * side * c, "gap+gmp": 2 * c}.get(head, c)
        return flops + 2.0 * features * num_classes


REGISTRY: dict[str, BaseSpec] = {}


def register(spec: BaseSpec) -> BaseSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"base {spec.name} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def base_names(include_test: bool = False) -> list[str]:
    return [name for name, spec in REGISTRY.items() if include_test or not spec.test_only]


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
