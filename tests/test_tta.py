"""`toolkit train --tta`: the saved model averages four flipped views, and every artifact carries the average."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import validation_files

SIZE = 32


def _flips(pixels: np.ndarray) -> list[np.ndarray]:
    """The four views in numpy (NHWC): as is, left-right, upside down, half a circle."""
    return [pixels, pixels[:, :, ::-1], pixels[:, ::-1], pixels[:, ::-1, ::-1]]


@pytest.fixture(scope="module")
def tiny_classifier():
    from toolkit.model import build_classifier

    model, _ = build_classifier(3, SIZE, "none", head="mlp", dropout=0.2, base="tiny", normalize=False)
    last = model.get_layer("head").layers[-1]
    pixels = np.random.default_rng(2).integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.float32)
    while model.predict(pixels, verbose=0).max() > 0.9:  # random weights saturate: soften the logits
        kernel, bias = last.get_weights()
        last.set_weights([kernel * 0.1, bias])
    return model


def test_the_model_averages_the_four_flipped_views(tiny_classifier, tmp_path):
    from toolkit.keras_io import load_keras_model
    from toolkit.model import features_part, head_part
    from toolkit.run_folder import save_model_atomic
    from toolkit.tta import VIEWS, has_tta, tta_record, with_tta

    pixels = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3)).astype(np.float32)
    wrapped = with_tta(tiny_classifier)
    oracle = np.mean([tiny_classifier.predict(view, verbose=0) for view in _flips(pixels)], axis=0)
    save_model_atomic(wrapped, tmp_path / "best.keras")
    loaded = load_keras_model(tmp_path / "best.keras")  # safe_mode: ops, no custom layer
    assert has_tta(loaded) and tta_record(loaded) == list(VIEWS) and tta_record(tiny_classifier) is None
    assert with_tta(loaded) is loaded  # wrapping twice would average views of views
    assert features_part(loaded).name == "features" and head_part(loaded).name == "head"
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), oracle, atol=1e-6)
    assert np.abs(tiny_classifier.predict(pixels, verbose=0) - oracle).max() > 1e-4  # the views do differ


def test_the_heatmap_model_keeps_the_averaged_probabilities(tiny_classifier):
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.tta import with_tta

    pixels = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.uint8)
    wrapped = with_tta(tiny_classifier)
    probs, maps = keras_heatmaps(wrapped, pixels)
    _, plain_maps = keras_heatmaps(tiny_classifier, pixels)
    np.testing.assert_allclose(probs, wrapped.predict(pixels.astype(np.float32), verbose=0), atol=1e-6)
    np.testing.assert_allclose(maps, plain_maps, atol=1e-6)  # the map explains the image as it is


@pytest.mark.slow  # a training run and two conversions
def test_a_tta_run_exports_artifacts_that_average_the_views(demo_dir, tmp_path):
    """Trained with --tta: metrics from the averaged model, and each artifact is flip-invariant as it is."""
    from toolkit.export import ExportOptions, export_run
    from toolkit.keras_io import load_keras_model
    from toolkit.model import features_part, head_part
    from toolkit.parity import ParityOverrides
    from toolkit.runtime import load
    from toolkit.train import train
    from toolkit.tta import VIEWS, has_tta

    run = tmp_path / "run"
    train(_config(demo_dir, run), log=lambda _m: None, verbose=0)
    model = load_keras_model(run / "best.keras")
    assert has_tta(model)
    pixels = np.stack([load(run / "best.keras").preprocess(f) for f in validation_files(run)]).astype(np.float32)
    single = [head_part(model)(features_part(model)(v)).numpy() for v in _flips(pixels)]
    assert np.abs(single[1] - single[0]).max() > 1e-3  # one view alone is not flip-invariant: the average is
    assert json.loads((run / "config.json").read_text())["tta"] is True
    assert "Test-time augmentation: the model averages 4 flipped views" in (run / "model_card.md").read_text()
    loose = ParityOverrides(min_agreement=0.0, max_accuracy_drop=1.0)  # int8 of random tiny features: plumbing
    report = export_run(run, ExportOptions(precisions=["float32", "int8"], calib_images=8, overrides=loose))
    assert not report.failed, [a["parity"]["failures"] for a in report.failed]
    for entry in report.manifest["artifacts"]:
        assert entry["facts"]["extra"]["tta"] == list(VIEWS)
        classifier = load(run / "export" / entry["path"])
        pixels = np.stack([classifier.preprocess(f) for f in validation_files(run)])
        views = [classifier.predict_arrays(np.ascontiguousarray(v)) for v in _flips(pixels)]
        for view in views[1:]:  # int8: the same integer sums in another order, up to one rounding step
            np.testing.assert_allclose(view, views[0], atol=1e-5 if entry["precision"] == "float32" else 0.02)


def _config(demo_dir, run):
    from tests.conftest import train_config

    return train_config(demo_dir, run, image_size=SIZE, tta=True, epochs=1)
