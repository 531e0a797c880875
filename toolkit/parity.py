"""The parity gate: an export ships only if it makes the Keras model's decisions.

Thresholds are per precision. Float formats must reproduce the probabilities;
quantised formats may move them, so they are judged on decisions (top-1
agreement) and on accuracy against the labels.
"""

from __future__ import annotations

import dataclasses
import math
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

# bfloat16 keeps 8 significant bits to float16's 11: its rounding moves probabilities near a tie by tenths.
# Measured: where the CPU runs the IR in f32 (no native bf16), up to 1.2e-2 on the ELPV model and 3.8e-2 on
# the demo's Flatten head; with native bf16 kernels (AMD EPYC, AVX512_BF16, 2026-12-02) 1.2e-1 on the
# default demo run's 240 parity images, one decision of 240 changed. The bound is twice that; what bf16 must
# keep is the decisions (>= 99%, judged as every agreement is). The IR is converted from the float32 ONNX
# model, which passed the 1e-4 gate, so a wrong weight or preprocessing step is caught there.
BF16_MAX_ABS_DIFF = 0.25
BF16_MIN_AGREEMENT = 0.99
# Calibration: an artifact may not make the probabilities less trustworthy than Keras's. Every precision is
# judged on the increase of its ECE (toolkit.calibration.BINNING) over Keras's on the validation images,
# with a paired bootstrap interval; the bound is justified in docs/export.md from the measured increases.
MAX_ECE_INCREASE = 0.03
BOOTSTRAP_RESAMPLES = 1000
PRECISION_FAMILY = {"float32": "float32", "float16": "float16", "bf16": "bf16", "dynamic": "int8", "int8": "int8"}


@dataclasses.dataclass
class Thresholds:
    max_abs_diff: float | None
    min_agreement: float
    max_accuracy_drop: float | None
    max_ece_increase: float | None = MAX_ECE_INCREASE


@dataclasses.dataclass
class ParityOverrides:
    """Explicit relaxations from the command line (None keeps the default)."""

    max_abs_diff: float | None = None
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None
    max_ece_increase: float | None = None
    max_map_diff: float | None = None  # heatmap artifacts: bound on the maps' p95 largest difference


CONFIDENCE = 0.95
# Heatmap artifacts (`toolkit export --heatmap`): the bound on the 95th percentile, over the parity images, of the
# largest per-cell difference between the artifact's Grad-CAM map and the Keras model's, both scaled to their own
# peak (`toolkit.runtime.heatmap.agreement`). Measured on the demo run: benchmarks/EXPLAIN.md (bf16: 0.088 on a CPU
# that computes in bf16, AMX Xeon; int8 and dynamic fail there, 0.43-0.55: the maps move with the base's int8 noise).
MAX_MAP_DIFF = {"float32": 0.01, "float16": 0.1, "bf16": 0.15, "dynamic": 0.25, "int8": 0.35}
DECISION_RULE = (
    "max |diff| must not exceed its bound on any image; a minimum agreement fails only when the one-sided "
    "95% Clopper-Pearson upper bound of the agreement is below it, and a maximum accuracy drop only when the "
    "one-sided 95% lower bound of the paired drop on the validation images (Newcombe's interval; McNemar's "
    "exact test is recorded beside it) is above it, and a maximum ECE increase only when the one-sided 95% "
    "lower bound of the increase over Keras's ECE on the validation images (a paired bootstrap) is above it: "
    "a gate fails on what the images show beyond chance"
)


@dataclasses.dataclass
class ParityRecord:
    images: int  # every parity image (agreement needs no labels)
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    accuracy: float  # on the held-out (validation) part only
    reference_accuracy: float
    thresholds: Thresholds
    passed: bool
    failures: list[str]
    flips: int = 0  # decisions that differ from Keras's
    agreement_ci95: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.0])
    accuracy_images: int = 0
    accuracy_drop: float = 0.0  # reference - artifact, on the validation part
    accuracy_drop_ci95: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    discordant: dict[str, int] = dataclasses.field(default_factory=dict)  # worse: Keras right, artifact wrong
    mcnemar_p: float = 1.0  # exact two-sided McNemar test of the accuracy difference
    parts: dict[str, dict] = dataclasses.field(default_factory=dict)  # images and flips per part of the set
    ece: float = 0.0  # the artifact's, on the validation part (toolkit.calibration.BINNING)
    reference_ece: float = 0.0
    ece_increase_ci95: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])  # paired bootstrap
    brier: float = 0.0
    reference_brier: float = 0.0
    decision_rule: str = DECISION_RULE


