from __future__ import annotations

import numpy as np
import pytest

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


def _flip(ref: np.ndarray, count: int) -> np.ndarray:
    flipped = ref.copy()
    flipped[:count] = flipped[:count, ::-1]
    return flipped


def test_int8_gate_fails_a_real_defect_and_relaxes_on_request():
    ref = _probs(100)
    labels = ref.argmax(1)
    record = compare_outputs(ref, _flip(ref, 10), labels, thresholds_for("int8"))  # 10 of 100 decisions move
    assert not record.passed and record.flips == 10 and record.top1_agreement == 0.9
    assert "10 of 100 decisions differ" in record.failures[0] and "accuracy drop 10.00 points" in record.failures[1]
    relaxed = thresholds_for("int8", ParityOverrides(min_agreement=0.8, max_accuracy_drop=0.2))
    assert compare_outputs(ref, _flip(ref, 10), labels, relaxed).passed


@pytest.mark.parametrize("n", [36, 50, 102, 306, 1000])
def test_one_image_never_fails_a_sound_int8_artifact(n):
    """The false alarm of small validation sets: one flipped near-tie (for the worse) is no evidence of drift."""
    ref = _probs(n, seed=n)
    record = compare_outputs(ref, _flip(ref, 1), ref.argmax(1), thresholds_for("int8"))
    assert record.passed and record.flips == 1 and record.discordant == {"worse": 1, "better": 0}, record.failures


def test_a_larger_parity_set_catches_a_smaller_defect():
    ref = _probs(1000, seed=4)
    record = compare_outputs(ref, _flip(ref, 40), ref.argmax(1), thresholds_for("int8"))  # 96% agreement
    assert not record.passed and "at most 97.0% at 95% confidence" in record.failures[0]


def test_float32_fails_on_any_flip_and_records_n_flips_and_intervals():
    ref = _probs(200, seed=2)
    labels = ref.argmax(1)
    record = compare_outputs(ref, _flip(ref, 1), labels, thresholds_for("float32"))
    assert not record.passed and any("agreement" in f for f in record.failures)
    lo, hi = record.agreement_ci95
    assert lo < record.top1_agreement < hi < 1.0 and record.images == 200
    d_lo, d_hi = record.accuracy_drop_ci95
    assert d_lo < record.accuracy_drop == 1 / 200 < d_hi and 0 < record.mcnemar_p <= 1
    assert "Clopper-Pearson" in record.decision_rule


def test_parts_count_their_flips_and_only_validation_judges_accuracy():
    ref = _probs(10, seed=1)
    labels = ref.argmax(1)
    parts = {"validation": np.arange(10) < 4, "train_other": np.arange(10) >= 4}
    record = compare_outputs(ref, _flip(ref, 6)[::-1][::-1], labels, thresholds_for("int8"), parts=parts)
    assert record.parts == {"validation": {"images": 4, "flips": 4}, "train_other": {"images": 6, "flips": 2}}
    assert record.accuracy_images == 4 and record.accuracy == 0.0 and record.reference_accuracy == 1.0


def test_intervals_match_their_definitions():
    from toolkit.parity import PairedTable, clopper_pearson, paired_drop

    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))  # the exact bound for zero successes
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10))
    lo, hi = paired_drop(PairedTable(80, 5, 5, 10))
    assert lo == pytest.approx(-hi) and lo < 0 < hi  # no net drop: symmetric about zero
    assert paired_drop(PairedTable(0, 0, 0, 0)) == (0.0, 0.0)


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


def _sharpened(probs: np.ndarray, power: float) -> np.ndarray:
    """The same decisions, more confident: what a quantizer that distorts confidence would output."""
    p = probs.astype(np.float64) ** power
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _calibrated_probs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 3))
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("precision", ["float32", "float16", "bf16", "int8"])
def test_an_artifact_that_distorts_confidence_fails_the_ece_gate_with_its_figures(precision):
    ref, labels = _calibrated_probs(600)
    distorted = _sharpened(ref, 4.0)  # no decision changes; the probabilities claim far more than they know
    overrides = ParityOverrides(max_abs_diff=1.0)  # so that only calibration is judged here
    record = compare_outputs(ref, distorted, labels, thresholds_for(precision, overrides))
    assert record.flips == 0 and record.ece > record.reference_ece + 0.1
    assert not record.passed and record.failures[-1].startswith("ECE "), record.failures
    assert record.ece_increase_ci95[0] > 0.03 and record.brier > record.reference_brier
    relaxed = thresholds_for(precision, ParityOverrides(max_abs_diff=1.0, max_ece_increase=0.5))
    assert compare_outputs(ref, distorted, labels, relaxed).passed


def test_a_slight_confidence_change_within_chance_passes():
    ref, labels = _calibrated_probs(60, seed=3)
    record = compare_outputs(ref, _sharpened(ref, 1.15), labels, thresholds_for("int8"))
    assert record.ece >= 0 and record.ece_increase_ci95[0] <= 0.03 and record.passed, record.failures
