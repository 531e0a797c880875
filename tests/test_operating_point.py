from __future__ import annotations

import numpy as np
import pytest

from toolkit.errors import DatasetError
from toolkit.operating_point import Decision, choose_threshold, parse_operating_point, rates_at, resolve_positive_class


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    positives = rng.random(200) < 0.4
    scores = np.clip(rng.normal(np.where(positives, 0.65, 0.35), 0.15), 0, 1)
    return scores, positives


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_sensitivity_point_is_the_highest_threshold_that_meets_it(target):
    scores, positives = _scores()
    t = choose_threshold(scores, positives, "sensitivity", target)
    assert rates_at(scores, positives, t)["sensitivity"] >= target
    higher = np.min(scores[scores > t]) if (scores > t).any() else 2.0
    assert rates_at(scores, positives, higher)["sensitivity"] < target  # any higher threshold misses it


@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_specificity_point_is_the_lowest_threshold_that_meets_it(target):
    scores, positives = _scores(1)
    t = choose_threshold(scores, positives, "specificity", target)
    assert rates_at(scores, positives, t)["specificity"] >= target
    lower = np.max(scores[scores < t]) if (scores < t).any() else -1.0
    assert rates_at(scores, positives, lower)["specificity"] < target


def test_decision_applies_the_threshold_to_the_positive_class_only():
    d = Decision(["defective", "functional"], "defective", threshold=0.3)
    probs = np.array([[0.31, 0.69], [0.29, 0.71], [0.9, 0.1]])
    assert d.predict(probs).tolist() == [0, 1, 0]  # argmax would say 1, 1, 0


def test_bad_operating_points_and_positive_classes_are_one_line_errors():
    assert parse_operating_point("specificity=0.9") == ("specificity", 0.9)
    for bad in ("sensitivity", "recall=0.9", "threshold=1.5", "sensitivity=abc"):
        with pytest.raises(DatasetError, match="--operating-point"):
            parse_operating_point(bad)
    assert resolve_positive_class(["benign", "malignant"], None) == "malignant"
    assert resolve_positive_class(["defective", "functional"], "defective") == "defective"
    with pytest.raises(DatasetError, match="not a class"):
        resolve_positive_class(["a", "b"], "c")


def test_metrics_follow_the_positive_class():
    from toolkit.metrics import classification_metrics

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 1])
    default = classification_metrics(probs, labels, ["defective", "functional"])
    chosen = classification_metrics(
        probs, labels, ["defective", "functional"], Decision(["defective", "functional"], "defective")
    )
    assert default.positive_class == "functional" and chosen.positive_class == "defective"
    assert default.sensitivity == pytest.approx(2 / 3) and chosen.sensitivity == 1.0
    assert chosen.specificity == pytest.approx(2 / 3)
    assert default.auc == pytest.approx(chosen.auc)  # the same ranking read from the other side
    assert chosen.pr_auc is not None and chosen.threshold == 0.5
