"""Base networks: one small record per base, registered by name (as timm's registry and KerasHub presets).

    spec.py  BaseSpec (what a base is: how to build it, its preprocessing, sizes, fine-tuning cuts
             and FLOPs, as data) and the registry
    vgg.py   vgg16 (the default) and `tiny`, a test-only VGG-shaped base of a few thousand parameters

The model code asks the record instead of knowing VGG16; the nested base is found in a
classifier by its layer name (`BaseSpec.layer_name`), so runs made before the registry
(VGG16, layer "vgg16") load and fine-tune unchanged.
"""

from __future__ import annotations

from toolkit.bases import vgg  # noqa: F401  (registers its bases)
from toolkit.bases.spec import DEFAULT_BASE, BaseSpec, base_names, get_base, register, spec_for_layer

__all__ = ["DEFAULT_BASE", "BaseSpec", "base_names", "get_base", "register", "spec_for_layer"]
