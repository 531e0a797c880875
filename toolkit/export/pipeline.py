"""The export pipeline: select formats, convert each atomically, gate it on parity, record it.

Each artifact is written to a temporary file and renamed, then checked against the
Keras model through the runtime, then recorded in `manifest.json` (rewritten
atomically after every artifact), so an interrupted export never leaves an artifact
that the manifest vouches for but did not check.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit import __version__
from toolkit.card import write_model_card
from toolkit.errors import ExportError
from toolkit.export import (
    heatmap,
    onnx_float,
    onnx_int8,
    openvino,
    openvino_int8,
    tflite,
    tflite_dynamic,
    tflite_int8,
    web,
)
from toolkit.export.base import Calibration, ExportContext, ExportFormat, ExportTarget, Precision
from toolkit.export.manifest import MANIFEST, converter_versions, open_manifest, record_artifact
from toolkit.facts import InputSpec, ModelFacts
from toolkit.fileio import atomic_path, folder_lock, remove_stale_temporaries, sha256_file, write_json_atomic
from toolkit.parity import MAX_MAP_DIFF, ParityOverrides, compare_outputs, thresholds_for
from toolkit.progress import phase
from toolkit.quiet import silenced
from toolkit.run_folder import RunFolder, load_run
from toolkit.tta import tta_record

REGISTRY: dict[str, ExportFormat] = {
    f.key: f
    for f in (
        onnx_float.FORMAT,
        onnx_int8.FORMAT,
        *tflite.FORMATS,
        tflite_dynamic.FORMAT,
        tflite_int8.FORMAT,
        openvino.FORMAT,
        openvino_int8.FORMAT,
        *web.FORMATS,
    )
}
MODEL_FORMATS = (ExportTarget.onnx, ExportTarget.tflite, ExportTarget.openvino)  # `all`: every model file
MAX_OPSET = 18  # tf2onnx 1.17 supports opsets up to 18


@dataclasses.dataclass
class ExportOptions:
    """What `toolkit export` is asked to do: the only home of its defaults (the CLI reads them from here)."""

    format: ExportTarget = ExportTarget.all
    precisions: list[str] | None = None
    opset: int = 17  # what most runtimes in the field accept
    calib_images: int = 200  # training images (stratified) calibrating int8
    calibration: Calibration = Calibration.minmax  # int8 activation ranges (ONNX and TFLite)
    calibration_percentile: float = 99.999
    diagnose: bool = False  # per-activation int8 report (also written whenever the ONNX int8 gate fails)
    int8_max_drop: float | None = None  # accuracy points: turns on the automatic fix (int8_fix.py)
    int8_max_float_layers: int = 10  # the fix's budget
    parity_images: int = 1000  # validation first, then training images (stratified, seeded); test never
    data_dir: str | None = None
    overrides: ParityOverrides = dataclasses.field(default_factory=ParityOverrides)
    wait: bool = False  # another export holds RUN/export: wait for it instead of failing
    heatmap: bool = False  # the selected formats with a Grad-CAM second output, beside the plain ones (heatmap.py)


@dataclasses.dataclass
class ExportReport:
    manifest: dict
    failed: list[dict]
    manifest_path: Path
    diagnosis: Path | None = None  # export/quant_report.json, when written


def select_formats(format: str, precisions: list[str] | None, heatmaps: bool = False) -> list[ExportFormat]:
    if format not in tuple(ExportTarget):
        raise ExportError(f"--format must be one of {', '.join(ExportTarget)}, got {format}")
    for p in precisions or []:
        if p not in tuple(Precision):
            raise ExportError(f"--precision must be among {', '.join(Precision)}, got {p}")
    chosen = [
        f
        for f in REGISTRY.values()
        if (f.format == format or (format == "all" and f.format in MODEL_FORMATS))
        and (not precisions or f.precision in precisions)
    ]
    if not chosen:
        raise ExportError(f"no format matches --format {format} --precision {','.join(precisions or [])}")
    return [heatmap.heatmap_format(f) for f in chosen] if heatmaps else chosen


def _calibration_index(train, count: int, seed: int) -> np.ndarray:
    """Which training images calibrate int8: a seeded sample, every class in proportion (never validation or test)."""
    from toolkit.data import stratified_sample

    return stratified_sample(train.labels, count, seed)


def _calibration_subset(train, count: int, seed: int) -> np.ndarray:
    return np.asarray(train.images[_calibration_index(train, count, seed)], dtype=np.uint8)


def _calibration_record(fmt: ExportFormat, ctx: ExportContext) -> dict | None:
    """What calibrated an int8 artifact, for its manifest entry."""
    if fmt.precision != "int8":
        return None
    return dict(ctx.calibration)


@dataclasses.dataclass
class ParitySet:
    """The non-test images every artifact is compared on, with the Keras model's own outputs."""

    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    overrides: ParityOverrides
    decide: Callable[[np.ndarray], np.ndarray] | None = None  # the operating point, where the run has one
    parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # part name -> mask over images
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # format key -> last artifact's outputs
    reference_maps: np.ndarray | None = None  # the Keras model's Grad-CAM of each image's decided class (h x w)

    def diagnosis_images(self) -> np.ndarray:
        """A few stratified parity images for the per-layer diagnosis (it holds every activation in memory)."""
        from toolkit.data import stratified_sample
        from toolkit.export.diagnose import DIAGNOSIS_IMAGES

        return self.images[stratified_sample(self.labels, DIAGNOSIS_IMAGES, seed=0)]


