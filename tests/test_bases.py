"""The base-network registry: each record's facts checked against the network it builds."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.bases import base_names, get_base
from toolkit.bases.spec import REGISTRY
from toolkit.errors import DatasetError, ModelError, WeightsError

# Published multiply-adds at 224 px without the top (timm / the networks' papers), GMAC: the counter must agree.
PUBLISHED_GMAC = {
    "vgg16": 15.35,
    "vgg19": 19.5,
    "mobilenetv2": 0.30,
    "mobilenetv3small": 0.056,
    "mobilenetv3large": 0.217,
    "efficientnetv2b0": 0.72,
    "resnet50v2": 3.5,
    "convnexttiny": 4.46,
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_record_matches_the_network_it_builds(name):
    """The base is named as the record says, and every cut is a boundary that exactly one tensor crosses."""
    import keras

    from toolkit.model import above_cut

    spec = get_base(name)
    base = spec.build((spec.min_size, spec.min_size, 3))
    assert base.name == spec.layer_name
    everything = {id(layer) for layer in base.layers}
    for cut, layer_name in spec.cuts.items():
        assert spec.cut_layer(cut) == layer_name
        below = {id(layer) for layer in keras.Model(base.input, base.get_layer(layer_name).output).layers}
        above = {id(layer) for layer in above_cut(base, layer_name).layers[1:]}  # [0]: the replay's own input
        assert above and below.isdisjoint(above) and below | above == everything, cut
    assert spec.default_cut == next(iter(spec.cuts))
    last = base.layers[-1]
    if spec.cam_layer:  # Grad-CAM's map is the input of the base's last max pooling (toolkit.heatmap_model)
        assert type(last).__name__ == "MaxPooling2D" and last.input is base.get_layer(spec.cam_layer).output
    else:
        assert "Pooling" not in type(last).__name__


def test_a_layer_inside_a_residual_block_is_refused_as_a_cut():
    from toolkit.model import above_cut

    base = get_base("resnet50v2").build((32, 32, 3))
    with pytest.raises(ModelError, match="not a cut of resnet50v2 that one tensor crosses"):
        above_cut(base, "conv4_block6_2_conv")


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMAC))
def test_graph_counted_flops_match_the_published_figures(name):
    gmac = get_base(name).flops(224, 2, "gap") / 2e9
    assert gmac == pytest.approx(PUBLISHED_GMAC[name], rel=0.05)


def test_the_flop_counter_counts_convolutions_depthwise_separable_and_dense_layers():
    import keras

    from toolkit.bases.flops import model_flops

    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)  # 64 positions x 3x3x3x4
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 64 x 3x3x4
    x = keras.layers.SeparableConv2D(5, 3, strides=2, padding="same")(x)  # 16 x (3x3x4 + 4x5)
    x = keras.layers.Dense(6)(x)  # 16 x 5x6, per pixel as ConvNeXt's pointwise layers
    x = keras.layers.BatchNormalization()(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(image, keras.layers.Dense(2)(x))  # 6x2
    assert model_flops(model) == 2 * (64 * 108 + 64 * 36 + 16 * (36 + 20) + 16 * 30 + 12)


def test_unknown_bases_and_cuts_are_one_line_errors_and_test_bases_stay_hidden():
    assert "vgg16" in base_names() and "tiny" not in base_names() and "tiny" in base_names(include_test=True)
    with pytest.raises(ModelError, match="unknown base resnet; choose from vgg16"):
        get_base("resnet")
    with pytest.raises(ModelError, match="must be one of block5, block4 for vgg16"):
        get_base("vgg16").cut_layer("block2")


def test_train_config_checks_the_base_and_its_sizes(tmp_path):
    from tests.conftest import train_config

    with pytest.raises(DatasetError, match="unknown base"):
        train_config(tmp_path, tmp_path / "o", base="nope").validate()
    with pytest.raises(DatasetError, match="at least 32 for vgg16"):
        train_config(tmp_path, tmp_path / "o", base="vgg16", image_size=16).validate()
    train_config(tmp_path, tmp_path / "o", base="vgg16").validate()


def test_vgg16_flops_match_the_published_figure():
    assert get_base("vgg16").flops(224, 2) / 1e9 == pytest.approx(30.7, abs=0.05)  # with the flatten head


@pytest.mark.parametrize(
    ("name", "application"),
    [("vgg19", "VGG19"), ("mobilenetv3large", "MobileNetV3Large"), ("convnexttiny", "ConvNeXtTiny")],
)
def test_a_base_without_an_offline_source_names_keras_file_and_weights_path(name, application, tmp_path, monkeypatch):
    """Offline: Keras's cache, Keras's download, then one line naming Keras's file and --weights PATH."""
    import re

    from tests.conftest import go_offline
    from toolkit import weights as resolver
    from toolkit.model import build_base
    from toolkit.weights import WeightsRequest

    go_offline(monkeypatch, application)

    def no_pip(spec, dest):
        raise AssertionError(f"{name} has no offline source: pip must not be asked")

    monkeypatch.setattr(resolver, "pip_download", no_pip)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    file = get_base(name).keras_weights_file
    lines = []
    with pytest.raises(WeightsError, match=re.escape(file) + ".*--weights PATH"):
        build_base(get_base(name), 32, WeightsRequest("imagenet", log=lines.append))
    assert len(lines) == 2  # Keras cache, Keras download
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / file).write_bytes(b"h5")
    assert resolver.keras_cache_step(file).path.endswith(file)  # the cache step looks for this base's file


