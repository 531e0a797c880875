"""Temperature scaling in training: fitted on validation, folded into best.keras, recorded in labels.json and
metrics.json, plotted; `--score-calibration none` leaves the scores alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import IMAGE_SIZE, train_config
from toolkit import calibration as cal

pytestmark = pytest.mark.slow  # real (tiny) trainings


def _json(path):
    return json.loads(path.read_text())


def test_folding_a_temperature_gives_softmax_of_the_scaled_logits(trained_run):
    from toolkit.keras_io import load_keras_model
    from toolkit.model import fold_temperature

    model = load_keras_model(trained_run / "best.keras")
    pixels = np.random.default_rng(0).integers(0, 255, (6, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    before = np.asarray(model.predict(pixels, verbose=0), np.float64)
    fold_temperature(model, 2.5)
    after = np.asarray(model.predict(pixels, verbose=0), np.float64)
    assert np.allclose(after, cal.apply_temperature(before, 2.5), atol=1e-5)
    assert not np.allclose(after, before, atol=1e-3)


def test_a_default_run_is_calibrated_on_validation_and_says_so(trained_run):
    stored = _json(trained_run / "labels.json")["score_calibration"]
    assert stored["method"] == "temperature" and stored["fitted_on"] == "validation"
    assert cal.T_RANGE[0] <= stored["temperature"] <= cal.T_RANGE[1]
    report = _json(trained_run / "metrics.json")["calibration"]
    assert report["temperature"] == stored["temperature"] and "15 equal-width bins" in report["binning"]
    val, test = report["validation"], report["test"]
    assert val["after"]["log_loss"] <= val["before"]["log_loss"] + 1e-9  # the fit minimises it on validation
    for split in (val, test):
        assert set(split["before"]) >= {"ece", "brier", "log_loss", "bins"}
    assert (trained_run / "reliability.png").stat().st_size > 0
    assert (trained_run / "reliability_test.png").stat().st_size > 0


def test_the_saved_model_outputs_the_calibrated_validation_scores(trained_run):
    """best.keras itself is calibrated: its validation probabilities, uncalibrated with 1/T, have the stored
    'before' log loss, and as they are, the 'after' one."""
    from toolkit.keras_io import load_keras_model, predict_in_batches
    from toolkit.run_folder import load_run

    run = load_run(trained_run)
    data = run.load_data()
    probs = predict_in_batches(load_keras_model(run.best), data.val.images, 8)
    report = _json(trained_run / "metrics.json")["calibration"]["validation"]
    temperature = run.score_calibration["temperature"]
    assert cal.measure(probs, data.val.labels).log_loss == pytest.approx(report["after"]["log_loss"], abs=1e-4)
    before = cal.apply_temperature(probs, 1 / temperature)
    assert cal.measure(before, data.val.labels).log_loss == pytest.approx(report["before"]["log_loss"], abs=1e-4)


def test_score_calibration_none_leaves_the_scores_alone(demo_dir, tmp_path):
    from toolkit.train import train

    out = tmp_path / "run"
    result = train(train_config(demo_dir, out, epochs=1, score_calibration="none"), log=lambda _m: None, verbose=0)
    assert _json(out / "labels.json")["score_calibration"] == {"method": "none"}
    report = _json(out / "metrics.json")["calibration"]
    assert report["method"] == "none" and report["validation"]["after"] is None
    assert result.calibration_summary == ""


def test_three_classes_are_calibrated_too(demo_dir, tmp_path):
    import shutil

    from PIL import Image, ImageOps

    from toolkit.train import train

    data = tmp_path / "three"
    shutil.copytree(demo_dir, data)
    for split in ("train", "test"):  # a third class: the benign images, flipped (so they are not duplicates)
        (data / split / "atypical").mkdir()
        for image in sorted((data / split / "benign").iterdir()):
            ImageOps.mirror(Image.open(image)).save(data / split / "atypical" / image.name)
    out = tmp_path / "run"
    result = train(train_config(data, out, epochs=2), log=lambda _m: None, verbose=0)
    labels = _json(out / "labels.json")
    assert labels["labels"] == ["atypical", "benign", "malignant"] and "positive_class" not in labels
    assert labels["score_calibration"]["method"] == "temperature"
    report = _json(out / "metrics.json")["calibration"]["validation"]
    assert report["after"]["log_loss"] <= report["before"]["log_loss"] + 1e-9
    assert result.calibration_summary.startswith("temperature ")
