"""`toolkit bases`: one row per registered base, its facts read from its record (parameters counted by building it)."""

from __future__ import annotations

import dataclasses

from toolkit.bases.spec import base_names, get_base

TABLE_CLASSES = 2  # the FLOP column counts a two-class gap head, the size of any small head


@dataclasses.dataclass
class BaseRow:
    name: str
    gflop: float  # at the default size, one image, with a two-class pooled head
    parameters: int  # the base without its top
    default_size: int
    min_size: int
    cuts: dict[str, str]
    imagenet_top1: float | None  # published (keras.applications' table); not measured here
    weights_here: str  # which ImageNet source this machine has: "keras cache", "offline source", or "none"
    description: str


def _weights_here(spec) -> str:
    from toolkit.weights import keras_home

    if spec.keras_weights_file is None:
        return "none (no pretrained weights)"
    if (keras_home() / "models" / spec.keras_weights_file).is_file():
        return "keras cache"
    if spec.offline_weights:
        return "offline source (pip, converted once)"
    return "Keras download (or --weights PATH)"


def base_row(name: str) -> BaseRow:
    """One base's row: building it once (random weights, no download) counts its parameters and its FLOPs."""
    from toolkit.bases.flops import base_flops
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()  # quiet: TensorFlow's start-up lines kept off the table
    spec = get_base(name)
    model = spec.build((spec.default_size, spec.default_size, 3))
    base_flops(spec, spec.default_size, built=model)
    return BaseRow(
        name=name,
        gflop=spec.flops(spec.default_size, TABLE_CLASSES, "gap") / 1e9,
        parameters=int(model.count_params()),
        default_size=spec.default_size,
        min_size=spec.min_size,
        cuts=dict(spec.cuts),
        imagenet_top1=spec.imagenet_top1,
        weights_here=_weights_here(spec),
        description=spec.description,
    )


def base_rows(include_test: bool = False) -> list[BaseRow]:
    """Every base's row."""
    return [base_row(name) for name in base_names(include_test)]