def _check_options(options: ExportOptions) -> list[ExportFormat]:
    formats = select_formats(options.format, options.precisions, options.heatmap)
    if not 7 <= options.opset <= MAX_OPSET:
        raise ExportError(f"--opset must be between 7 and {MAX_OPSET} (tf2onnx 1.17), got {options.opset}")
    if options.calib_images < 1:
        raise ExportError("--calib-images must be at least 1")
    if options.calibration not in tuple(Calibration):
        raise ExportError(f"--calibration must be one of {', '.join(Calibration)}")
    if not 50.0 < options.calibration_percentile <= 100.0:
        raise ExportError("--calibration-percentile must be in (50, 100]")
    if options.int8_max_drop is not None and not 0 <= options.int8_max_drop <= 100:
        raise ExportError("--int8-max-drop is in accuracy points, 0 to 100")
    if options.int8_max_float_layers < 1:
        raise ExportError("--int8-max-float-layers must be at least 1")
    if options.parity_images < 1:
        raise ExportError("--parity-images must be at least 1")
    return formats


def _parity_set(model, data, options: ExportOptions, seed: int, decision=None) -> ParitySet:
    """Validation images, then training images, up to `options.parity_images`, each stratified by class and seeded.

    Agreement needs no labels, so every non-test image may count; the held-out validation part judges
    accuracy. Training images that calibrate int8 are a part of their own, so their agreement is seen apart.
    """
    from toolkit.data import stratified_sample
    from toolkit.keras_io import predict_in_batches

    val_index = stratified_sample(data.val.labels, options.parity_images, seed)
    room = max(0, options.parity_images - len(val_index))
    train_index = stratified_sample(data.train.labels, room, seed + 1) if room else np.zeros(0, np.int64)
    calibration = np.isin(train_index, _calibration_index(data.train, options.calib_images, seed))
    images = np.concatenate([data.val.images[val_index], data.train.images[train_index]]).astype(np.uint8, copy=False)
    labels = np.concatenate([data.val.labels[val_index], data.train.labels[train_index]])
    in_val = np.arange(len(images)) < len(val_index)
    parts = {"validation": in_val}
    if len(train_index):
        parts["train_calibration"] = np.concatenate([np.zeros(len(val_index), bool), calibration])
        parts["train_other"] = ~in_val & ~parts["train_calibration"]
    decide = decision.predict if decision is not None else None
    overrides = options.overrides
    if options.int8_max_drop is not None and overrides.max_accuracy_drop is None:  # the fix's budget is the gate's
        overrides = dataclasses.replace(overrides, max_accuracy_drop=options.int8_max_drop / 100)
    reference = predict_in_batches(model, images)
    return ParitySet(images, labels, reference, overrides, decide, parts)