# The VGG-shaped bases are VGG16's graph (convolution, ReLU, max-pool): the session's `exported_run` (the
# test-only `tiny` base of the same shape and preprocessing) takes it through every format, `vgg16_run` is
# VGG16 itself, and the records test above builds VGG19; each other base has its own graph to export.
GRAPH_BASES = [name for name in base_names() if not name.startswith("vgg")]


@pytest.mark.slow  # a training with fine-tuning and every export, per base
@pytest.mark.parametrize("name", GRAPH_BASES)
def test_every_base_trains_fine_tunes_exports_and_predicts_what_keras_predicts(name, demo_dir, tmp_path):
    """Each base at 32 px with random weights: a frozen epoch, one fine-tuning epoch from its first cut,
    every model file exported (max |diff| gates at their defaults; int8's agreement relaxed, as in
    conftest), the facts naming the base, the runtime agreeing with Keras."""
    import json
    from collections import Counter

    import openvino

    from tests.conftest import train_config
    from toolkit.export import ExportOptions, export_run
    from toolkit.keras_io import load_keras_model, predict_in_batches
    from toolkit.model import base_model
    from toolkit.parity import ParityOverrides, thresholds_for
    from toolkit.runtime import load
    from toolkit.train import train

    out = tmp_path / "run"
    run = train(train_config(demo_dir, out, base=name, epochs=1, fine_tune_epochs=1), log=lambda _m: None, verbose=0)
    assert run.best_epoch is not None
    keras_model = load_keras_model(out / "best.keras")
    assert base_model(keras_model).name == get_base(name).layer_name
    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)
    report = export_run(out, ExportOptions(calib_images=8, overrides=relaxed))
    assert not report.failed, [(a["format"], a["precision"], a["parity"]["failures"]) for a in report.failed]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    files = manifest["artifacts"]  # onnx, tflite and openvino files (web bundles: by name only)
    assert len(files) == 8 and all(a["facts"]["base"] == name for a in files)
    for entry in files:  # the default max |diff| bounds held (only agreement was relaxed)
        bound = thresholds_for(entry["precision"]).max_abs_diff
        assert bound is None or entry["parity"]["max_abs_diff"] <= bound, entry["path"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = predict_in_batches(keras_model, images.astype(np.float32))
    for file in ("model_float32.onnx", "model_float32.tflite", "model_bf16.xml"):
        clf = load(out / "export" / file, device="cpu")
        assert clf.info.base == name
        np.testing.assert_allclose(clf.predict_arrays(images), expected, atol=8e-2 if "bf16" in file else 1e-4)
    for file in ("model_bf16.xml", "model_int8.xml"):  # from TF, NHWC: no stray Results, no layout shuffles but
        # the input's and, at a 1 x 1 feature map, one before the head's reshape (the ONNX route left dozens)
        ops = Counter(op.get_type_name() for op in openvino.Core().read_model(str(out / "export" / file)).get_ops())
        # ConvNeXt's 18 blocks each turn a depthwise convolution (NCHW in OpenVINO) into channel-last Dense layers
        shuffles = 2 * 18 + 2 if name == "convnexttiny" else 2
        assert ops["Result"] == 1 and ops["Transpose"] <= shuffles, (file, ops["Result"], ops["Transpose"])


def test_toolkit_bases_lists_the_public_bases_from_their_records():
    import json

    from typer.testing import CliRunner

    from toolkit.cli import app

    result = CliRunner().invoke(app, ["bases", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == sorted(base_names()) and "tiny" not in rows
    assert rows["vgg16"]["parameters"] == 14_714_688 and rows["vgg16"]["gflop"] == pytest.approx(30.69, abs=0.01)
    assert rows["vgg19"]["parameters"] == 20_024_384 and rows["vgg19"]["cuts"] == get_base("vgg19").cuts
    table = CliRunner().invoke(app, ["bases"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "vgg19" in table.stdout and "expanded_conv_12, expanded_conv_6" in table.stdout


def test_the_docs_table_of_bases_matches_the_records():
    """docs/training.md's table: one row per public base, with its preprocessing, cuts and counted GFLOP."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].split("`")[1]] = cells
    assert sorted(rows) == sorted(base_names())
    for name, cells in rows.items():
        spec = get_base(name)
        assert cells[3] == spec.preprocessing and cells[4] == ", ".join(spec.cuts), name
        if name in ("vgg16", "mobilenetv3large"):  # two counts suffice to keep the column honest
            assert float(cells[1]) == pytest.approx(spec.flops(224, 2, "gap") / 1e9, abs=0.01), name


class _Asked(Exception):
    pass


@pytest.mark.parametrize("name", base_names())
def test_each_record_names_the_weight_file_keras_asks_for(name, monkeypatch):
    """The resolver's cache step and its error look for `keras_weights_file`: the name keras.applications fetches."""
    from keras.src.utils import file_utils

    def asked(fname, *args, **kwargs):
        raise _Asked(fname)

    monkeypatch.setattr(file_utils, "get_file", asked)
    spec = get_base(name)
    with pytest.raises(_Asked) as caught:
        spec.build((spec.default_size, spec.default_size, 3), "imagenet")
    assert str(caught.value) == spec.keras_weights_file
