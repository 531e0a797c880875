"""The bases an app on a phone or in a browser wants: MobileNetV2, MobileNetV3 Small/Large, EfficientNetV2B0.

Cuts sit where a single tensor crosses: the residual `_add` that closes the last
block before a stage (the inverted-residual blocks' own shortcuts stay inside). Cut
names are the first trainable block's prefix, as Keras names the layers.
The classifier's graph holds the preprocessing (tf for the MobileNets, torch for
EfficientNetV2-B0), so the bases are built without their own (`include_preprocessing=False`).
Published top-1: keras.io/api/applications (MobileNetV2, EfficientNetV2B0) and the
keras.applications MobileNetV3 docstring (1.0, 224 px).
"""

from __future__ import annotations

from toolkit.bases.spec import Preprocessing, application_base

NO_OWN_PREPROCESSING = {"include_preprocessing": False}

MOBILENETV2 = application_base(
    "mobilenetv2",
    "MobileNetV2",
    "mobilenetv2",  # Keras's own name carries the input size ("mobilenetv2_1.00_224")
    preprocessing=Preprocessing.tf,
    cuts={"block_13": "block_12_add", "block_6": "block_5_add"},
    keras_weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    imagenet_top1=71.3,
    description="MobileNetV2 (Sandler et al. 2018), inverted residuals; MediaPipe Model Maker's default",
)
MOBILENETV3SMALL = application_base(
    "mobilenetv3small",
    "MobileNetV3Small",
    "MobileNetV3Small",
    options=NO_OWN_PREPROCESSING,
    preprocessing=Preprocessing.tf,
    cuts={"expanded_conv_8": "expanded_conv_7_add", "expanded_conv_3": "expanded_conv_2_add"},
    keras_weights_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    imagenet_top1=68.1,
    description="MobileNetV3 Small (Howard et al. 2019): hard-swish, squeeze-excite; the least compute here",
)
MOBILENETV3LARGE = application_base(
    "mobilenetv3large",
    "MobileNetV3Large",
    "MobileNetV3Large",
    options=NO_OWN_PREPROCESSING,
    preprocessing=Preprocessing.tf,
    cuts={"expanded_conv_12": "expanded_conv_11_add", "expanded_conv_6": "expanded_conv_5_add"},
    keras_weights_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    imagenet_top1=75.6,
    description="MobileNetV3 Large: hard-swish, squeeze-excite; a phone's accuracy/latency balance",
)
EFFICIENTNETV2B0 = application_base(
    "efficientnetv2b0",
    "EfficientNetV2B0",
    "efficientnetv2-b0",  # Keras derives the weight file's name from this one
    options=NO_OWN_PREPROCESSING,
    preprocessing=Preprocessing.torch,
    cuts={"block6": "block5e_add", "block5": "block4c_add"},
    keras_weights_file="efficientnetv2-b0_notop.h5",
    imagenet_top1=78.7,
    description="EfficientNetV2 B0 (Tan & Le 2021): fused-MBConv stem, squeeze-excite; most accurate per FLOP",
)
