"""VGG16 (the default base), VGG19, and `tiny`, a test-only base of the same shape.

All take caffe preprocessing (in the classifier's graph) and name their layers
`blockN_...`, five blocks each ending in a max-pool, so fine-tuning cuts are the same
layer names. `tiny` (one 3x3 conv per block, 4 to 16 channels: about 5,000 parameters)
lets the plumbing tests (export, parity, runtime, serve, bench) run in seconds; the
tests about VGG16 itself keep a VGG16 run.
"""

from __future__ import annotations

from toolkit.bases.spec import BaseSpec, Preprocessing, keras_application, register

CUTS = {"block5": "block4_pool", "block4": "block3_pool"}  # first unfrozen block -> last frozen layer
TINY_CHANNELS = (4, 8, 8, 16, 16)


def build_tiny(input_shape: tuple[int, int, int], weights: str | None = None):
    """Five blocks of one 3x3 conv + ReLU and a 2x2 max-pool, named as VGG's layers are."""
    import keras

    if weights is not None:
        raise ValueError("the tiny test base has no pretrained weights")
    inputs = keras.Input(input_shape, name="input_layer")
    x = inputs
    for i, channels in enumerate(TINY_CHANNELS, start=1):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"block{i}_conv1")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny")


def _vgg_shaped(name: str, **record) -> BaseSpec:
    """A record of VGG's shape: caffe preprocessing, five `blockN_` blocks, the same cuts, 32 px at least."""
    shared = dict(preprocessing=Preprocessing.caffe, min_size=32, cuts=CUTS)
    return register(BaseSpec(name=name, layer_name=name, **shared, **record))


VGG16 = _vgg_shaped(
    "vgg16",
    build=keras_application("VGG16", "vgg16"),
    default_size=224,
    cam_layer="block5_conv3",
    keras_weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    offline_weights=True,
    imagenet_top1=71.3,
    description="VGG16 (Simonyan & Zisserman 2014), 13 convolutions; the tutorial's base",
)
VGG19 = _vgg_shaped(
    "vgg19",
    build=keras_application("VGG19", "vgg19"),
    default_size=224,
    cam_layer="block5_conv4",
    keras_weights_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top1=71.3,
    description="VGG19, 16 convolutions; the published ELPV result's base (Deitsch et al. 2019)",
)
TINY = _vgg_shaped(
    "tiny",
    build=build_tiny,
    default_size=32,
    cam_layer="block5_conv1",
    keras_weights_file=None,
    test_only=True,
    description="test-only: VGG-shaped, one conv per block, about 5,000 parameters",
)
