"""FLOPs counted on the built Keras graph, for any base (no per-network table).

Two FLOPs per multiply-add of the layers that carry a kernel (convolutions, grouped,
depthwise and separable ones, and Dense, also when applied per pixel as ConvNeXt's
pointwise layers are), nested models included; element-wise layers, pooling and
normalisation are left out, as the published GMAC figures of these networks leave them.
"""

from __future__ import annotations

import math

KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def layer_macs(layer) -> int:
    """Multiply-adds of one call of `layer`: each kernel's size times the output positions it is applied at."""
    if hasattr(layer, "layers"):  # a nested model (ConvNeXt's downsampling blocks, a classifier's base)
        return sum(layer_macs(inner) for inner in layer.layers)
    kernels = [getattr(layer, name) for name in KERNEL_ATTRIBUTES if getattr(layer, name, None) is not None]
    if not kernels:
        return 0
    positions = math.prod(int(d) for d in layer.output.shape[1:-1])  # H x W (or 1 for a Dense on a vector)
    return sum(positions * math.prod(int(d) for d in kernel.shape) for kernel in kernels)


def model_flops(model) -> float:
    """2 x multiply-adds of one image through `model` (a base, a head or a whole classifier)."""
    return 2.0 * layer_macs(model)


_COUNTED: dict[tuple[str, int], tuple[float, tuple[int, ...]]] = {}


def base_flops(spec, image_size: int, built=None) -> tuple[float, tuple[int, ...]]:
    """(FLOPs, output shape) of the base of record `spec` at `image_size`, counted once per process: on `built`
    when the caller has the base already, else on one built here with random weights."""
    key = (spec.name, image_size)
    if key not in _COUNTED:
        base = built if built is not None else spec.build((image_size, image_size, 3))
        _COUNTED[key] = model_flops(base), tuple(int(d) for d in base.output.shape[1:])
    return _COUNTED[key]


HIDDEN_UNITS = 512  # the mlp head's hidden layer (model.build_head), as fastai's create_head; counted here


def head_flops(feature_shape: tuple[int, ...], num_classes: int, head: str) -> float:
    """The head's Dense layers: all features when flattened, one (gap, gmp) or two (gap+gmp, mlp) per channel pooled."""
    channels = feature_shape[-1]
    inputs = {"flatten": math.prod(feature_shape), "gap+gmp": 2 * channels, "mlp": 2 * channels}.get(head, channels)
    if head == "mlp":
        return 2.0 * (inputs * HIDDEN_UNITS + HIDDEN_UNITS * num_classes)
    return 2.0 * inputs * num_classes


def classifier_flops(spec, image_size: int, num_classes: int, head: str = "flatten") -> float:
    flops, shape = base_flops(spec, image_size)
    return flops + head_flops(shape, num_classes, head)
