"""Evaluate any model format on a labelled folder, through the embeddable runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from toolkit.data import SkippedFile, load_labelled_folder
from toolkit.fileio import write_json_atomic
from toolkit.metrics import Metrics, classification_metrics, plot_confusion
from toolkit.runtime import load


@dataclasses.dataclass
class EvaluationResult:
    model: str
    format: str
    provider: str
    metrics: Metrics
    skipped: list[SkippedFile]


def evaluate_model(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 32,
    verify: bool = True,
    allow_external_data: bool = False,
) -> EvaluationResult:
    classifier = load(
        model_path, device=device, threads=threads, verify=verify, allow_external_data=allow_external_data
    )
    labels, arrays = load_labelled_folder(data_dir, classifier.image_size, classifier.labels)
    probs = classifier.predict_arrays(arrays.images, batch_size)
    metrics = classification_metrics(probs, arrays.labels, labels)
    result = EvaluationResult(str(model_path), classifier.format, classifier.provider, metrics, arrays.skipped)
    if out is not None:
        out = Path(out)
        payload = dataclasses.asdict(result)
        write_json_atomic(out / "metrics.json", payload)
        plot_confusion(metrics, out / "confusion.png", title=f"{Path(model_path).name} on {Path(data_dir).name}")
    return result


def format_metrics(m: Metrics) -> str:
    lines = [
        f"images: {m.count}   accuracy: {m.accuracy:.4f}   AUC: {m.auc:.4f}"
        if m.auc is not None
        else f"images: {m.count}   accuracy: {m.accuracy:.4f}   AUC: n/a"
    ]
    if m.sensitivity is not None:
        lines.append(f"sensitivity ({m.positive_class}): {m.sensitivity:.4f}   specificity: {m.specificity:.4f}")
    width = max(max(len(name) for name in m.labels), 9)
    lines.append(f"{'class'.ljust(width)}  precision  recall     f1  support")
    for name, c in m.per_class.items():
        lines.append(f"{name.ljust(width)}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:5.4f}  {c.support:7d}")
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("  " + " ".join(name.rjust(width) for name in m.labels))
    for name, row in zip(m.labels, m.confusion_matrix):
        lines.append(name.ljust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