def clopper_pearson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def paired_drop(table: PairedTable, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for the paired accuracy drop: Keras's accuracy minus the artifact's.

    Built from each accuracy's Wilson interval and the correlation of the paired decisions, it stays
    inside [-1, 1] and is sound for the small counts of a small validation set, where Wald's is not.
    """
    from scipy.stats import norm

    n = table.n
    if n == 0:
        return 0.0, 0.0
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    both, worse, better, neither = table.both_right, table.worse, table.better, table.both_wrong
    p1, p2 = (both + worse) / n, (both + better) / n
    l1, u1 = _wilson(both + worse, n, z)
    l2, u2 = _wilson(both + better, n, z)
    margins = (both + worse) * (better + neither) * (both + better) * (worse + neither)
    cross = both * neither - worse * better
    phi = 0.0 if margins == 0 else (max(cross - n / 2, 0) if cross > 0 else cross) / math.sqrt(margins)
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return table.drop - delta, table.drop + epsilon


def mcnemar_p(table: PairedTable) -> float:
    """McNemar's exact two-sided test: do the discordant images lean one way more than chance?"""
    from scipy.stats import binomtest

    discordant = table.worse + table.better
    return 1.0 if discordant == 0 else float(binomtest(table.worse, discordant, 0.5).pvalue)


@dataclasses.dataclass(frozen=True)
class PairedTable:
    """Keras's and the artifact's decisions on the same labelled images, against the labels."""

    both_right: int
    worse: int  # Keras right, the artifact wrong
    better: int  # Keras wrong, the artifact right
    both_wrong: int

    @property
    def n(self) -> int:
        return self.both_right + self.worse + self.better + self.both_wrong

    @property
    def drop(self) -> float:
        return (self.worse - self.better) / self.n if self.n else 0.0

    @classmethod
    def of(cls, reference_right: np.ndarray, candidate_right: np.ndarray) -> PairedTable:
        r, c = np.asarray(reference_right, bool), np.asarray(candidate_right, bool)
        return cls(int((r & c).sum()), int((r & ~c).sum()), int((~r & c).sum()), int((~r & ~c).sum()))


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
        overrides.max_ece_increase if overrides.max_ece_increase is not None else t.max_ece_increase,
    )


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    thresholds: Thresholds,
    decide: Callable[[np.ndarray], np.ndarray] | None = None,
    parts: dict[str, np.ndarray] | None = None,
) -> ParityRecord:
    """Compare an artifact's outputs with the Keras model's on the same images, by `DECISION_RULE`.

    Decisions (agreement, accuracy) are made by `decide`, the model's operating point for binary
    models with one, so the gate checks the decisions the app will make; argmax otherwise.
    `parts` names boolean masks over the images (validation, training images); accuracy is judged on
    the "validation" part (every image when there are no parts), agreement on all of them.
    """
    decide = decide or (lambda probs: probs.argmax(axis=1))
    n = len(labels)
    if reference.shape != candidate.shape:
        return _shape_mismatch(reference, candidate, n, thresholds)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    max_diff = float(diff.max()) if diff.size and finite else float("inf")
    mean_diff = float(diff.mean()) if diff.size and finite else float("inf")
    ref_top, cand_top = decide(reference), decide(candidate)
    agree = ref_top == cand_top
    parts = parts or {"validation": np.ones(n, bool)}
    held_out = parts.get("validation", np.ones(n, bool))
    ref_right, cand_right = ref_top[held_out] == labels[held_out], cand_top[held_out] == labels[held_out]
    table = PairedTable.of(ref_right, cand_right)
    n_val = table.n
    record = ParityRecord(
        images=n,
        max_abs_diff=max_diff,
        mean_abs_diff=mean_diff,
        top1_agreement=float(agree.mean()) if n else 1.0,
        accuracy=float(cand_right.mean()) if n_val else 0.0,
        reference_accuracy=float(ref_right.mean()) if n_val else 0.0,
        thresholds=thresholds,
        passed=False,
        failures=[] if finite else ["outputs contain NaN or infinity"],
        flips=int((~agree).sum()),
        agreement_ci95=list(clopper_pearson(int(agree.sum()), n)),
        accuracy_images=n_val,
        accuracy_drop=table.drop,
        accuracy_drop_ci95=list(paired_drop(table)),
        discordant={"worse": table.worse, "better": table.better},
        mcnemar_p=mcnemar_p(table),
        parts={name: {"images": int(m.sum()), "flips": int((~agree[m]).sum())} for name, m in parts.items()},
    )
    if finite:
        _calibration_of(record, reference[held_out], candidate[held_out], labels[held_out])
    record.failures += _failures(record, int(agree.sum()), table)
    record.passed = not record.failures
    return record


