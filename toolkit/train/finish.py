"""The end of a run: the saved model's own metrics, plots, and run.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from toolkit import __version__
from toolkit import calibration as cal
from toolkit.data import DataReport, LoadedDataset
from toolkit.data.registration import AugmentChoice
from toolkit.errors import TrainingError
from toolkit.fileio import write_json_atomic
from toolkit.keras_io import load_keras_model, predict_in_batches
from toolkit.metrics import Metrics, classification_metrics, plot_confusion, plot_roc, recall_summary
from toolkit.model import fold_temperature, head_part
from toolkit.operating_point import Decision, choose_threshold, parse_operating_point, resolve_positive_class
from toolkit.run_folder import (
    BEST,
    CURVES,
    HISTORY,
    LABELS,
    METRICS,
    RUN,
    labels_payload,
    plot_curves,
    read_history_csv,
    save_model_atomic,
    write_history_csv,
)
from toolkit.train.config import TrainConfig, TrainResult
from toolkit.train.fit import FitContext
from toolkit.tta import has_tta, with_tta
from toolkit.versions import TRAINING_PACKAGES, package_versions
from toolkit.weights import WeightsInfo


@dataclasses.dataclass
class RunFacts:
    """What run.json records beyond the config: data, model, precision, timings."""

    report: DataReport
    weights: WeightsInfo
    precision: str
    parameters: tuple[int, int]  # total, trainable
    replicas: int
    augmentation: AugmentChoice | None = None  # what the frozen and fine-tuning phases trained with, and why


@dataclasses.dataclass
class Evaluation:
    """The saved model on validation (which chose its threshold) and, once, on the held-out test split."""

    val: Metrics
    test: Metrics | None
    decision: Decision | None
    calibration: dict | None = None  # metrics.json's "calibration": the temperature, before/after per split


def choose_decision(config: TrainConfig, classes: list[str], probs: np.ndarray, labels: np.ndarray):
    """The positive class and its threshold, chosen on validation (None for more than two classes)."""
    if len(classes) != 2:
        return None
    positive = resolve_positive_class(classes, config.decision.positive_class)
    decision = Decision(list(classes), positive)
    if config.decision.operating_point:
        kind, value = parse_operating_point(config.decision.operating_point)
        index = decision.positive_index
        decision.threshold = choose_threshold(probs[:, index], labels == index, kind, value)
        decision.criterion = config.decision.operating_point
    return decision


def _report(ctx: FitContext, name: str, probs, labels, decision, classes) -> Metrics:
    """Metrics of one split, with its confusion matrix and (two classes) ROC plot."""
    metrics = classification_metrics(probs, labels, classes, decision)
    suffix = "" if name == "validation" else f"_{name}"
    plot_confusion(metrics, ctx.run_dir / f"confusion{suffix}.png", title=f"{name.capitalize()} (best model)")
    if decision is not None:
        plot_roc(probs, labels, decision, ctx.run_dir / f"roc{suffix}.png", title=f"{name.capitalize()} ROC")
    return metrics


def final_metrics(ctx: FitContext, data: LoadedDataset, val_features=None) -> Evaluation:
    """The saved model's metrics: validation picks the temperature and the threshold, the test split is
    evaluated once, here.

    With a frozen float32 base, the saved model's output on validation is its head
    applied to the cached float32 validation features, so no second pass is needed.
    With `--score-calibration temperature` the temperature fitted on validation is folded
    into best.keras before the test split is seen; the threshold is chosen on calibrated scores.
    """
    best_path = ctx.run_dir / BEST
    if not best_path.is_file():
        raise TrainingError("no epoch produced a usable model (the monitored value was never finite)")
    best = _with_views(ctx, load_keras_model(best_path))
    batch, classes = ctx.config.optim.batch_size, data.classes
    if val_features is not None and not has_tta(best):  # cached features are one view of each image
        val_probs = predict_in_batches(head_part(best), val_features, batch)
    else:
        val_probs = predict_in_batches(best, data.val.images, batch)
    temperature = _calibrate(ctx, best, val_probs, data.val.labels)
    if temperature is not None:
        val_probs = cal.apply_temperature(val_probs, temperature)
    decision = choose_decision(ctx.config, classes, val_probs, data.val.labels)
    val = _report(ctx, "validation", val_probs, data.val.labels, decision, classes)
    test, test_probs = None, None
    if data.test is not None:
        test_probs = predict_in_batches(best, data.test.images, batch)  # best is calibrated by now
        test = _report(ctx, "test", test_probs, data.test.labels, decision, classes)
    calibration = _calibration_report(ctx, temperature, val_probs, test_probs, data)
    payload = {**dataclasses.asdict(val), "split": "validation", "val_source": data.split.val_source}
    if decision is not None:
        payload["operating_point"] = _operating_point(decision, val, test)
    if test is not None:
        payload["test"] = dataclasses.asdict(test)
    payload["calibration"] = calibration
    write_json_atomic(ctx.run_dir / LABELS, labels_payload(classes, decision, _stored_calibration(temperature)))
    write_json_atomic(ctx.run_dir / METRICS, payload)
    write_history_csv(ctx.history, ctx.run_dir / HISTORY)
    plot_curves(ctx.history, ctx.run_dir / CURVES)
    return Evaluation(val, test, decision, calibration)


def _with_views(ctx: FitContext, best):
    """With `--tta`, best.keras averaged over the flipped views (toolkit.tta), written anew before any metric."""
    if not ctx.config.decision.tta or has_tta(best):
        return best
    best = with_tta(best)
    save_model_atomic(best, ctx.run_dir / BEST)
    return best


def _calibrate(ctx: FitContext, best, val_probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Fit the temperature on validation and fold it into best.keras (written anew); None: not asked."""
    if ctx.config.decision.score_calibration != cal.ScoreCalibration.temperature or len(labels) == 0:
        return None
    temperature = cal.fit_temperature(val_probs, labels)
    fold_temperature(best, temperature)
    save_model_atomic(best, ctx.run_dir / BEST)
    return temperature


