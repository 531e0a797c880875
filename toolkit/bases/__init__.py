"""Base networks: one small record per base, registered by name (as timm's registry and KerasHub presets).

    spec.py  BaseSpec (what a base is: how to build it, its preprocessing, sizes, fine-tuning cuts
             and FLOPs, as data) and the registry
    flops.py FLOPs counted on the built graph (any base)
    vgg.py   vgg16 (the default), vgg19 and `tiny`, a test-only VGG-shaped base of a few thousand parameters
    mobile.py  mobilenetv2, mobilenetv3small, mobilenetv3large, efficientnetv2b0
    server.py  resnet50v2, convnexttiny

The model code asks the record instead of knowing VGG16; the nested base is found in a
classifier by its layer name (`BaseSpec.layer_name`), so runs made before the registry
(VGG16, layer "vgg16") load and fine-tune unchanged.
"""

from __future__ import annotations

# isort: off  (each module registers its bases; this order is `toolkit bases`' order, the default first)
from toolkit.bases import (
    mobile,  # noqa: F401
    server,  # noqa: F401
    vgg,  # noqa: F401
)

# isort: on
from toolkit.bases.spec import (
    DEFAULT_BASE,
    BaseSpec,
    Preprocessing,
    base_names,
    cuts_help,
    get_base,
    register,
    spec_for_layer,
)

__all__ = [
    "DEFAULT_BASE",
    "BaseSpec",
    "Preprocessing",
    "base_names",
    "cuts_help",
    "get_base",
    "register",
    "spec_for_layer",
]
