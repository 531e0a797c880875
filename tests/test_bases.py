"""The base-network registry: each record's facts checked against the network it builds."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.bases import base_names, get_base
from toolkit.bases.spec import REGISTRY
from toolkit.errors import DatasetError, ModelError


def _graph_flops(model, num_classes: int) -> float:
    """2 x multiply-adds of the 3x3 convolutions, counted from the built Keras graph, plus a flatten head."""
    import keras

    flops = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            flops += 2.0 * h * w * kh * kw * c_in * c_out
    return flops + 2.0 * int(np.prod(model.output.shape[1:])) * num_classes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_record_matches_the_network_it_builds(name):
    spec = get_base(name)
    base = spec.build((spec.min_size, spec.min_size, 3))
    assert base.name == spec.layer_name
    assert spec.flops(spec.min_size, 2) == pytest.approx(_graph_flops(base, 2))
    assert base.output.shape[-1] == spec.features_channels
    names = [layer.name for layer in base.layers]
    for block, cut in spec.cuts.items():
        first = spec.cut_block(block)
        assert spec.block_index(cut) == first - 1  # the cut closes the block before the first unfrozen one
        after = names[names.index(cut) + 1 :]
        assert after and all(spec.block_index(n) >= first for n in after)  # a chain: nothing frozen above it


def test_unknown_bases_and_cuts_are_one_line_errors_and_test_bases_stay_hidden():
    assert "vgg16" in base_names() and "tiny" not in base_names() and "tiny" in base_names(include_test=True)
    with pytest.raises(ModelError, match="unknown base resnet; choose from vgg16"):
        get_base("resnet")
    with pytest.raises(ModelError, match="must be one of block5, block4 for vgg16"):
        get_base("vgg16").cut_block("block2")


def test_train_config_checks_the_base_and_its_sizes(tmp_path):
    from tests.conftest import train_config

    with pytest.raises(DatasetError, match="unknown base"):
        train_config(tmp_path, tmp_path / "o", base="nope").validate()
    with pytest.raises(DatasetError, match="at least 32 for vgg16"):
        train_config(tmp_path, tmp_path / "o", base="vgg16", image_size=16).validate()
    train_config(tmp_path, tmp_path / "o", base="vgg16").validate()


def test_vgg16_flops_match_the_published_figure():
    assert get_base("vgg16").flops(224, 2) / 1e9 == pytest.approx(30.7, abs=0.05)