def _export_one(fmt: ExportFormat, ctx: ExportContext, parity: ParitySet) -> dict:
    """Convert (atomically), run the artifact through the runtime, and describe it for the manifest."""
    from toolkit.runtime import load as load_artifact
    from toolkit.runtime.base import model_bytes

    dest = ctx.export_dir / fmt.filename
    started = time.perf_counter()
    # The converters print pages of graph dumps: silenced inside the phase, whose line comes after.
    name = " ".join(filter(None, (fmt.format, fmt.precision, fmt.variant)))
    with phase(f"converting {name}"), atomic_path(dest) as tmp, silenced((1, 2)):
        fmt.convert(ctx, tmp)
    # What int8 quantises, web bundles copy and the diagnosis reads (a heatmap format's in its own context).
    heatmap.context_for(fmt, ctx).scratch[fmt.base_key] = dest
    converted = time.perf_counter()
    with phase(f"parity of {name} on {len(parity.images)} images"):
        with silenced((2,)):  # LiteRT announces its XNNPACK delegate
            classifier = load_artifact(dest, device="cpu", labels=ctx.labels, verify=False)
        if fmt.variant:
            candidate, maps = classifier.heatmap_arrays(parity.images)
        else:
            candidate = classifier.predict_arrays(parity.images)
    timings = {"convert": converted - started, "parity": time.perf_counter() - converted}
    parity.outputs[fmt.key] = candidate
    thresholds = thresholds_for(fmt.precision, parity.overrides)
    record = compare_outputs(parity.reference, candidate, parity.labels, thresholds, parity.decide, parity.parts)
    variant = {}
    if fmt.variant:
        agreement = _map_agreement(ctx, parity, fmt.precision, maps)
        variant = {"variant": fmt.variant, "heatmap": dataclasses.asdict(agreement)}
        if not agreement.passed:
            record.failures.append(agreement.failure())
            record.passed = False
    entry = {
        "format": fmt.format,
        "precision": fmt.precision,
        **variant,
        "path": fmt.filename,
        "sha256": sha256_file(dest),
        "size_bytes": model_bytes(dest),  # an OpenVINO IR's .bin included
        **fmt.describe_io(dest),
        "labels": ctx.labels,
        "decision": ctx.decision,
        "image_size": ctx.image_size,
        "preprocessing": ctx.facts.preprocessing,
        "source_sha256": ctx.source_sha256,
        "facts": classifier.info.to_json(),  # as the file states it (with its own content digest)
        "versions": converter_versions(fmt.converter),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "parity": dataclasses.asdict(record),
        "timings_s": {phase_name: round(seconds, 3) for phase_name, seconds in timings.items()},
    }
    calibration = _calibration_record(fmt, ctx)
    if calibration is not None:
        entry["calibration"] = calibration
    if not record.passed:
        entry["advice"] = fmt.advice
    return entry


def _map_agreement(ctx: ExportContext, parity: ParitySet, precision: str, maps: np.ndarray):
    """The artifact's maps against the Keras model's, each image's class as Keras decides it."""
    from toolkit.heatmap_model import keras_heatmaps
    from toolkit.runtime.heatmap import agreement, class_maps

    decide = parity.decide or (lambda probs: probs.argmax(axis=1))
    classes = decide(parity.reference)
    if parity.reference_maps is None:
        with phase(f"Keras heatmaps of {len(parity.images)} parity images"):
            parity.reference_maps = class_maps(keras_heatmaps(ctx.model, parity.images)[1], classes)
    bound = parity.overrides.max_map_diff or MAX_MAP_DIFF[precision]
    return agreement(parity.reference_maps, class_maps(maps, classes), bound)


