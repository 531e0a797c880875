"""Classification metrics in numpy, shared by training and `toolkit evaluate`.

They need no TensorFlow, so evaluating an ONNX or TFLite model stays light.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass
class Metrics:
    accuracy: float
    auc: float | None
    auc_per_class: dict[str, float | None]
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    labels: list[str]
    count: int
    sensitivity: float | None = None  # two classes: recall of the second (positive) class
    specificity: float | None = None  # two classes: recall of the first (negative) class
    positive_class: str | None = None


def binary_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, with ties averaged."""
    positives = positives.astype(bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> Metrics:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class: dict[str, ClassMetrics] = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        precision = _safe_div(tp, confusion[:, i].sum())
        recall = _safe_div(tp, confusion[i, :].sum())
        f1 = _safe_div(2 * precision * recall, precision + recall)
        per_class[name] = ClassMetrics(precision, recall, f1, int(confusion[i, :].sum()))
    auc_per_class = {name: binary_auc(probs[:, i], labels == i) for i, name in enumerate(class_names)}
    if k == 2:
        auc = auc_per_class[class_names[1]]
    else:
        values = [v for v in auc_per_class.values() if v is not None]
        auc = float(np.mean(values)) if values else None
    metrics = Metrics(
        accuracy=_safe_div(np.trace(confusion), confusion.sum()),
        auc=auc,
        auc_per_class=auc_per_class,
        per_class=per_class,
        confusion_matrix=confusion.tolist(),
        labels=list(class_names),
        count=int(len(labels)),
    )
    if k == 2:
        metrics.sensitivity = per_class[class_names[1]].recall
        metrics.specificity = per_class[class_names[0]].recall
        metrics.positive_class = class_names[1]
    return metrics


def plot_confusion(metrics: Metrics, path: str | os.PathLike[str], title: str = "Confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.fileio import write_with

    cm = np.asarray(metrics.confusion_matrix)
    k = len(metrics.labels)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * k, 1.8 + 0.9 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), metrics.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), metrics.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {metrics.accuracy:.3f}")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
