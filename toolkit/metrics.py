"""Classification metrics in numpy, shared by training and `toolkit evaluate`.

They need no TensorFlow, so evaluating an ONNX or TFLite model stays light.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from toolkit.operating_point import Decision, default_decision


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
    sensitivity: float | None = None  # two classes: recall of the positive class
    specificity: float | None = None  # two classes: recall of the other class
    positive_class: str | None = None
    pr_auc: float | None = None  # two classes: average precision of the positive class
    threshold: float | None = None  # two classes: the positive class is predicted from this probability on
    balanced_accuracy: float | None = None  # the mean of the per-class recalls (classes present only)


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


def keras_style_logs(probs: np.ndarray, onehot: np.ndarray, prefix: str = "") -> dict[str, float]:
    """loss, accuracy, auc, precision and recall with the meanings of the Keras metrics training compiles.

    On one-hot labels `keras.metrics.AUC`, `Precision` and `Recall` look at every
    (image, class) entry at once (micro-averaged; precision and recall at p > 0.5),
    so a loop that cannot use Keras's `fit` logs the same numbers under the same names.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    y = np.asarray(onehot, dtype=np.float64)
    positive, predicted = y.ravel() > 0.5, p.ravel() > 0.5
    true_positive = float((positive & predicted).sum())
    logs = {
        "loss": float(-(y * np.log(p)).sum(axis=1).mean()),
        "accuracy": float((p.argmax(axis=1) == y.argmax(axis=1)).mean()),
        "precision": _safe_div(true_positive, float(predicted.sum())),
        "recall": _safe_div(true_positive, float(positive.sum())),
    }
    auc = binary_auc(p.ravel(), positive)
    if auc is not None:
        logs["auc"] = auc
    return {prefix + k: v for k, v in logs.items()}


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the precision-recall curve as the mean precision at each positive (PR-AUC)."""
    positives = np.asarray(positives, dtype=bool)
    if not positives.any():
        return None
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    hits = positives[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], decision: Decision | None = None
) -> Metrics:
    """Accuracy, AUC, per-class P/R/F1 and the confusion matrix; for two classes, at `decision`'s point.

    Two classes: AUC, PR-AUC, sensitivity and specificity are those of the positive
    class (`decision.positive_class`, or the class that sorts second), and decisions
    follow its threshold (0.5 without one). More classes: argmax, macro AUC.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    if k == 2 and decision is None:
        decision = default_decision(list(class_names))
    pred = decision.predict(probs) if k == 2 else probs.argmax(axis=1)
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
        auc = auc_per_class[decision.positive_class]
    else:
        values = [v for v in auc_per_class.values() if v is not None]
        auc = float(np.mean(values)) if values else None
    present = [m.recall for m in per_class.values() if m.support]
    metrics = Metrics(
        accuracy=_safe_div(np.trace(confusion), confusion.sum()),
        balanced_accuracy=float(np.mean(present)) if present else None,
        auc=auc,
        auc_per_class=auc_per_class,
        per_class=per_class,
        confusion_matrix=confusion.tolist(),
        labels=list(class_names),
        count=int(len(labels)),
    )
    if k == 2:
        positive = decision.positive_index
        metrics.sensitivity = per_class[class_names[positive]].recall
        metrics.specificity = per_class[class_names[1 - positive]].recall
        metrics.positive_class = decision.positive_class
        metrics.pr_auc = average_precision(probs[:, positive], labels == positive)
        metrics.threshold = decision.threshold
    return metrics


def recall_summary(m: Metrics) -> str:
    """Balanced accuracy and every class's recall on one line: a class the model never predicts shows as 0%."""
    balanced = "n/a" if m.balanced_accuracy is None else f"{m.balanced_accuracy:.1%}"
    recalls = ", ".join(f"{name} {c.recall:.1%}" for name, c in m.per_class.items() if c.support)
    return f"balanced accuracy {balanced}; recall per class: {recalls}"


def plot_roc(
    probs: np.ndarray, labels: np.ndarray, decision: Decision, path: str | os.PathLike[str], title: str = "ROC"
) -> None:
    """The positive class's ROC curve with the operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.fileio import write_with

    positive = decision.positive_index
    scores, hits = np.asarray(probs)[:, positive], np.asarray(labels) == positive
    order = np.argsort(-scores, kind="mergesort")
    last_of_tie = np.r_[np.diff(scores[order]) != 0, True]  # one point per distinct threshold
    tpr = np.r_[0.0, np.cumsum(hits[order])[last_of_tie] / max(hits.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(~hits[order])[last_of_tie] / max((~hits).sum(), 1)]
    at = ((scores >= decision.threshold) & hits).sum() / max(hits.sum(), 1)
    false_alarms = ((scores >= decision.threshold) & ~hits).sum() / max((~hits).sum(), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, "-", label=f"AUC {binary_auc(scores, hits) or float('nan'):.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot([false_alarms], [at], "o", color="red", label=f"threshold {decision.threshold:.3g}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel(f"sensitivity ({decision.positive_class})")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


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
