from __future__ import annotations

import numpy as np
import pytest

from toolkit.metrics import binary_auc, classification_metrics, recall_summary


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


def test_k_class_balanced_accuracy_and_recall_show_a_class_never_predicted():
    """Four grades, two small ones never predicted: accuracy looks fine, balanced accuracy and recall do not."""
    from toolkit.evaluate import format_metrics
    from toolkit.metrics import recall_summary

    labels = np.array([0] * 8 + [1] * 2 + [2] * 2 + [3] * 4)
    pred = np.array([0] * 8 + [0, 0] + [3, 3] + [3, 3, 3, 0])
    m = classification_metrics(np.eye(4)[pred] * 0.7 + 0.075, labels, ["0", "1/3", "2/3", "1"])
    assert m.accuracy == pytest.approx(11 / 16)
    assert m.balanced_accuracy == pytest.approx((1 + 0 + 0 + 0.75) / 4)
    assert [c.recall for c in m.per_class.values()] == pytest.approx([1, 0, 0, 0.75])
    line = recall_summary(m)
    assert line == "balanced accuracy 43.8%; recall per class: 0 100.0%, 1/3 0.0%, 2/3 0.0%, 1 75.0%"
    assert line in format_metrics(m)


def test_train_console_prints_balanced_accuracy_and_recall_for_both_splits(capsys):
    from toolkit.console import print_train_result
    from toolkit.train.config import TrainResult

    m = classification_metrics(np.eye(3)[[0, 0, 1, 0]] * 0.7 + 0.1, np.array([0, 0, 1, 2]), ["a", "b", "c"])
    summary = recall_summary(m)
    result = TrainResult("run", 3, 0.5, "val_loss", 0.75, 0.9, 0.75, "file", "fp32", "features")
    result.val_summary = result.test_summary = summary
    print_train_result(result)
    lines = [line for line in capsys.readouterr().out.splitlines() if "accuracy 0.750" in line]
    assert len(lines) == 2 and all(line.endswith("recall per class: a 100.0%, b 100.0%, c 0.0%") for line in lines)