def _failures(record: ParityRecord, agreeing: int, table: PairedTable) -> list[str]:
    """What fails under DECISION_RULE, each with the figures behind it."""
    t, failures = record.thresholds, []
    if t.max_abs_diff is not None and record.max_abs_diff > t.max_abs_diff:
        failures.append(f"max |diff| {record.max_abs_diff:.2e} > {t.max_abs_diff:.0e}")
    # one-sided 95% bounds: the two-sided 90% interval's ends
    upper = clopper_pearson(agreeing, record.images, 1 - 2 * (1 - CONFIDENCE))[1]
    if upper < t.min_agreement - 1e-12:
        failures.append(
            f"top-1 agreement {record.top1_agreement:.1%} ({record.flips} of {record.images} decisions differ; "
            f"at most {upper:.1%} at 95% confidence) < {t.min_agreement:.1%}"
        )
    if t.max_accuracy_drop is not None:
        lower = paired_drop(table, 1 - 2 * (1 - CONFIDENCE))[0]
        if lower > t.max_accuracy_drop + 1e-12:
            failures.append(
                f"accuracy drop {100 * record.accuracy_drop:.2f} points ({table.worse} worse, {table.better} better of "
                f"{record.accuracy_images}; at least {100 * lower:.2f} at 95% confidence) > {100 * t.max_accuracy_drop:g}"
            )
    if t.max_ece_increase is not None and record.ece_increase_ci95[0] > t.max_ece_increase + 1e-12:
        failures.append(
            f"ECE {100 * record.ece:.1f}% against Keras's {100 * record.reference_ece:.1f}% (an increase of at least "
            f"{100 * record.ece_increase_ci95[0]:.1f} points at 95% confidence) > {100 * t.max_ece_increase:g} points"
        )
    return failures


def _calibration_of(record: ParityRecord, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> None:
    """ECE and Brier of Keras and of the artifact on the labelled images, and the one-sided 95% interval of the
    ECE increase: a paired bootstrap over the images (each resample takes the same images for both)."""
    from scipy.stats import bootstrap

    from toolkit.calibration import ece_of, measure, top_label

    if len(labels) == 0:
        return
    mine, keras = measure(candidate, labels), measure(reference, labels)
    record.ece, record.reference_ece, record.brier, record.reference_brier = (
        mine.ece,
        keras.ece,
        mine.brier,
        keras.brier,
    )
    if len(labels) < 2:
        record.ece_increase_ci95 = [mine.ece - keras.ece] * 2
        return
    cand_conf, cand_right = top_label(candidate, labels)
    ref_conf, ref_right = top_label(reference, labels)

    def increase(index: np.ndarray, axis: int = -1) -> np.ndarray:  # index: (resamples, images)
        return ece_of(cand_conf[index], cand_right[index]) - ece_of(ref_conf[index], ref_right[index])

    result = bootstrap(
        (np.arange(len(labels)),),
        increase,
        vectorized=True,
        batch=200,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=1 - 2 * (1 - CONFIDENCE),  # the two-sided 90% interval's ends: one-sided 95% bounds
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    record.ece_increase_ci95 = [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _shape_mismatch(reference: np.ndarray, candidate: np.ndarray, n: int, thresholds: Thresholds) -> ParityRecord:
    failure = f"output shape {candidate.shape} differs from Keras {reference.shape}"
    inf = float("inf")
    return ParityRecord(n, inf, inf, 0.0, 0.0, 0.0, thresholds, False, [failure], flips=n, agreement_ci95=[0.0, 1.0])
