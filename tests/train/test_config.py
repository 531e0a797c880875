"""TrainConfig: grouped by concern, flat on the command line and in config.json, each range checked once."""

from __future__ import annotations

import dataclasses

import pytest

from toolkit.errors import DatasetError
from toolkit.train.config import FLAT_NAMES, RUN_FIELDS, TrainConfig


def test_every_group_field_has_exactly_one_flat_name():
    config = TrainConfig()
    fields = {
        (group.name, field.name)
        for group in dataclasses.fields(TrainConfig)
        if group.name not in RUN_FIELDS
        for field in dataclasses.fields(getattr(config, group.name))
    }
    assert sorted(FLAT_NAMES.values()) == sorted(fields)


def test_flat_settings_round_trip_and_resolve_the_base_defaults():
    config = TrainConfig.from_flat(data_dir="d", out="o", base="mobilenetv2", epochs=3, fine_tune_lr=1e-4)
    assert config.data.folder == "d" and config.optim.epochs == 3 and config.fine_tune.lr == 1e-4
    assert config.base.image_size == 224 and config.fine_tune.cut == "block_13"  # the base's own
    flat = config.to_flat()
    assert flat["fine_tune_from"] == "block_13" and flat["out"] == "o"
    assert TrainConfig.from_flat(**flat) == config


def test_a_config_json_from_before_the_grouping_loads():
    """config.json stayed flat: a stored VGG16 run's settings (no base key then) give the same config."""
    old = {"data_dir": "d", "out": "o", "image_size": 224, "epochs": 10, "head": "flatten", "fine_tune_from": "block5"}
    config = TrainConfig.from_flat(**old)
    assert config.base.name == "vgg16" and config.head.kind == "flatten" and config.fine_tune.cut == "block5"
    with pytest.raises(TypeError, match="unknown TrainConfig setting"):
        TrainConfig.from_flat(**old, learning_rate=0.1)


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"image_size": 16}, "at least 32 for vgg16"),
        ({"base": "resnet50v2", "fine_tune_from": "block5"}, "one of conv5, conv4 for resnet50v2"),
        ({"lr": 0}, "--lr and --fine-tune-lr must be positive"),
        ({"dropout": 1.0}, "--dropout must be in"),
        ({"aug_views": 2, "augment": False}, "needs augmentation"),
        ({"head": "dense"}, "--head must be one of"),
    ],
)
def test_validate_refuses_each_impossible_setting_in_one_line(flat, message):
    with pytest.raises(DatasetError, match=message):
        TrainConfig.from_flat(data_dir="d", out="o", **flat).validate()


def test_class_weight_auto_balances_more_than_two_classes_only():
    import numpy as np

    from toolkit.train.fit import class_weights

    three = np.array([0] * 6 + [1] * 3 + [2])
    assert class_weights("auto", three, 3) == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
    assert class_weights("auto", np.array([0, 0, 0, 1]), 2) is None  # two classes: the operating point's job
    assert class_weights("balanced", np.array([0, 0, 0, 1]), 2) == pytest.approx({0: 2 / 3, 1: 2.0})
    assert class_weights("none", three, 3) is None


def test_a_run_stored_before_the_defaults_changed_resumes_with_its_own_settings(tmp_path):
    """config.json without feature_norm: no such layer, and its class_weight auto meant balanced then."""
    import json

    from toolkit.train.resume import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    old = TrainConfig.from_flat(data_dir="d", out=str(run)).to_flat()
    del old["feature_norm"]
    for stored, expected in (("auto", "balanced"), ("none", "none")):
        (run / "config.json").write_text(json.dumps({**old, "class_weight": stored}))
        _, config = prepare_run_dir(TrainConfig.from_flat(data_dir="d", out=str(run)), True, True, {"data_dir"})
        assert config.head.normalize is False and config.optim.class_weight == expected