def export_run(run_dir: str | Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    """Convert the run's best model to every selected format and gate each on parity.

    RUN/export has one writer at a time (`fileio.folder_lock`), so the manifest's
    read-modify-write never loses another export's entries; `options.wait` waits for it.
    """
    formats = _check_options(options)
    run = load_run(run_dir)
    with folder_lock(run.export_dir, options.wait):
        return _export_locked(run, formats, options)


def _export_locked(run: RunFolder, formats: list[ExportFormat], options: ExportOptions) -> ExportReport:
    from toolkit.keras_io import load_keras_model

    started = time.perf_counter()
    model = load_keras_model(run.best)
    data = run.load_data(options.data_dir)
    seed = int(run.config.get("seed", 0))
    loaded = time.perf_counter()
    parity = _parity_set(model, data, options, seed, run.decision)
    timings = {"load": loaded - started, "keras_reference": time.perf_counter() - loaded}
    export_dir = run.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(export_dir)
    source_sha = sha256_file(run.best)
    decision = run.decision.to_json() if run.decision else None
    facts = model_facts(run, source_sha, tta_record(model))
    manifest = open_manifest(export_dir, source_sha, facts)
    ctx = ExportContext(
        model=model,
        export_dir=export_dir,
        labels=run.labels,
        image_size=run.image_size,
        calibration_images=_calibration_subset(data.train, options.calib_images, seed),
        opset=options.opset,
        source_sha256=source_sha,
        facts=facts,
        decision=decision,
    )
    ctx.calibration = {"method": options.calibration, "images": len(ctx.calibration_images)}
    if options.calibration == "percentile":
        ctx.calibration["percentile"] = options.calibration_percentile
    failed: list[dict] = []
    diagnosis = None
    try:
        for fmt in formats:
            began = time.perf_counter()
            entry = _export_or_fix(fmt, ctx, parity, options)
            timings[fmt.key] = time.perf_counter() - began  # the fix's attempts included
            if not entry["parity"]["passed"]:
                failed.append(entry)
            record_artifact(export_dir, manifest, entry)
        began = time.perf_counter()
        diagnosis = _diagnose_if_asked(ctx, parity, options, failed)
        timings["diagnosis"] = time.perf_counter() - began
    finally:
        if "work" in ctx.scratch:
            shutil.rmtree(ctx.scratch["work"], ignore_errors=True)
    timings["total"] = time.perf_counter() - started
    # This export's phases (the shared ones, then each artifact's whole time); each entry's timings_s splits its own.
    manifest["export_timings_s"] = {name: round(seconds, 3) for name, seconds in timings.items()}
    write_json_atomic(export_dir / MANIFEST, manifest)
    write_model_card(export_dir.parent)  # every artifact's gate, size and ECE into the card
    return ExportReport(manifest, failed, export_dir / MANIFEST, diagnosis)


def model_facts(run: RunFolder, source_sha: str, tta: list[str] | None = None) -> ModelFacts:
    """The one record every artifact of this export carries (and its manifest entry repeats); `tta`: toolkit.tta."""
    from toolkit.bases import get_base

    return ModelFacts(
        labels=tuple(run.labels),
        input=InputSpec.square(run.image_size),
        decision=run.decision.to_json() if run.decision else None,
        preprocessing=get_base(run.base).preprocessing_text,
        toolkit_version=__version__,
        base=run.base,
        source_sha256=source_sha,
        score_calibration=run.score_calibration,
        extra={"tta": tta} if tta else {},
    )


def _export_or_fix(fmt: ExportFormat, ctx: ExportContext, parity: ParitySet, options: ExportOptions) -> dict:
    """One artifact; an int8 model file under `--int8-max-drop` goes through the automatic fix."""
    from toolkit.export.int8_fix import FixOptions, calibration_order, fix_int8

    if options.int8_max_drop is None or (fmt.rank_layers is None and fmt.fix is None):
        return _export_one(fmt, ctx, parity)
    if fmt.fix is not None:  # the format's quantizer restores accuracy itself (NNCF's accuracy control)
        return fmt.fix(
            fmt,
            ctx,
            lambda: _export_one(fmt, ctx, parity),
            parity,
            options.int8_max_drop,
            options.int8_max_float_layers,
        )
    calibrated = fmt.precision == Precision.int8  # dynamic range has no calibration: float layers only
    methods = calibration_order(ctx.calibration, options.calibration_percentile) if calibrated else [{}]
    fix = FixOptions(methods, options.int8_max_float_layers)
    chosen = dict(ctx.calibration)
    try:
        return fix_int8(fmt, ctx, lambda: _export_one(fmt, ctx, parity), parity, fix)
    finally:
        ctx.calibration, ctx.float_layers = chosen, []  # the next format starts from the user's choices


def _diagnose_if_asked(
    ctx: ExportContext, parity: ParitySet, options: ExportOptions, failed: list[dict]
) -> Path | None:
    """The per-layer int8 report, on `--diagnose` or for an int8 model file that failed its gate."""
    from toolkit.export import diagnose, tflite_int8

    failing = {f"{e['format']}-{e['precision']}" for e in failed}
    wanted = [k for k in ("onnx-int8", "tflite-int8") if k in ctx.scratch and (options.diagnose or k in failing)]
    if not wanted:
        return None
    images = parity.diagnosis_images()
    diagnoses = []
    for key in wanted:
        with phase(f"diagnosing {key.replace('-', ' ')} on {len(images)} parity images"), silenced((1, 2)):
            if key == "onnx-int8":
                diagnoses.append(diagnose.onnx_diagnosis(onnx_int8.float_onnx(ctx), ctx.scratch[key], images))
            else:
                noise = tflite_int8.layer_noise(ctx, images)
                diagnoses.append(diagnose.tflite_diagnosis(ctx.scratch[key].name, noise))
    return diagnose.write_quant_report(diagnoses, ctx.export_dir, len(images))


def parity_failure_message(failed: list[dict]) -> str:
    parts = [
        f"{e['format']} {e['precision']}: {'; '.join(e['parity']['failures'])} (try: {e['advice']})" for e in failed
    ]
    return "parity gate failed for " + " | ".join(parts)
