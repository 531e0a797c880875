"""The parity gate: an export ships only if it makes the Keras model's decisions.

Thresholds are per precision. Float formats must reproduce the probabilities;
quantised formats may move them, so they are judged on decisions (top-1
agreement) and on accuracy against the labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

# float32 conversions only reorder float arithmetic: measured ~3e-6 max
# difference on VGG16, so 1e-4 leaves headroom while still catching a wrong
# weight or a missing preprocessing step, and every decision must agree.
FLOAT32_MAX_ABS_DIFF = 1e-4
FLOAT32_MIN_AGREEMENT = 1.0
# float16 weights carry ~3 significant digits: 1e-2 on probabilities, and a
# rare flip of a near-tie decision (>= 99% agreement).
FLOAT16_MAX_ABS_DIFF = 1e-2
FLOAT16_MIN_AGREEMENT = 0.99
# int8 moves probabilities by design; what matters is that decisions agree and
# accuracy does not fall by more than a point.
INT8_MIN_AGREEMENT = 0.98
INT8_MAX_ACCURACY_DROP = 0.01

# bfloat16 keeps 8 significant bits to float16's 11, so its rounding is 8x coarser: float16's 1e-2 scaled
# by 8. Measured with OpenVINO's bf16 CPU kernels, every decision unchanged: up to 1.2e-2 on the ELPV model
# (295 validation images) and 3.8e-2 on the demo's Flatten head (102). The IR is converted from the float32
# ONNX model, which passed the 1e-4 gate, so a wrong weight or preprocessing step is caught there.
BF16_MAX_ABS_DIFF = 8e-2
BF16_MIN_AGREEMENT = 0.99
PRECISION_FAMILY = {"float32": "float32", "float16": "float16", "bf16": "bf16", "dynamic": "int8", "int8": "int8"}


@dataclasses.dataclass
class Thresholds:
    max_abs_diff: float | None
    min_agreement: float
    max_accuracy_drop: float | None


@dataclasses.dataclass
class ParityOverrides:
    """Explicit relaxations from the command line (None keeps the default)."""

    max_abs_diff: float | None = None
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None


@dataclasses.dataclass
class ParityRecord:
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float
    thresholds: Thresholds
    passed: bool
    failures: list[str]


def default_thresholds(precision: str) -> Thresholds:
    family = PRECISION_FAMILY[precision]
    if family == "float32":
        return Thresholds(FLOAT32_MAX_ABS_DIFF, FLOAT32_MIN_AGREEMENT, None)
    if family == "float16":
        return Thresholds(FLOAT16_MAX_ABS_DIFF, FLOAT16_MIN_AGREEMENT, None)
    if family == "bf16":
        return Thresholds(BF16_MAX_ABS_DIFF, BF16_MIN_AGREEMENT, None)
    return Thresholds(None, INT8_MIN_AGREEMENT, INT8_MAX_ACCURACY_DROP)


def thresholds_for(precision: str, overrides: ParityOverrides | None = None) -> Thresholds:
    t = default_thresholds(precision)
    if overrides is None:
        return t
    return Thresholds(
        overrides.max_abs_diff if overrides.max_abs_diff is not None and t.max_abs_diff is not None else t.max_abs_diff,
        overrides.min_agreement if overrides.min_agreement is not None else t.min_agreement,
        overrides.max_accuracy_drop
        if overrides.max_accuracy_drop is not None and t.max_accuracy_drop is not None
        else t.max_accuracy_drop,
    )


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    thresholds: Thresholds,
    decide: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ParityRecord:
    """Compare an artifact's outputs with the Keras model's on the same images.

    Decisions (agreement, accuracy) are made by `decide`, the model's operating point
    for binary models with one, so the gate checks the decisions the app will make;
    argmax otherwise.
    """
    decide = decide or (lambda probs: probs.argmax(axis=1))
    if reference.shape != candidate.shape:
        return ParityRecord(
            len(labels),
            float("inf"),
            float("inf"),
            0.0,
            0.0,
            0.0,
            thresholds,
            False,
            [f"output shape {candidate.shape} differs from Keras {reference.shape}"],
        )
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    max_diff = float(diff.max()) if diff.size and finite else float("inf")
    mean_diff = float(diff.mean()) if diff.size and finite else float("inf")
    ref_top = decide(reference)
    cand_top = decide(candidate)
    agreement = float((ref_top == cand_top).mean()) if len(labels) else 1.0
    accuracy = float((cand_top == labels).mean()) if len(labels) else 0.0
    reference_accuracy = float((ref_top == labels).mean()) if len(labels) else 0.0
    failures = []
    if not finite:
        failures.append("outputs contain NaN or infinity")
    if thresholds.max_abs_diff is not None and max_diff > thresholds.max_abs_diff:
        failures.append(f"max |diff| {max_diff:.2e} > {thresholds.max_abs_diff:.0e}")
    if agreement < thresholds.min_agreement - 1e-12:
        failures.append(f"top-1 agreement {agreement:.1%} < {thresholds.min_agreement:.1%}")
    if (
        thresholds.max_accuracy_drop is not None
        and reference_accuracy - accuracy > thresholds.max_accuracy_drop + 1e-12
    ):
        failures.append(
            f"accuracy drop {100 * (reference_accuracy - accuracy):.2f} points > {100 * thresholds.max_accuracy_drop:g}"
        )
    return ParityRecord(
        len(labels), max_diff, mean_diff, agreement, accuracy, reference_accuracy, thresholds, not failures, failures
    )
