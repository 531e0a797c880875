"""Score calibration: how far a model's probabilities can be read as frequencies, and temperature scaling.

Modern networks are over-confident (Guo et al. 2017, "On Calibration of Modern Neural
Networks"); one scalar fitted on validation, the temperature T, fixes most of it: the
calibrated probabilities are softmax(logits / T). Dividing the last Dense layer's
kernel and bias by T folds it into the model, so every artifact converted from it
outputs calibrated probabilities at no cost (`toolkit.model.fold_temperature`).

Numpy only (scipy for the one-dimensional fit), so `toolkit evaluate` and the export
gate can measure calibration without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

import numpy as np

BINS = 15  # Guo et al.'s binning: 15 equal-width bins of the top-class probability
BINNING = f"top-label ECE: {BINS} equal-width bins of the top-class probability, weighted by their share of images"
TINY = 1e-45  # the smallest float32 probability above 0: log of a float32 softmax that underflowed
T_RANGE = (0.05, 20.0)  # a temperature outside this says the fit went wrong, not that the model is that far off


class ScoreCalibration(StrEnum):
    """`toolkit train --score-calibration`: temperature scaling fitted on validation, or none."""

    temperature = "temperature"
    none = "none"


@dataclasses.dataclass
class Calibration:
    """How well probabilities match frequencies on one set of images."""

    ece: float  # expected calibration error, BINNING
    brier: float  # mean over images of the summed squared difference to the one-hot label
    log_loss: float  # mean negative log probability of the true class
    images: int
    bins: list[dict] = dataclasses.field(default_factory=list)  # per bin: lower, upper, images, accuracy, confidence


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-image constant (which softmax ignores), from probabilities."""
    return np.log(np.clip(np.asarray(probs, np.float64), TINY, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), computed from the probabilities."""
    z = log_probabilities(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(labels)), labels], TINY, 1.0)
    return float(-np.log(p).mean()) if len(labels) else 0.0


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (Guo et al.'s fit), in T_RANGE."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, int)
    if len(labels) == 0:
        return 1.0
    z = log_probabilities(probs)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float((log_norm - scaled[np.arange(len(labels)), labels]).mean())

    low, high = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    best = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(best.x))


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each confidence: (lower, upper], the first bin also taking 0."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per image: what ECE is computed from."""
    probs = np.asarray(probs, np.float64)
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels, int)


def ece_of(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> np.ndarray:
    """ECE of each row of `confidence`/`correct` (1-D: one set of images; 2-D: many, e.g. bootstrap resamples)."""
    confidence, correct = np.atleast_2d(confidence), np.atleast_2d(correct).astype(np.float64)
    rows, n = confidence.shape
    index = _bin_index(confidence, bins)
    flat = (np.arange(rows)[:, None] * bins + index).ravel()
    size = rows * bins
    gap = np.bincount(flat, weights=(correct - confidence).ravel(), minlength=size).reshape(rows, bins)
    return np.abs(gap).sum(axis=1) / n


def measure(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Calibration:
    """ECE (with its bins), Brier score and log loss of `probs` against integer `labels`."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, int)
    n = len(labels)
    if n == 0:
        return Calibration(0.0, 0.0, 0.0, 0)
    confidence, correct = top_label(probs, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = _bin_index(confidence, bins)
    table = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else 0.0
        mean_confidence = float(confidence[members].mean()) if count else 0.0
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "images": count,
                      "accuracy": accuracy, "confidence": mean_confidence})  # fmt: skip
    onehot = np.eye(probs.shape[1])[labels]
    brier = float(((probs - onehot) ** 2).sum(axis=1).mean())
    ece = float(ece_of(confidence, correct, bins)[0])
    return Calibration(ece, brier, negative_log_likelihood(probs, labels), n, table)


def summary(before: Calibration, after: Calibration) -> str:
    """One line: ECE, Brier and log loss, before -> after."""
    return (
        f"ECE {100 * before.ece:.1f}% -> {100 * after.ece:.1f}%, Brier {before.brier:.3f} -> {after.brier:.3f}, "
        f"log loss {before.log_loss:.3f} -> {after.log_loss:.3f}"
    )


def plot_reliability(before: Calibration, after: Calibration | None, path, title: str) -> None:
    """The reliability diagram: accuracy against confidence per bin, before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.fileio import write_with

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for calibration, name, marker in ((before, "before", "o"), (after, "after", "s")):
        if calibration is None:
            continue
        used = [b for b in calibration.bins if b["images"]]
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker=marker,
                label=f"{name}: ECE {100 * calibration.ece:.1f}%")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
