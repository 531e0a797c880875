"""The `toolkit` command line: parse flags, call the library, print results.

Heavy imports (TensorFlow, onnxruntime) happen inside the commands that need
them so `toolkit --help` stays instant. Exit codes: 0 ok; 1 a quality gate
failed (parity); 2 bad input or usage; 3 an internal error (one line; `--debug`
shows the traceback); 130 interrupted. User errors arrive as `ToolkitError` and
are printed here, once, as a single line.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from toolkit import choices
from toolkit.console import csv_choices as _csv
from toolkit.console import echo_json as _echo_json
from toolkit.console import set_debug, user_errors
from toolkit.errors import ParityError, ToolkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, export, benchmark and serve image classifiers built on a frozen VGG16.",
)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(help="Show the traceback of an internal error (exit code 3).")] = False,
) -> None:
    """Exit codes: 0 ok, 1 quality gate failed, 2 bad input or usage, 3 internal error, 130 interrupted."""
    set_debug(debug)


def _progress(quiet: bool) -> None:
    from toolkit import progress

    progress.use(progress.for_terminal(quiet))


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON (no progress output).")]
DeviceFlag = Annotated[choices.Device, typer.Option(help="Where inference runs (cuda: ONNX only).")]
ImageSize = Annotated[int, typer.Option(min=16, help="Square image side in pixels.")]


@app.command("demo-data")
@user_errors
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/ and test/ into.")],
    per_class: Annotated[int, typer.Option(min=2, help="Images per class (train and test together).")] = 160,
    image_size: ImageSize = 224,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same images.")] = 0,
    test_fraction: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of each class in test/.")] = 0.25,
    json_output: JsonFlag = False,
) -> None:
    """Write the seeded synthetic dermoscopy-like demo data set (benign vs malignant); replaces an earlier one."""
    from toolkit.demo_data import DemoDataConfig, write_demo_dataset

    counts = write_demo_dataset(out_dir, DemoDataConfig(per_class, image_size, seed, test_fraction))
    if json_output:
        return _echo_json({"out": str(out_dir), "counts": counts})
    for split, per in counts.items():
        typer.echo(f"{split}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    typer.echo(f"wrote {out_dir}")


def _explicit_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (not defaults): `--resume` compares them with the stored config."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="DATA_DIR/train/<class>/ [+ val/] [+ test/], or DATA_DIR/<class>/.")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default models/<timestamp>).")] = None,
    image_size: ImageSize = 224,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the frozen-base phase.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seeded runs are repeatable.")] = 0,
    val_split: Annotated[float, typer.Option(help="Validation share carved from train/ (or a flat folder).")] = 0.15,
    test_split: Annotated[float, typer.Option(help="Held-out test share of a flat DATA_DIR/<class>/ folder.")] = 0.15,
    validate_on_test: Annotated[
        bool, typer.Option(help="train/ + test/ only: validate on test/ as the Keras tutorial does (no held-out test).")
    ] = False,
    positive_class: Annotated[str | None, typer.Option(help="Two classes: the finding (AUC, sensitivity).")] = None,
    operating_point: Annotated[
        str | None, typer.Option(help="Two classes: sensitivity=S, specificity=S or threshold=T, chosen on val.")
    ] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flip, shift, zoom, rotation.")] = True,
    aug_views: Annotated[int, typer.Option(min=0, help="Precompute K augmented views (0: fresh every epoch).")] = 0,
    cache_features: Annotated[
        bool, typer.Option("--cache-features/--no-cache-features", help="Run the frozen base once, train the head.")
    ] = True,
    base_precision: Annotated[
        choices.BasePrecision, typer.Option(help="Compute precision of the cached frozen-base passes.")
    ] = choices.BasePrecision.auto,
    head: Annotated[
        choices.Head, typer.Option(help="flatten (Flatten+Dense) or pooled: gap, gmp, gap+gmp (+Dropout+Dense).")
    ] = choices.Head.gap_gmp,
    dropout: Annotated[float, typer.Option(help="Dropout before the pooled heads' Dense layer.")] = 0.3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (0: Adam).")] = 0.0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the cross-entropy.")] = 0.0,
    weights: Annotated[str, typer.Option(help="imagenet, none, or a local weights file.")] = "imagenet",
    allow_random_weights: Annotated[
        bool, typer.Option(help="If the ImageNet download fails, train from random weights (loudly).")
    ] = False,
    monitor: Annotated[choices.Monitor, typer.Option(help="Metric that picks the best epoch.")] = (
        choices.Monitor.val_accuracy
    ),
    patience: Annotated[int, typer.Option(min=0, help="Early-stopping patience in epochs (0: off).")] = 0,
    class_weight: Annotated[choices.ClassWeight, typer.Option(help="auto: balanced, for imbalanced data.")] = (
        choices.ClassWeight.none
    ),
    fine_tune_epochs: Annotated[int, typer.Option(min=0, help="Epochs with the top blocks unfrozen afterwards.")] = 0,
    fine_tune_lr: Annotated[float | None, typer.Option(help="Fine-tuning learning rate (default lr/10).")] = None,
    fine_tune_schedule: Annotated[
        choices.Schedule, typer.Option(help="cosine: decay the fine-tuning rate to 0 over its epochs.")
    ] = choices.Schedule.constant,
    fine_tune_from: Annotated[
        choices.FineTuneFrom, typer.Option(help="First unfrozen block; trained on the cached output below it.")
    ] = choices.FineTuneFrom.block5,
    strategy: Annotated[choices.Strategy, typer.Option(help="multiworker reads TF_CONFIG.")] = (
        choices.Strategy.default
    ),
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache (default RUN_DIR/cache).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out (only --epochs may change).")] = (
        False
    ),
    quiet: Annotated[bool, typer.Option(help="No progress bars or per-epoch output.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Train a classifier on a frozen ImageNet VGG16 base plus a small new head."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_train_result
    from toolkit.train import TrainConfig
    from toolkit.train import train as run_training

    _progress(quiet or json_output)
    if out is None:
        if resume:
            raise ToolkitError("--resume needs --out RUN_DIR")
        import datetime

        out = Path("models") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in ctx.params.items()}
    values.update(data_dir=str(data_dir), out=str(out), cache_dir=str(cache_dir) if cache_dir else None)
    values["precision"] = values.pop("base_precision")
    config = TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig) if f.name in values})
    explicit = _explicit_options(ctx) - {"out", "resume", "quiet", "json_output"}
    explicit = {"precision" if name == "base_precision" else name for name in explicit} | {"data_dir"}
    log = (lambda _m: None) if json_output else typer.echo
    quiet_fit = 0 if quiet or json_output else 1
    result = run_training(config, resume=resume, log=log, verbose=quiet_fit, explicit=explicit)
    if json_output:
        return _echo_json(result)
    print_train_result(result)


INT8_MAX_DROP_HELP = "int8: allowed accuracy drop (points); tries each calibration, then keeps worst layers float."
CALIBRATION_HELP = "int8 activation ranges (ONNX and TFLite)."


@app.command()
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `toolkit train`.")],
    format: Annotated[
        choices.ExportFormat,
        typer.Option(
            help="all: every model file (ONNX, TFLite, OpenVINO IR); web: a static page (onnxruntime-web) per precision."
        ),
    ] = choices.ExportFormat.all,
    precision: Annotated[
        str | None,
        typer.Option(callback=_csv(choices.Precision), help="Comma-separated: float32,float16,dynamic,int8,bf16."),
    ] = None,
    opset: Annotated[int, typer.Option(min=7, max=18, help="ONNX opset (tf2onnx 1.17: up to 18).")] = 17,
    calib_images: Annotated[int, typer.Option(min=1, help="Training images (stratified) calibrating int8.")] = 200,
    calibration: Annotated[choices.Calibration, typer.Option(help=CALIBRATION_HELP)] = choices.Calibration.minmax,
    calibration_percentile: Annotated[float, typer.Option(help="--calibration percentile: which one.")] = 99.999,
    diagnose: Annotated[
        bool, typer.Option(help="Per-layer int8 report (export/quant_report.*); also on a failed gate.")
    ] = False,
    int8_max_drop: Annotated[float | None, typer.Option(min=0, max=100, help=INT8_MAX_DROP_HELP)] = None,
    int8_max_float_layers: Annotated[int, typer.Option(min=1, help="--int8-max-drop's budget of float layers.")] = 10,
    parity_images: Annotated[
        int | None, typer.Option(min=1, help="A seeded, class-stratified sample of validation for the gate.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Data folder, if the run's own has moved.")] = None,
    max_diff: Annotated[float | None, typer.Option(help="Relax the float max |diff| threshold.")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Relax the top-1 agreement threshold (0..1).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Relax the int8 accuracy drop (0..1).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Export the best model to ONNX, TFLite or a web page; each artifact must pass the parity gate (else exit 1)."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_export_table, print_quant_report
    from toolkit.export import ExportOptions, export_run, parity_failure_message
    from toolkit.parity import ParityOverrides

    _progress(quiet or json_output)
    options = ExportOptions(
        format=format.value,
        precisions=precision,
        opset=opset,
        calib_images=calib_images,
        calibration=calibration.value,
        calibration_percentile=calibration_percentile,
        diagnose=diagnose,
        int8_max_drop=int8_max_drop,
        int8_max_float_layers=int8_max_float_layers,
        parity_images=parity_images,
        data_dir=str(data) if data else None,
        overrides=ParityOverrides(max_diff, min_agreement, max_accuracy_drop),
    )
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


def _load_classifier(model: Path, **kwargs):
    """The runtime's classifier, with LiteRT's and TensorFlow's start-up lines kept off the terminal."""
    from toolkit.quiet import silenced
    from toolkit.runtime import load

    if model.suffix.lower() == ".keras":
        from toolkit.tf_setup import import_tensorflow

        import_tensorflow()
    with silenced((2,)):
        return load(model, **kwargs)


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Argument(help=".onnx, .tflite, .xml (OpenVINO IR) or .keras model file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    top_k: Annotated[int, typer.Option(min=1, help="Show the k most likely classes.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    device: DeviceFlag = choices.Device.auto,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads (default: all cores).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels for models made elsewhere.")] = None,
    pixel_scale: Annotated[choices.PixelScale | None, typer.Option(help="For models made elsewhere.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the sha256 in a manifest beside it.")] = (
        True
    ),
    allow_external_data: Annotated[bool, typer.Option(help="Let an ONNX model read data files beside it.")] = False,
) -> None:
    """Classify images with an exported model (no TensorFlow needed for .onnx/.tflite); exit 2 if any failed."""
    from toolkit.console import print_prediction
    from toolkit.imaging import collect_images

    classifier = _load_classifier(
        model,
        device=device.value,
        threads=threads,
        labels=labels.split(",") if labels else None,
        pixel_scale=pixel_scale.value if pixel_scale else None,
        verify=verify,
        allow_external_data=allow_external_data,
    )
    paths, problems = collect_images(images)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    failed = len(problems)
    for path, prediction, error in classifier.predict_files(paths, batch_size):
        if error is not None:
            typer.echo(f"error: {path}: {error}", err=True)
            failed += 1
        else:
            print_prediction(path, prediction, top_k, json_output)
    if not json_output:
        typer.echo(f"[{classifier.format} on {classifier.provider}; labels from {classifier.label_source}]", err=True)
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help=".keras, .onnx, .tflite or .xml (OpenVINO IR) model file.")],
    data_dir: Annotated[Path, typer.Argument(help="A labelled folder: DATA_DIR/<class>/images.")],
    out: Annotated[Path | None, typer.Option(help="Write metrics.json, confusion.png and roc.png here.")] = None,
    device: DeviceFlag = choices.Device.auto,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    allow_external_data: Annotated[bool, typer.Option(help="Let an ONNX model read data files beside it.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Accuracy, AUC, per-class precision/recall/F1 and the confusion matrix at the model's operating point."""
    from toolkit.evaluate import evaluate_model, format_metrics

    _progress(quiet or json_output)
    classifier = _load_classifier(
        model, device=device.value, threads=threads, verify=verify, allow_external_data=allow_external_data
    )
    result = evaluate_model(classifier, data_dir, out, batch_size=batch_size)
    if json_output:
        return _echo_json(result)
    typer.echo(format_metrics(result.metrics))
    if result.skipped:
        typer.echo(f"{len(result.skipped)} files skipped (unreadable or not images)", err=True)
    if out:
        typer.echo(f"wrote metrics.json and plots into {out}")


@app.command()
@user_errors
def bench(
    targets: Annotated[list[Path], typer.Argument(help="A run folder, or one or more model files.")],
    format: Annotated[
        str | None,
        typer.Option(callback=_csv(choices.BenchFormat), help="Comma-separated: keras,onnx,tflite,openvino."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(callback=_csv(choices.Precision), help="Comma-separated: float32,float16,dynamic,int8,bf16."),
    ] = None,
    batch_size: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 3,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per batch size.")] = 20,
    seconds: Annotated[float | None, typer.Option(help="Time each batch size this long instead of --runs.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads everywhere (default: all cores).")] = (
        None
    ),
    data: Annotated[Path | None, typer.Option(help="Labelled folder for accuracy (default: the run's validation).")] = (
        None
    ),
    device: Annotated[choices.Device, typer.Option(help="auto: CPU rows, plus CUDA rows where ONNX has CUDA.")] = (
        choices.Device.auto
    ),
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Latency, throughput, memory, size and accuracy of every format, side by side."""
    from toolkit.bench import BenchOptions, run_bench
    from toolkit.console import print_bench_report
    from toolkit.errors import BenchError

    try:
        batches = tuple(int(b) for b in batch_size.split(",") if b.strip())
    except ValueError:
        raise BenchError(f"--batch-size takes comma-separated integers, got {batch_size}") from None
    if not batches or min(batches) < 1:
        raise BenchError("--batch-size values must be at least 1")
    _progress(quiet or json_output)
    run_dir = targets[0] if len(targets) == 1 and targets[0].is_dir() else None
    files = [] if run_dir else targets
    for f in files:
        if not f.is_file():
            raise BenchError(f"not found: {f}")
    options = BenchOptions(
        formats=format,
        precisions=precision,
        batches=batches,
        warmup=warmup,
        runs=runs,
        seconds=seconds,
        threads=threads,
        data_dir=str(data) if data else None,
        device=device.value,
    )
    report = run_bench(run_dir, files, options)
    if json_output:
        return _echo_json({"machine": report.machine, "records": report.records})
    print_bench_report(report, batches)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
