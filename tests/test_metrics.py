from __future__ import annotations

import numpy as np
import pytest

from toolkit.metrics import binary_auc, classification_metrics


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)
    positives = rng.random(60) < 0.4
    pos, neg = scores[positives], scores[~positives]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert binary_auc(scores, positives) == pytest.approx(expected)
    assert binary_auc(scores, np.zeros(60, bool)) is None


def test_binary_metrics_confusion_sensitivity_specificity():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(probs, labels, ["benign", "malignant"])
    assert m.confusion_matrix == [[2, 0], [1, 2]]
    assert m.accuracy == pytest.approx(0.8)
    assert m.sensitivity == pytest.approx(2 / 3) and m.specificity == pytest.approx(1.0)
    assert m.per_class["benign"].precision == pytest.approx(2 / 3)
    assert m.auc == pytest.approx(5 / 6)  # 0.3 (malignant) ranks below 0.4 (benign): 5 of 6 pairs ordered


def test_multiclass_auc_is_one_vs_rest_mean():
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.1
    m = classification_metrics(probs, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert m.sensitivity is None and len(m.auc_per_class) == 3
    assert m.auc == pytest.approx(np.mean(list(m.auc_per_class.values())))


def test_multiworker_logs_mean_what_the_compiled_keras_metrics_mean():
    """The loop that cannot use Keras's fit logs the numbers Keras would, under the same names."""
    import keras

    from toolkit.metrics import keras_style_logs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    ours = keras_style_logs(probs, onehot, prefix="val_")
    for name, metric in (
        ("accuracy", keras.metrics.CategoricalAccuracy()),
        ("precision", keras.metrics.Precision()),
        ("recall", keras.metrics.Recall()),
        ("auc", keras.metrics.AUC(num_thresholds=2000)),
    ):
        metric.update_state(onehot, probs)
        assert ours[f"val_{name}"] == pytest.approx(float(metric.result()), abs=2e-3), name
    loss = float(keras.losses.CategoricalCrossentropy()(onehot, probs))
    assert ours["val_loss"] == pytest.approx(loss, rel=1e-4)
