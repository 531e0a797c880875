from __future__ import annotations

import numpy as np

from toolkit.parity import ParityOverrides, compare_outputs, thresholds_for


def _probs(n=50, seed=0):
    p = np.random.default_rng(seed).random((n, 2)).astype(np.float32)
    return p / p.sum(axis=1, keepdims=True)


def test_identical_outputs_pass_every_gate():
    ref = _probs()
    labels = ref.argmax(1)
    for precision in ("float32", "float16", "dynamic", "int8"):
        assert compare_outputs(ref, ref.copy(), labels, thresholds_for(precision)).passed


def test_float32_gate_catches_small_drift_that_float16_allows():
    ref = _probs()
    drift = ref + 1e-3
    record = compare_outputs(ref, drift, ref.argmax(1), thresholds_for("float32"))
    assert not record.passed and "max |diff|" in record.failures[0]
    assert compare_outputs(ref, drift, ref.argmax(1), thresholds_for("float16")).passed


def test_int8_gate_judges_agreement_and_accuracy_drop():
    ref = _probs(100)
    labels = ref.argmax(1)
    flipped = ref.copy()
    flipped[:5] = flipped[:5, ::-1]
    record = compare_outputs(ref, flipped, labels, thresholds_for("int8"))
    assert not record.passed and record.top1_agreement < 0.98
    relaxed = thresholds_for("int8", ParityOverrides(min_agreement=0.9, max_accuracy_drop=0.1))
    assert compare_outputs(ref, flipped, labels, relaxed).passed


def test_nan_outputs_fail():
    ref = _probs()
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert not compare_outputs(ref, bad, ref.argmax(1), thresholds_for("int8")).passed


def test_agreement_is_judged_at_the_operating_point():
    """A flip across the deployed threshold counts, even where argmax would agree."""
    from toolkit.operating_point import Decision

    reference = np.array([[0.75, 0.25], [0.9, 0.1]])
    candidate = np.array([[0.65, 0.35], [0.9, 0.1]])  # argmax agrees; at threshold 0.3 the first flips
    labels = np.array([1, 0])
    t = thresholds_for("int8")
    assert compare_outputs(reference, candidate, labels, t).top1_agreement == 1.0
    at_point = compare_outputs(reference, candidate, labels, t, Decision(["a", "b"], "b", 0.3).predict)
    assert at_point.top1_agreement == 0.5 and not at_point.passed
