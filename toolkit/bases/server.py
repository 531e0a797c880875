"""Bases for a server: ResNet50V2 and ConvNeXtTiny, more compute than the mobile ones, more accuracy.

ResNet50V2 takes tf preprocessing in the classifier's graph; its stages end in the
`convN_blockM_out` additions, and a cut names the first trainable stage. ConvNeXtTiny
takes torch preprocessing in the classifier's graph (built `include_preprocessing=False`); a single tensor
crosses only at its downsampling blocks, so a cut trains the stage after one of them
(the downsampling layer stays frozen). Keras builds its 7x7 depthwise convolutions as
grouped `Conv2D`s, which TensorFlow runs through XLA on CPU, a call the ONNX converter
cannot open: the builder swaps each for the `DepthwiseConv2D` it equals (same weights). Published top-1: keras.io/api/applications
(ResNet50V2) and the ConvNeXt paper (ConvNeXt-T, ImageNet-1k, 224 px).
"""

from __future__ import annotations

from toolkit.bases.spec import Preprocessing, application_base, keras_application

_convnext_tiny = keras_application("ConvNeXtTiny", "convnext_tiny", include_preprocessing=False)


def _depthwise_twin(layer):
    """A `DepthwiseConv2D` for a grouped `Conv2D` with one input channel per group; any other layer as it is."""
    import keras

    if not isinstance(layer, keras.layers.Conv2D) or layer.groups == 1 or layer.groups != layer.filters:
        return layer.__class__.from_config(layer.get_config())
    return keras.layers.DepthwiseConv2D(
        layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        use_bias=layer.use_bias,
        name=layer.name,
        dtype=layer.dtype_policy,
    )


def build_convnext_tiny(input_shape: tuple[int, int, int], weights: str | None = None):
    """ConvNeXtTiny from keras.applications (its weights loaded there), its grouped convolutions made depthwise.

    A grouped kernel (7, 7, 1, C) is the depthwise kernel (7, 7, C, 1) transposed.
    """
    import keras

    grouped = _convnext_tiny(input_shape, weights)
    twin = keras.models.clone_model(grouped, clone_function=_depthwise_twin)
    for source, target in zip(grouped.layers, twin.layers, strict=True):
        values = source.get_weights()
        if isinstance(target, keras.layers.DepthwiseConv2D):
            values = [values[0].transpose(0, 1, 3, 2), *values[1:]]
        target.set_weights(values)
    return twin


RESNET50V2 = application_base(
    "resnet50v2",
    "ResNet50V2",
    "resnet50v2",
    preprocessing=Preprocessing.tf,
    cuts={"conv5": "conv4_block6_out", "conv4": "conv3_block4_out"},
    keras_weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top1=76.0,
    description="ResNet50V2 (He et al. 2016), pre-activation residual stages",
)
CONVNEXTTINY = application_base(
    "convnexttiny",
    "ConvNeXtTiny",
    "convnext_tiny",  # Keras checks the weights variant against this name
    build=build_convnext_tiny,
    preprocessing=Preprocessing.torch,
    cuts={
        "stage_3": "convnext_tiny_downsampling_block_2",
        "stage_2": "convnext_tiny_downsampling_block_1",
    },
    keras_weights_file="convnext_tiny_notop.h5",
    imagenet_top1=82.1,
    description="ConvNeXt Tiny (Liu et al. 2022): 7x7 depthwise convolutions, LayerNorm, GELU",
)
