"""Calibration measures and the temperature fit, on probabilities whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit import calibration
from toolkit.calibration import apply_temperature, fit_temperature, measure


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _calibrated_sample(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated at temperature 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    probs = _softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_an_over_confident_model_is_fitted_back_to_its_temperature(classes):
    logits, labels = _calibrated_sample(6000, classes)
    over_confident = _softmax(logits * 2.5)  # what softmax(z / T) with T = 0.4 would give
    fitted = fit_temperature(over_confident, labels)
    assert fitted == pytest.approx(2.5, rel=0.08)
    before, after = measure(over_confident, labels), measure(apply_temperature(over_confident, fitted), labels)
    assert after.ece < before.ece / 3 and after.log_loss < before.log_loss and after.brier < before.brier


def test_apply_temperature_equals_softmax_of_scaled_logits():
    logits, _ = _calibrated_sample(50, 3)
    assert np.allclose(apply_temperature(_softmax(logits), 1.7), _softmax(logits / 1.7), atol=1e-12)


def test_ece_of_a_known_table():
    # 4 images at confidence 0.9 (3 right) and 2 at 0.6 (both right): ECE = 4/6*|0.75-0.9| + 2/6*|1-0.6|
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    result = measure(probs, labels)
    assert result.ece == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
    assert result.brier == pytest.approx((3 * 0.02 + 1.62 + 2 * 0.32) / 6)
    assert result.log_loss == pytest.approx(-(3 * np.log(0.9) + np.log(0.1) + 2 * np.log(0.6)) / 6)
    assert sum(b["images"] for b in result.bins) == 6 and len(result.bins) == calibration.BINS


def test_a_probability_that_underflowed_to_zero_still_gives_a_finite_fit():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.3, 0.7]], np.float32)
    labels = np.array([0, 1, 1, 1])
    temperature = fit_temperature(probs, labels)
    assert np.isfinite(temperature) and calibration.T_RANGE[0] <= temperature <= calibration.T_RANGE[1]
    assert np.isfinite(measure(apply_temperature(probs, temperature), labels).log_loss)