def _stored_calibration(temperature: float | None) -> dict:
    """What labels.json (and so every artifact's model-facts record) says of the scores."""
    if temperature is None:
        return {"method": cal.ScoreCalibration.none.value}
    return {"method": cal.ScoreCalibration.temperature.value, "temperature": temperature, "fitted_on": "validation"}


def _calibration_report(ctx: FitContext, temperature: float | None, val_probs, test_probs, data) -> dict:
    """ECE, Brier and log loss before and after, per split, with reliability.png (and reliability_test.png)."""
    report: dict = {**_stored_calibration(temperature), "binning": cal.BINNING}
    splits = [("validation", val_probs, data.val.labels)]
    if test_probs is not None:
        splits.append(("test", test_probs, data.test.labels))
    for name, probs, labels in splits:
        before_probs = probs if temperature is None else cal.apply_temperature(probs, 1.0 / temperature)
        before = cal.measure(before_probs, labels)
        after = cal.measure(probs, labels) if temperature is not None else None
        report[name] = {"before": dataclasses.asdict(before), "after": dataclasses.asdict(after) if after else None}
        suffix = "" if name == "validation" else f"_{name}"
        title = f"{name.capitalize()}: " + (f"temperature {temperature:.2f}" if temperature else "not calibrated")
        cal.plot_reliability(before, after, ctx.run_dir / f"reliability{suffix}.png", title)
    return report


def calibration_summary(calibration: dict | None) -> str:
    """The console's line: the temperature and what it changed on each split."""
    if not calibration or calibration.get("method") != cal.ScoreCalibration.temperature:
        return ""
    parts = []
    for name in ("validation", "test"):
        if calibration.get(name) and calibration[name]["after"]:
            split = calibration[name]
            before, after = cal.Calibration(**split["before"]), cal.Calibration(**split["after"])
            parts.append(f"{name} {cal.summary(before, after)}")
    temperature = calibration["temperature"]
    edge = min(abs(temperature - bound) / bound for bound in cal.T_RANGE) < 0.01
    warning = " (at the edge of the fit's range: too few validation images, or a model near chance)" if edge else ""
    return f"temperature {temperature:.2f}{warning}: " + "; ".join(parts)


def _operating_point(decision: Decision, val: Metrics, test: Metrics | None) -> dict:
    point = {**decision.to_json(), "validation": {"sensitivity": val.sensitivity, "specificity": val.specificity}}
    if test is not None:
        point["test"] = {"sensitivity": test.sensitivity, "specificity": test.specificity}
    return point


def make_result(ctx: FitContext, facts: RunFacts, evaluation: Evaluation | None, seconds: float) -> TrainResult:
    return TrainResult(
        run_dir=str(ctx.run_dir),
        best_epoch=ctx.state.best_epoch,
        best_value=ctx.state.best_value,
        monitor=ctx.config.optim.monitor,
        val_accuracy=evaluation.val.accuracy if evaluation else float("nan"),
        val_auc=evaluation.val.auc if evaluation else None,
        test_accuracy=evaluation.test.accuracy if evaluation and evaluation.test else None,
        weights_source=facts.weights.source,
        precision=facts.precision,
        mode=ctx.config.mode,
        seconds=seconds,
        decision=evaluation.decision if evaluation else None,
        val_summary=recall_summary(evaluation.val) if evaluation else "",
        test_summary=recall_summary(evaluation.test) if evaluation and evaluation.test else "",
        calibration_summary=calibration_summary(evaluation.calibration) if evaluation else "",
    )


def _named(weights: dict[int, float], classes: list[str]) -> dict[str, float]:
    return {name: weights[i] for i, name in enumerate(classes)}


def write_run_json(ctx: FitContext, facts: RunFacts, result: TrainResult) -> None:
    config: TrainConfig = ctx.config
    best_row = next((r for r in read_history_csv(ctx.run_dir / HISTORY) if r["epoch"] == ctx.state.best_epoch), {})
    report = facts.report
    payload = {
        "toolkit_version": __version__,
        "config": config.to_flat(),
        "mode": config.mode,
        "precision": facts.precision,
        "fine_tune_precision": ctx.fine_tune_precision,  # None: no fine-tuning (or on images, in float32)
        "weights": dataclasses.asdict(facts.weights),
        "dataset": {
            "root": report.root,
            "layout": report.layout,
            "classes": report.classes,
            "counts": report.counts,
            "skipped": len(report.skipped),
        },
        "parameters": {"total": facts.parameters[0], "trainable": facts.parameters[1]},
        "augmentation": facts.augmentation.to_json() if facts.augmentation else None,
        "class_weights": None if ctx.class_weight is None else _named(ctx.class_weight, report.classes),
        "strategy": {"name": config.strategy, "replicas": facts.replicas},
        "best_epoch": ctx.state.best_epoch,
        "best_monitor_value": ctx.state.best_value,
        "best_epoch_metrics": best_row,
        "selected_on": report.val_source,  # which split chose the best epoch (and the threshold)
        "validation": {"accuracy": result.val_accuracy, "auc": result.val_auc},
        "test": {"accuracy": result.test_accuracy},
        "timings_s": {**ctx.timings, "total": result.seconds},
        "versions": package_versions(TRAINING_PACKAGES),
    }
    write_json_atomic(Path(ctx.run_dir) / RUN, payload)
