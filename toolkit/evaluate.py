"""Evaluate any model format on a labelled folder, through the embeddable runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from toolkit.calibration import Calibration, measure, plot_reliability
from toolkit.data import SkippedFile, load_labelled_folder
from toolkit.fileio import write_json_atomic
from toolkit.metrics import Metrics, classification_metrics, plot_confusion, plot_roc, recall_summary
from toolkit.operating_point import default_decision
from toolkit.run_folder import METRICS
from toolkit.runtime import Classifier


@dataclasses.dataclass
class EvaluateOptions:
    """`toolkit evaluate`'s own defaults."""

    batch_size: int = 32


@dataclasses.dataclass
class EvaluationResult:
    model: str
    format: str
    provider: str
    metrics: Metrics
    skipped: list[SkippedFile]
    calibration: Calibration | None = None  # ECE, Brier, log loss of the model's probabilities on this folder
    score_note: str = ""  # what the model's record says of its probabilities (calibrated or not)


def evaluate_model(
    classifier: Classifier,
    data_dir: str | Path,
    out: str | Path | None = None,
    batch_size: int = EvaluateOptions.batch_size,
) -> EvaluationResult:
    """Metrics of a loaded classifier on a labelled folder; metrics.json and confusion.png into `out`."""
    labels, arrays = load_labelled_folder(data_dir, classifier.image_size, classifier.labels)
    probs = classifier.predict_arrays(arrays.images, batch_size)
    decision = classifier.decision or default_decision(labels)
    metrics = classification_metrics(probs, arrays.labels, labels, decision)
    model_path = classifier.path
    calibration = measure(probs, arrays.labels)
    result = EvaluationResult(
        str(model_path), classifier.format, classifier.provider, metrics, arrays.skipped, calibration,
        classifier.info.score_note,
    )  # fmt: skip
    if out is not None:
        out = Path(out)
        payload = dataclasses.asdict(result)
        write_json_atomic(out / METRICS, payload)
        title = f"{Path(model_path).name} on {Path(data_dir).name}"
        plot_confusion(metrics, out / "confusion.png", title=title)
        if decision is not None:
            plot_roc(probs, arrays.labels, decision, out / "roc.png", title=title)
        plot_reliability(calibration, None, out / "reliability.png", title)
    return result


def format_calibration(result: EvaluationResult) -> str:
    """One line: how far the probabilities on this folder can be read as frequencies."""
    c = result.calibration
    return (
        f"calibration: ECE {100 * c.ece:.1f}% (15 equal-width bins), Brier {c.brier:.4f}, log loss {c.log_loss:.4f}; "
        f"probabilities {result.score_note}"
    )


def format_metrics(m: Metrics) -> str:
    lines = [
        f"images: {m.count}   accuracy: {m.accuracy:.4f}   AUC: {m.auc:.4f}"
        if m.auc is not None
        else f"images: {m.count}   accuracy: {m.accuracy:.4f}   AUC: n/a"
    ]
    lines.append(recall_summary(m))
    if m.sensitivity is not None:
        lines.append(
            f"positive class {m.positive_class} at threshold {m.threshold:.4g}: sensitivity {m.sensitivity:.4f}   "
            f"specificity {m.specificity:.4f}   PR-AUC {'n/a' if m.pr_auc is None else f'{m.pr_auc:.4f}'}"
        )
    width = max(max(len(name) for name in m.labels), 9)
    lines.append(f"{'class'.ljust(width)}  precision  recall     f1  support")
    for name, c in m.per_class.items():
        lines.append(f"{name.ljust(width)}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:5.4f}  {c.support:7d}")
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("  " + " ".join(name.rjust(width) for name in m.labels))
    for name, row in zip(m.labels, m.confusion_matrix):
        lines.append(name.ljust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
