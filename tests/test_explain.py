"""Grad-CAM: on a model whose answer is known, the map's peak is where the evidence is; on a trained run, every
image gets a bounded map, a peak, an overlay and the runtime's own label; other formats are refused in one line."""

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
    from toolkit.explain import grad_cam, peak_of

    pixels = np.full((1, 32, 32, 3), 40, np.uint8)
    pixels[0, 20:26, 4:10, 0] = 255  # red patch centred at x 0.22, y 0.72
    maps, probs = grad_cam(_red_detector(), pixels, np.array([1]))
    x, y = peak_of(maps[0])
    assert 4 / 32 <= x <= 10 / 32 and 20 / 32 <= y <= 26 / 32, (x, y)
    assert maps.shape == (1, 32, 32) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)


@pytest.mark.slow  # TensorFlow in the CLI
def test_explain_writes_an_overlay_per_image_with_the_runtimes_label(trained_run, tmp_path):
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
    refused = runner.invoke(app, ["explain", str(trained_run / "export" / "model.onnx"), str(files[0])])
    assert refused.exit_code == 2 and "heatmap" in refused.stderr
