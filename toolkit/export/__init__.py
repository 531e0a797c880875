"""Export a trained run to deployable formats, each one verified by the parity gate.

One module per format registers an `ExportFormat`; this module only selects,
runs and records them. Each artifact is written to a temporary file and renamed,
then checked against the Keras model, then recorded in `manifest.json`
(itself rewritten atomically after every artifact), so an interrupted export
never leaves an artifact that the manifest vouches for but did not check.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata as md
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit import __version__
from toolkit.errors import DatasetError, ExportError, ModelError
from toolkit.export import onnx_float, onnx_int8, tflite
from toolkit.export.base import ExportContext, ExportFormat
from toolkit.fileio import atomic_path, sha256_file, write_json_atomic
from toolkit.parity import ParityOverrides, compare_outputs, thresholds_for
from toolkit.quiet import silenced

REGISTRY: dict[str, ExportFormat] = {f.key: f for f in (onnx_float.FORMAT, onnx_int8.FORMAT, *tflite.FORMATS)}
FORMAT_CHOICES = ("onnx", "tflite", "all")
PRECISIONS = ("float32", "float16", "dynamic", "int8")
DEFAULT_OPSET = 17  # tf2onnx 1.17 supports up to 18; 17 is what most runtimes in the field accept
MAX_OPSET = 18
DEFAULT_CALIB_IMAGES = 200
MANIFEST = "manifest.json"
CONVERTER_PACKAGES = {"tf2onnx": "tf2onnx", "onnxruntime.quantization": "onnxruntime", "tensorflow.lite": "tensorflow"}


@dataclasses.dataclass
class ExportOptions:
    format: str = "all"
    precisions: list[str] | None = None
    opset: int = DEFAULT_OPSET
    calib_images: int = DEFAULT_CALIB_IMAGES
    parity_images: int | None = None
    data_dir: str | None = None
    overrides: ParityOverrides = dataclasses.field(default_factory=ParityOverrides)


@dataclasses.dataclass
class ExportReport:
    manifest: dict
    failed: list[dict]
    manifest_path: Path


def select_formats(format: str, precisions: list[str] | None) -> list[ExportFormat]:
    if format not in FORMAT_CHOICES:
        raise ExportError(f"--format must be one of {', '.join(FORMAT_CHOICES)}, got {format}")
    for p in precisions or []:
        if p not in PRECISIONS:
            raise ExportError(f"--precision must be among {', '.join(PRECISIONS)}, got {p}")
    chosen = [
        f
        for f in REGISTRY.values()
        if (format == "all" or f.format == format) and (not precisions or f.precision in precisions)
    ]
    if not chosen:
        raise ExportError(f"no format matches --format {format} --precision {','.join(precisions or [])}")
    return chosen


def _versions(converter: str) -> dict[str, str]:
    versions = {"toolkit": __version__}
    for package in sorted({CONVERTER_PACKAGES[converter], "tensorflow", "keras", "onnx"}):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return versions


def _load_run(run_dir: Path, data_dir: str | None):
    from toolkit.model import load_keras_model

    best = run_dir / "best.keras"
    if not best.is_file():
        raise ModelError(f"{run_dir} has no best.keras; train first (toolkit train DATA_DIR --out {run_dir})")
    labels_path, config_path = run_dir / "labels.json", run_dir / "config.json"
    if not labels_path.is_file() or not config_path.is_file():
        raise ModelError(f"{run_dir} is not a complete run folder (labels.json and config.json are needed)")
    labels = list(json.loads(labels_path.read_text()))
    config = json.loads(config_path.read_text())
    model = load_keras_model(best)
    return best, model, labels, config, data_dir or config["data_dir"]


def _load_images(config: dict, data_dir: str, labels: list[str], run_dir: Path, image_size: int):
    from toolkit.data import load_dataset

    if not Path(data_dir).is_dir():
        raise DatasetError(f"the run's data folder {data_dir} is missing; pass --data DIR with the same classes")
    cache_dir = config.get("cache_dir") or run_dir / "cache"
    split, train, val, _ = load_dataset(
        data_dir, image_size, config.get("val_split", 0.2), config.get("seed", 0), cache_dir
    )
    if split.classes != labels:
        raise DatasetError(f"classes in {data_dir} {split.classes} differ from the model's labels {labels}")
    return train, val


def _calibration_subset(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(images))[: min(count, len(images))]
    return np.asarray(images[np.sort(order)], dtype=np.uint8)


def export_run(
    run_dir: str | Path, options: ExportOptions = ExportOptions(), log: Callable[[str], None] = print
) -> ExportReport:
    """Convert the run's best model to every selected format and gate each on parity."""
    from toolkit.runtime import load as load_artifact
    from toolkit.train import predict_in_batches

    run_dir = Path(run_dir)
    formats = select_formats(options.format, options.precisions)
    if not 7 <= options.opset <= MAX_OPSET:
        raise ExportError(f"--opset must be between 7 and {MAX_OPSET} (tf2onnx 1.17), got {options.opset}")
    if options.calib_images < 1:
        raise ExportError("--calib-images must be at least 1")
    best, model, labels, config, data_dir = _load_run(run_dir, options.data_dir)
    image_size = int(model.input_shape[1])
    train, val = _load_images(config, data_dir, labels, run_dir, image_size)
    n_parity = len(val) if options.parity_images is None else min(options.parity_images, len(val))
    parity_images = np.asarray(val.images[:n_parity], dtype=np.uint8)
    parity_labels = val.labels[:n_parity]
    reference = predict_in_batches(model, parity_images)

    export_dir = run_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = export_dir / MANIFEST
    manifest = _read_manifest(manifest_path)
    source_sha = sha256_file(best)
    if manifest.get("source", {}).get("sha256") not in (None, source_sha):
        manifest["artifacts"] = []  # a different checkpoint: older artifacts no longer describe it
    manifest.update(
        {
            "toolkit_version": __version__,
            "source": {"path": "../best.keras", "sha256": source_sha},
            "labels": labels,
            "image_size": image_size,
        }
    )
    manifest.setdefault("artifacts", [])
    ctx = ExportContext(
        model=model,
        export_dir=export_dir,
        labels=labels,
        image_size=image_size,
        calibration_images=_calibration_subset(train.images, options.calib_images, config.get("seed", 0)),
        opset=options.opset,
        source_sha256=source_sha,
    )
    failed: list[dict] = []
    try:
        for fmt in formats:
            log(f"exporting {fmt.format} {fmt.precision} ...")
            dest = export_dir / fmt.filename
            with atomic_path(dest) as tmp, silenced((1, 2)):  # converters print pages of graph dumps
                fmt.convert(ctx, tmp)
            if fmt.key == "onnx-float32":
                ctx.scratch["onnx-float32"] = dest
            classifier = load_artifact(dest, device="cpu", labels=labels, verify=False)
            candidate = classifier.predict_arrays(parity_images)
            record = compare_outputs(
                reference, candidate, parity_labels, thresholds_for(fmt.precision, options.overrides)
            )
            entry = {
                "format": fmt.format,
                "precision": fmt.precision,
                "path": fmt.filename,
                "sha256": sha256_file(dest),
                "size_bytes": dest.stat().st_size,
                **fmt.describe_io(dest),
                "labels": labels,
                "image_size": image_size,
                "preprocessing": onnx_float.PREPROCESSING,
                "source_sha256": source_sha,
                "versions": _versions(fmt.converter),
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "parity": dataclasses.asdict(record),
            }
            if not record.passed:
                entry["advice"] = fmt.advice
                failed.append(entry)
            manifest["artifacts"] = [
                a for a in manifest["artifacts"] if (a["format"], a["precision"]) != (fmt.format, fmt.precision)
            ] + [entry]
            write_json_atomic(manifest_path, manifest)
    finally:
        for key, path in ctx.scratch.items():
            if key == "onnx-float32" and path.parent != export_dir:
                shutil.rmtree(path.parent, ignore_errors=True)
    return ExportReport(manifest, failed, manifest_path)


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}  # a damaged manifest is rebuilt from the artifacts exported now


def parity_failure_message(failed: list[dict]) -> str:
    parts = [
        f"{e['format']} {e['precision']}: {'; '.join(e['parity']['failures'])} (try: {e['advice']})" for e in failed
    ]
    return "parity gate failed for " + " | ".join(parts)
