"""The decision rule of a binary classifier: which class is the finding, and from what probability on.

Medical and inspection users deploy an operating point ("catch 95% of malignant
lesions"), not argmax at 0.5. The threshold is chosen once, on the validation
split, stored with the model (labels.json, the export manifest, ONNX metadata),
and applied by the runtime; probabilities are always returned as they are.
Numpy only, so the runtime can use it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from toolkit.errors import DatasetError, ModelError

CRITERIA = ("sensitivity", "specificity", "threshold")


@dataclasses.dataclass
class Decision:
    """Predict `positive_class` when its probability is >= `threshold` (0.5 without an operating point)."""

    labels: list[str]
    positive_class: str
    threshold: float = 0.5
    criterion: str | None = None  # e.g. "sensitivity=0.95", as asked for

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_class)

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Class indices: the rule above for two classes, argmax otherwise."""
        probs = np.asarray(probs)
        if len(self.labels) != 2:
            return probs.argmax(axis=1)
        positive = self.positive_index
        return np.where(probs[:, positive] >= self.threshold, positive, 1 - positive)

    def to_json(self) -> dict:
        return {"positive_class": self.positive_class, "threshold": self.threshold, "criterion": self.criterion}


def parse_operating_point(text: str) -> tuple[str, float]:
    """ "sensitivity=0.95" -> ("sensitivity", 0.95), refusing anything else with a one-line error."""
    kind, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or kind not in CRITERIA or not 0.0 <= number <= 1.0:
        raise DatasetError(
            f"--operating-point takes sensitivity=S, specificity=S or threshold=T with a value in 0..1, got {text!r}"
        )
    return kind, number


def resolve_positive_class(labels: list[str], requested: str | None) -> str:
    """The finding: `requested`, or (by default) the label that sorts second."""
    if requested is None:
        return labels[-1] if len(labels) == 2 else labels[0]
    if len(labels) != 2:
        raise DatasetError("--positive-class is for two-class tasks")
    if requested not in labels:
        raise DatasetError(f"--positive-class {requested} is not a class of this data set ({', '.join(labels)})")
    return requested


def choose_threshold(scores: np.ndarray, positives: np.ndarray, kind: str, value: float) -> float:
    """The threshold on the positive class's probability that meets `kind` >= `value` on these scores.

    sensitivity: the highest threshold that still catches that share of positives
    (fewest false alarms); specificity: the lowest threshold that still clears that
    share of negatives (most positives caught).
    """
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    if kind == "threshold":
        return float(value)
    if kind == "sensitivity":
        pos = np.sort(scores[positives])[::-1]
        if not len(pos):
            raise DatasetError("the validation split has no positive image to choose a threshold on")
        needed = max(1, math.ceil(value * len(pos) - 1e-9))
        return float(pos[needed - 1])
    neg = np.sort(scores[~positives])
    if not len(neg):
        raise DatasetError("the validation split has no negative image to choose a threshold on")
    needed = math.ceil(value * len(neg) - 1e-9)
    return 0.0 if needed == 0 else float(np.nextafter(neg[needed - 1], np.inf))


def rates_at(scores: np.ndarray, positives: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Sensitivity and specificity of "positive when score >= threshold"."""
    scores, positives = np.asarray(scores), np.asarray(positives, dtype=bool)
    predicted = scores >= threshold
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": float((predicted & positives).sum() / n_pos) if n_pos else None,
        "specificity": float((~predicted & ~positives).sum() / n_neg) if n_neg else None,
    }


def default_decision(labels: list[str]) -> Decision | None:
    """Two classes without an operating point: the second label at 0.5 (None for more classes)."""
    return Decision(list(labels), labels[1]) if len(labels) == 2 else None


def parse_labels_payload(data, where: str) -> tuple[list[str], Decision | None]:
    """labels.json as written now ({"labels": [...], "positive_class", "threshold"}) or before (a list)."""
    raw = data.get("labels") if isinstance(data, dict) else data
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ModelError(f"{where} must hold a JSON list of class names")
    return list(raw), decision_from_json(list(raw), data if isinstance(data, dict) else None)


def decision_from_json(labels: list[str], payload: dict | None) -> Decision | None:
    """A Decision stored by training or export, or None (older files, multi-class models)."""
    if not isinstance(payload, dict) or len(labels) != 2 or payload.get("positive_class") not in labels:
        return None
    threshold = payload.get("threshold", 0.5)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ModelError(f"the stored decision's 'threshold' must be a probability, got {threshold!r}")
    return Decision(labels, payload["positive_class"], float(threshold), payload.get("criterion"))
