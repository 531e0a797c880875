"""The `toolkit` command line: parse flags, call the library, print results.

Vocabularies and defaults come from the library's enums and dataclasses; heavy imports
(TensorFlow, onnxruntime) happen inside the commands that need them. Exit codes: 0 ok,
1 a quality gate failed, 2 bad input or usage, 3 an internal error, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit import cli_runtime, cli_train
from toolkit.bench.types import BenchFormat, BenchOptions
from toolkit.cli_flags import (
    Arg,
    DeviceFlag,
    ExternalData,
    ImageSize,
    JsonFlag,
    Opt,
    PanelledCommand,
    QuietFlag,
    ThreadsFlag,
    VerifyFlag,
    WaitFlag,
)
from toolkit.cli_flags import options_from as _options
from toolkit.console import OneLineErrors, load_classifier, set_debug, use_progress, user_errors
from toolkit.console import csv_choices as _csv
from toolkit.console import echo_json as _echo_json
from toolkit.data.check import CheckOptions
from toolkit.data.demo import DemoDataConfig
from toolkit.data.folders import SplitOptions
from toolkit.errors import ParityError
from toolkit.evaluate import EvaluateOptions
from toolkit.export.base import Calibration, ExportTarget, Precision
from toolkit.export.pipeline import ExportOptions
from toolkit.runtime import LoadOptions
from toolkit.runtime.base import Device

# Every default below is read from the library's dataclass that owns it (tests/test_cli_defaults.py checks it).
EXPORT = ExportOptions()
LOAD = LoadOptions()
EVALUATE = EvaluateOptions()
BENCH = BenchOptions()
DEMO = DemoDataConfig()
CHECK = CheckOptions()
SPLIT = SplitOptions()

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, export, benchmark and serve image classifiers built on a frozen ImageNet base.",
)


@app.callback()
def main_options(
    debug: Annotated[bool, Opt(help="Show the traceback of an internal error (exit code 3).")] = False,
) -> None:
    """Exit codes: 0 ok, 1 quality gate failed, 2 bad input or usage, 3 internal error, 130 interrupted."""
    set_debug(debug)


@app.command("demo-data")
@user_errors
def demo_data(
    out_dir: Annotated[Path, Arg(help="Folder to write train/ and test/ into.")],
    per_class: Annotated[int, Opt(min=2, help="Images per class (train and test together).")] = DEMO.per_class,
    image_size: ImageSize = DEMO.size,
    seed: Annotated[int, Opt(help="Seed: the same seed writes the same images.")] = DEMO.seed,
    test_fraction: Annotated[float, Opt(min=0.01, max=0.99, help="Share of each class in test/.")] = DEMO.test_fraction,
    json_output: JsonFlag = False,
) -> None:
    """Write the seeded synthetic dermoscopy-like demo data set (benign vs malignant); replaces an earlier one."""
    from toolkit.data.demo import write_demo_dataset

    counts = write_demo_dataset(out_dir, DemoDataConfig(per_class, image_size, seed, test_fraction))
    if json_output:
        return _echo_json({"out": str(out_dir), "counts": counts})
    for split, per in counts.items():
        typer.echo(f"{split}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    typer.echo(f"wrote {out_dir}")


@app.command("check")
@user_errors
def check(
    data_dir: Annotated[Path, Arg(help="Data folder, laid out as for toolkit train.")],
    out: Annotated[Path | None, Opt(help="Write check_report.json and samples.png into this folder.")] = None,
    strict: Annotated[
        bool, Opt(help="Exit 1 when a test image duplicates a training or validation image.")
    ] = CHECK.strict,
    val_split: Annotated[float, Opt(min=0, max=0.9, help="As toolkit train: validation share.")] = SPLIT.val_split,
    test_split: Annotated[float, Opt(min=0, max=0.9, help="As toolkit train: test share.")] = SPLIT.test_split,
    seed: Annotated[int, Opt(help="As toolkit train: the split's seed.")] = SPLIT.seed,
    groups: Annotated[str | None, Opt(metavar="CSV", help="As toolkit train: path,group rows.")] = SPLIT.groups,
    group_pattern: Annotated[
        str | None, Opt(metavar="REGEX", help="As toolkit train: a group from each path.")
    ] = SPLIT.group_pattern,
    near_bits: Annotated[int, Opt(min=0, max=64, help="Perceptual-hash bits within which images are compared.")] = (
        CHECK.near_bits
    ),
    near_mad: Annotated[
        float, Opt(min=0, max=255, help="Mean grey-level difference at or below which they are duplicates.")
    ] = CHECK.near_mad,
    samples_per_class: Annotated[int, Opt(min=1, help="Images per class in samples.png.")] = CHECK.samples_per_class,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Check a data set before training: counts, unreadable files, sizes, duplicates and leaks across splits."""
    from toolkit.console import print_check_report
    from toolkit.data.check import check_dataset, write_report, write_samples

    use_progress(quiet or json_output)
    split_options = SplitOptions(val_split, test_split, seed, groups=groups, group_pattern=group_pattern)
    options = CheckOptions(near_bits, near_mad, samples_per_class, strict=strict)
    report = check_dataset(data_dir, split_options, options)
    if out is not None:
        write_report(report, out)
        write_samples(data_dir, split_options, Path(out) / "samples.png", samples_per_class)
    if json_output:
        _echo_json(report.to_json())
    else:
        print_check_report(report, out)
    if strict and report.test_leaks:
        raise typer.Exit(1)


