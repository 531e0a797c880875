"""The base-network registry: each record's facts checked against the network it builds."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.bases import base_names, get_base
from toolkit.bases.spec import REGISTRY
from toolkit.errors import DatasetError, ModelError, WeightsError


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


def test_a_base_without_an_offline_source_names_keras_file_and_weights_path(tmp_path, monkeypatch):
    """VGG19 offline: Keras's cache, Keras's download, then one line naming the file and --weights PATH."""

    from tests.conftest import go_offline
    from toolkit import weights as resolver
    from toolkit.model import build_base
    from toolkit.weights import WeightsRequest

    go_offline(monkeypatch, "VGG19")

    def no_pip(spec, dest):
        raise AssertionError("VGG19 has no offline source: pip must not be asked")

    monkeypatch.setattr(resolver, "pip_download", no_pip)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    lines = []
    with pytest.raises(WeightsError, match="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5.*--weights PATH"):
        build_base(get_base("vgg19"), 32, WeightsRequest("imagenet", log=lines.append))
    assert len(lines) == 2  # Keras cache, Keras download
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / get_base("vgg19").keras_weights_file).write_bytes(b"h5")
    found = resolver.keras_cache_step(get_base("vgg19").keras_weights_file)  # the cache step looks for VGG19's file
    assert found.path.endswith("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


@pytest.mark.slow  # a training with fine-tuning and every export, per base
@pytest.mark.parametrize("name", base_names())
def test_every_base_trains_fine_tunes_exports_and_predicts_what_keras_predicts(name, demo_dir, tmp_path):
    """Each public base at 32 px with random weights: frozen epoch, one fine-tuning epoch from a cut, every
    model file exported (float gates at their defaults, int8 relaxed as in conftest), the runtime agreeing."""
    import json

    from tests.conftest import train_config
    from toolkit.export import ExportOptions, export_run
    from toolkit.keras_io import load_keras_model, predict_in_batches
    from toolkit.model import base_model
    from toolkit.parity import ParityOverrides
    from toolkit.runtime import load
    from toolkit.train import train

    out = tmp_path / "run"
    config = train_config(demo_dir, out, base=name, epochs=1, fine_tune_epochs=1, fine_tune_from="block5")
    train(config, log=lambda _m: None, verbose=0)
    keras_model = load_keras_model(out / "best.keras")
    assert base_model(keras_model).name == get_base(name).layer_name
    floats = export_run(out, ExportOptions(calib_images=8, precisions=["float32", "float16", "bf16"]))
    assert not floats.failed, [a["parity"]["failures"] for a in floats.failed]
    relaxed = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)
    export_run(out, ExportOptions(calib_images=8, precisions=["dynamic", "int8"], overrides=relaxed))
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert len(manifest["artifacts"]) == 8 and all(a["facts"]["base"] == name for a in manifest["artifacts"])
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = predict_in_batches(keras_model, images.astype(np.float32))
    for file in ("model_float32.onnx", "model_float32.tflite", "model_bf16.xml"):
        clf = load(out / "export" / file, device="cpu")
        assert clf.info.base == name
        np.testing.assert_allclose(clf.predict_arrays(images), expected, atol=8e-2 if "bf16" in file else 1e-4)


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
    assert table.exit_code == 0 and "vgg19" in table.stdout and "block4_pool" in table.stdout
