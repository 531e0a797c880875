"""Grad-CAM: on a model whose answer is known, the map's peak is where the evidence is; on a trained run, every
image gets a bounded map, a peak, an overlay and the runtime's own label; an artifact without a heatmap output is
refused in one line (heatmap artifacts: tests/test_export_heatmap.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import validation_files
from toolkit.cli import app

runner = CliRunner()


def _red_detector():
    """features = the image itself; head = global average pooling + Dense: class 1's logit grows with red."""
    import keras

    image = keras.Input((32, 32, 3), name="image")
    features = keras.Model(image, keras.layers.Rescaling(1 / 255)(image), name="features")
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2, activation="softmax", name="probs")
    head = keras.Model(inputs, dense(pooled), name="head")
    dense.set_weights([np.array([[-5.0, 5.0], [0.0, 0.0], [0.0, 0.0]], np.float32), np.zeros(2, np.float32)])
    outer = keras.Input((32, 32, 3), name="image")
    return keras.Model(outer, head(features(outer)), name="classifier")


def test_the_peak_is_where_the_evidence_is():
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.runtime.heatmap import class_maps, peak_of, to_image

    pixels = np.full((1, 32, 32, 3), 40, np.uint8)
    pixels[0, 20:26, 4:10, 0] = 255  # red patch centred at x 0.22, y 0.72
    _, raw = keras_heatmaps(_red_detector(), pixels)
    heatmap = to_image(class_maps(raw, np.array([1]))[0], (32, 32))
    x, y = peak_of(heatmap)
    assert 4 / 32 <= x <= 10 / 32 and 20 / 32 <= y <= 26 / 32, (x, y)
    assert heatmap.shape == (32, 32) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)


@pytest.mark.slow  # TensorFlow in the CLI
def test_explain_writes_an_overlay_per_image_with_the_runtimes_label(trained_run, exported_run, tmp_path):
    from toolkit.runtime import load

    files = validation_files(trained_run)[:3]
    out = tmp_path / "maps"
    result = runner.invoke(
        app, ["explain", str(trained_run / "best.keras"), *map(str, files), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = load(trained_run / "best.keras").predict(files)
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert all(0 <= v <= 1 for r in rows for v in r["peak"])
    assert len(list(out.glob("*.png"))) == 3
    assert all(0 <= r["map"]["hot_fraction"] <= 1 for r in rows)
    plain = exported_run / "export" / "model_float32.onnx"
    refused = runner.invoke(app, ["explain", str(plain), str(files[0])])
    assert refused.exit_code == 2 and "--heatmap" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