@app.command("explain")
@user_errors
def explain(
    model: Annotated[Path, Arg(help="A run's best.keras, or a heatmap artifact (toolkit export --heatmap).")],
    images: Annotated[list[Path], Arg(help="Image files or folders.")],
    out: Annotated[Path, Opt(help="Folder for one overlay PNG per image.")] = Path("explain"),
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Heatmaps: where in each image the decision came from (Grad-CAM), as overlay PNGs."""
    from toolkit.explain import check_explainable, explain_images, write_overlay
    from toolkit.imaging import collect_images
    from toolkit.progress import track

    use_progress(quiet or json_output)
    classifier = load_classifier(model)  # TensorFlow only for a .keras file
    check_explainable(classifier)
    files, problems = collect_images(images)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    results = explain_images(classifier, files)
    out.mkdir(parents=True, exist_ok=True)
    for k, result in enumerate(track(results, "writing overlays")):
        write_overlay(result, out / f"{k:04d}_{Path(result.image).stem}.png")
    if json_output:
        _echo_json([r.to_json() for r in results])
    else:
        for r in results:
            typer.echo(f"{r.image}\t{r.label} {r.probability:.3f}\tpeak at x {r.peak[0]:.2f}, y {r.peak[1]:.2f}")
        typer.echo(f"wrote {len(results)} overlays into {out}", err=True)
    if problems:
        raise typer.Exit(2)


@app.command("bases")
@user_errors
def bases(json_output: JsonFlag = False) -> None:
    """List the base networks: GFLOP, parameters, sizes, fine-tuning cuts, ImageNet top-1, weights here."""
    from toolkit.bases.catalog import base_rows
    from toolkit.console import print_bases

    rows = base_rows()
    if json_output:
        return _echo_json(rows)
    print_bases(rows)


HEATMAP_HELP = "Grad-CAM as a second output: *_heatmap files (plain files untouched), maps gated against Keras's."
INT8_MAX_DROP_HELP = (
    "int8, dynamic: allowed accuracy drop (points); tries each calibration, then keeps worst layers float."
)
CALIBRATION_HELP = "int8 activation ranges (ONNX and TFLite)."


@app.command()
@user_errors
def export(
    ctx: typer.Context,
    run_dir: Annotated[Path, Arg(help="A run folder made by `toolkit train`.")],
    format: Annotated[
        ExportTarget,
        Opt(
            help="all: every model file (ONNX, TFLite, OpenVINO IR); web: a static page (onnxruntime-web) per precision."
        ),
    ] = EXPORT.format,
    precision: Annotated[
        str | None,
        Opt(callback=_csv(Precision), help="Comma-separated: float32,float16,dynamic,int8,bf16."),
    ] = EXPORT.precisions,
    opset: Annotated[int, Opt(min=7, max=18, help="ONNX opset (tf2onnx 1.17: up to 18).")] = EXPORT.opset,
    calib_images: Annotated[
        int, Opt(min=1, help="Training images (stratified) calibrating int8.")
    ] = EXPORT.calib_images,
    calibration: Annotated[Calibration, Opt(help=CALIBRATION_HELP)] = EXPORT.calibration,
    calibration_percentile: Annotated[
        float, Opt(help="--calibration percentile: which one.")
    ] = EXPORT.calibration_percentile,
    diagnose: Annotated[
        bool, Opt(help="Per-layer int8 report (export/quant_report.*); also on a failed gate.")
    ] = EXPORT.diagnose,
    int8_max_drop: Annotated[float | None, Opt(min=0, max=100, help=INT8_MAX_DROP_HELP)] = EXPORT.int8_max_drop,
    int8_max_float_layers: Annotated[int, Opt(min=1, help="--int8-max-drop's budget of float layers.")] = (
        EXPORT.int8_max_float_layers
    ),
    parity_images: Annotated[
        int, Opt(min=1, help="Gate images: validation, then training images (stratified, seeded); never test.")
    ] = EXPORT.parity_images,
    data: Annotated[Path | None, Opt(help="Data folder, if the run's own has moved.")] = EXPORT.data_dir,
    max_diff: Annotated[
        float | None, Opt(help="Relax the float max |diff| threshold.")
    ] = EXPORT.overrides.max_abs_diff,
    min_agreement: Annotated[float | None, Opt(help="Relax the top-1 agreement threshold (0..1).")] = (
        EXPORT.overrides.min_agreement
    ),
    max_accuracy_drop: Annotated[float | None, Opt(help="Relax the int8 accuracy drop (0..1).")] = (
        EXPORT.overrides.max_accuracy_drop
    ),
    max_ece_increase: Annotated[
        float | None, Opt(min=0, max=1, help="Relax the bound on an artifact's ECE increase over Keras's (0..1).")
    ] = EXPORT.overrides.max_ece_increase,
    max_map_diff: Annotated[
        float | None, Opt(min=0, max=1, help="--heatmap: relax the bound on the maps' difference from Keras's (0..1).")
    ] = EXPORT.overrides.max_map_diff,
    heatmap: Annotated[bool, Opt(help=HEATMAP_HELP)] = EXPORT.heatmap,
    wait: WaitFlag = EXPORT.wait,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Export the best model to ONNX, TFLite or a web page; each artifact must pass the parity gate (else exit 1)."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_export_table, print_quant_report
    from toolkit.export import export_run, parity_failure_message
    from toolkit.parity import ParityOverrides

    use_progress(quiet or json_output)
    overrides = ParityOverrides(max_diff, min_agreement, max_accuracy_drop, max_ece_increase, max_map_diff)
    data_dir = str(data) if data else None
    options = _options(ExportOptions, ctx.params, precisions=precision, data_dir=data_dir, overrides=overrides)
    report = export_run(run_dir, options)
    if json_output:
        _echo_json(report.manifest)
    else:
        print_export_table(report.manifest)
        typer.echo(f"manifest: {report.manifest_path}")
        if report.diagnosis is not None:
            print_quant_report(report.diagnosis)
    if report.failed:
        raise ParityError(parity_failure_message(report.failed))


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, Arg(help=".keras, .onnx, .tflite or .xml (OpenVINO IR) model file.")],
    data_dir: Annotated[Path, Arg(help="A labelled folder: DATA_DIR/<class>/images.")],
    out: Annotated[Path | None, Opt(help="Write metrics.json, confusion.png and roc.png here.")] = None,
    device: DeviceFlag = LOAD.device,
    threads: ThreadsFlag = LOAD.threads,
    batch_size: Annotated[int, Opt(min=1)] = EVALUATE.batch_size,
    verify: VerifyFlag = LOAD.verify,
    allow_external_data: ExternalData = LOAD.allow_external_data,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Accuracy, AUC, per-class precision/recall/F1 and the confusion matrix at the model's operating point."""
    from toolkit.evaluate import evaluate_model, format_calibration, format_metrics

    use_progress(quiet or json_output)
    classifier = load_classifier(
        model, device=device.value, threads=threads, verify=verify, allow_external_data=allow_external_data
    )
    result = evaluate_model(classifier, data_dir, out, batch_size=batch_size)
    if json_output:
        return _echo_json(result)
    typer.echo(format_metrics(result.metrics))
    typer.echo(format_calibration(result))
    if result.skipped:
        typer.echo(f"{len(result.skipped)} files skipped (unreadable or not images)", err=True)
    if out:
        typer.echo(f"wrote metrics.json and plots into {out}")


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    targets: Annotated[list[Path], Arg(help="A run folder, or one or more model files.")],
    format: Annotated[
        str | None,
        Opt(callback=_csv(BenchFormat), help="Comma-separated: keras,onnx,tflite,openvino."),
    ] = BENCH.formats,
    precision: Annotated[
        str | None,
        Opt(callback=_csv(Precision), help="Comma-separated: float32,float16,dynamic,int8,bf16."),
    ] = BENCH.precisions,
    batch_size: Annotated[str, Opt(help="Comma-separated batch sizes.")] = ",".join(map(str, BENCH.batches)),
    warmup: Annotated[int, Opt(min=0, help="Untimed runs first.")] = BENCH.warmup,
    runs: Annotated[int, Opt(min=1, help="Timed runs per batch size.")] = BENCH.runs,
    seconds: Annotated[float | None, Opt(help="Time each batch size this long instead of --runs.")] = BENCH.seconds,
    threads: ThreadsFlag = BENCH.threads,
    verify: VerifyFlag = BENCH.verify,
    data: Annotated[Path | None, Opt(help="Labelled folder for accuracy (default: the run's validation).")] = (
        BENCH.data_dir
    ),
    device: Annotated[Device, Opt(help="auto: CPU rows, plus CUDA rows where ONNX has CUDA.")] = Device(BENCH.device),
    wait: WaitFlag = BENCH.wait,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Latency, throughput, memory, size and accuracy of every format, side by side."""
    from toolkit.bench import run_bench
    from toolkit.bench.types import parse_batches
    from toolkit.console import print_bench_report
    from toolkit.errors import BenchError

    batches = parse_batches(batch_size)
    use_progress(quiet or json_output)
    run_dir = targets[0] if len(targets) == 1 and targets[0].is_dir() else None
    files = [] if run_dir else targets
    for f in files:
        if not f.is_file():
            raise BenchError(f"not found: {f}")
    data_dir = str(data) if data else None
    options = _options(
        BenchOptions, ctx.params, formats=format, precisions=precision, batches=batches, data_dir=data_dir
    )
    report = run_bench(run_dir, files, options)
    if json_output:
        return _echo_json(report.to_json())
    print_bench_report(report, batches)


app.command(cls=PanelledCommand)(cli_train.train)
app.command()(cli_train.tune)
app.command()(cli_runtime.predict)
app.command()(cli_runtime.serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
