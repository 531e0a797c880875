"""The `toolkit` command line: parse flags, call the library, print results.

Heavy imports (TensorFlow, onnxruntime) happen inside the commands that need
them so `toolkit --help` stays instant. User errors arrive as `ToolkitError`
and are printed here, once, as a single line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from toolkit.errors import BenchError, ParityError, ToolkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, export, benchmark and serve image classifiers built on a frozen VGG16.",
)


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(func):
    """Turn `ToolkitError`s into one line on stderr and their exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ToolkitError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _echo_json(obj) -> None:
    from toolkit.fileio import to_json

    typer.echo(to_json(obj), nl=False)


@app.command("demo-data")
@user_errors
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/ and test/ into.")],
    per_class: Annotated[int, typer.Option(help="Images per class (train and test together).")] = 160,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same images.")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Share of each class written to test/.")] = 0.25,
) -> None:
    """Write the seeded synthetic dermoscopy-like demo data set (benign vs malignant)."""
    from toolkit.demo_data import DemoDataConfig, write_demo_dataset

    if per_class < 2 or size < 16 or not 0 < test_fraction < 1:
        raise ToolkitError("need --per-class >= 2, --size >= 16 and 0 < --test-fraction < 1")
    counts = write_demo_dataset(out_dir, DemoDataConfig(per_class, size, seed, test_fraction))
    for split, per in counts.items():
        typer.echo(f"{split}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    typer.echo(f"wrote {out_dir}")


@app.command()
@user_errors
def train(
    data_dir: Annotated[
        Path, typer.Argument(help="DATA_DIR/train/<class>/ + test|val|valid/<class>/, or DATA_DIR/<class>/.")
    ],
    out: Annotated[Path | None, typer.Option(help="Run folder (default models/<timestamp>).")] = None,
    image_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    epochs: Annotated[int, typer.Option(help="Epochs of the frozen-base phase.")] = 10,
    batch_size: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seeded runs are repeatable.")] = 0,
    val_split: Annotated[
        float, typer.Option(help="Validation share carved from train/ (or from a flat DATA_DIR/<class>/).")
    ] = 0.15,
    test_split: Annotated[float, typer.Option(help="Held-out test share of a flat DATA_DIR/<class>/ folder.")] = 0.15,
    validate_on_test: Annotated[
        bool, typer.Option(help="train/ + test/ only: validate on test/ as the Keras tutorial does (no held-out test).")
    ] = False,
    positive_class: Annotated[
        str | None, typer.Option(help="Two classes: the finding (AUC, sensitivity, threshold are for it).")
    ] = None,
    operating_point: Annotated[
        str | None,
        typer.Option(help="Two classes: sensitivity=S, specificity=S or threshold=T, chosen on validation."),
    ] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flip, shift, zoom, rotation.")] = True,
    aug_views: Annotated[int, typer.Option(help="Precompute K augmented views per image (0: fresh every epoch).")] = 0,
    cache_features: Annotated[
        bool,
        typer.Option(
            "--cache-features/--no-cache-features", help="Run the frozen base once, train the head on its output."
        ),
    ] = True,
    precision: Annotated[str, typer.Option(help="Frozen-base compute: auto|fp32|bf16|fp16.")] = "auto",
    head: Annotated[
        str, typer.Option(help="flatten (Flatten+Dense) or gap (GlobalAveragePooling+Dropout+Dense).")
    ] = "flatten",
    weights: Annotated[str, typer.Option(help="imagenet, none, or a local weights file.")] = "imagenet",
    allow_random_weights: Annotated[
        bool,
        typer.Option(help="If the ImageNet download fails, train from random weights (loudly) instead of failing."),
    ] = False,
    monitor: Annotated[str, typer.Option(help="Metric that picks the best epoch.")] = "val_loss",
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs (0: off).")] = 0,
    class_weight: Annotated[str, typer.Option(help="none or auto (balanced, for imbalanced data).")] = "none",
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs with block5 unfrozen after the frozen phase.")] = 0,
    fine_tune_lr: Annotated[float | None, typer.Option(help="Fine-tuning learning rate (default lr/10).")] = None,
    strategy: Annotated[str, typer.Option(help="default, mirrored or multiworker (reads TF_CONFIG).")] = "default",
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache (default RUN_DIR/cache).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No per-epoch progress bars.")] = False,
) -> None:
    """Train a classifier on a frozen ImageNet VGG16 base plus a small new head."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.train import TrainConfig
    from toolkit.train import train as run_training

    if out is None:
        if resume:
            raise ToolkitError("--resume needs --out RUN_DIR")
        import datetime

        out = Path("models") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    given = dict(locals(), data_dir=str(data_dir), out=str(out), cache_dir=str(cache_dir) if cache_dir else None)
    config = TrainConfig(**{f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given})
    result = run_training(config, resume=resume, log=typer.echo, verbose=0 if quiet else 1)
    typer.echo("")
    if result.val_accuracy != result.val_accuracy:  # NaN: a non-chief multi-worker task
        typer.echo("worker finished; the chief worker writes the run folder")
        return
    typer.echo(f"best epoch {result.best_epoch} ({result.monitor} {result.best_value:.4f})")
    auc = f"{result.val_auc:.3f}" if result.val_auc is not None else "n/a"
    typer.echo(f"validation accuracy {result.val_accuracy:.3f}, AUC {auc} (best model)")
    if result.test_accuracy is not None:
        typer.echo(f"test accuracy {result.test_accuracy:.3f} (held out, evaluated once; see metrics.json)")
    if result.decision is not None:
        d = result.decision
        typer.echo(
            f"decision: {d.positive_class} when its probability >= {d.threshold:.4g} ({d.criterion or 'default'})"
        )
    typer.echo(
        f"weights: {result.weights_source}; mode: {result.mode}; precision: {result.precision}; {result.seconds:.0f} s"
    )
    for warning in result.warnings:
        typer.secho(warning, fg=typer.colors.YELLOW, err=True)
    typer.echo(f"run folder: {result.run_dir} (best.keras, run.json, metrics.json, curves.png, confusion.png)")


@app.command()
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `toolkit train`.")],
    format: Annotated[str, typer.Option("--format", help="onnx, tflite or all.")] = "all",
    precision: Annotated[
        str | None, typer.Option(help="Comma-separated subset of float32,float16,dynamic,int8 (default: all).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (tf2onnx 1.17 supports up to 18).")] = 17,
    calib_images: Annotated[int, typer.Option(help="Training images used to calibrate int8.")] = 200,
    parity_images: Annotated[int | None, typer.Option(help="Cap on validation images for the parity gate.")] = None,
    data: Annotated[Path | None, typer.Option(help="Data folder, if the run's own has moved.")] = None,
    max_diff: Annotated[float | None, typer.Option(help="Relax the float max |diff| threshold.")] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Relax the top-1 agreement threshold (0..1).")] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Relax the int8 accuracy-drop threshold (0..1).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifest instead of the table.")] = False,
) -> None:
    """Export the best model to ONNX and TFLite; each artifact must pass the parity gate."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_export_table
    from toolkit.export import ExportOptions, export_run, parity_failure_message
    from toolkit.parity import ParityOverrides

    options = ExportOptions(
        format=format,
        precisions=[p.strip() for p in precision.split(",") if p.strip()] if precision else None,
        opset=opset,
        calib_images=calib_images,
        parity_images=parity_images,
        data_dir=str(data) if data else None,
        overrides=ParityOverrides(max_diff, min_agreement, max_accuracy_drop),
    )
    log = (lambda _m: None) if json_output else typer.echo
    report = export_run(run_dir, options, log=log)
    if json_output:
        _echo_json(report.manifest)
    else:
        print_export_table(report.manifest)
        typer.echo(f"manifest: {report.manifest_path}")
    if report.failed:
        raise ParityError(parity_failure_message(report.failed))


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Argument(help=".onnx, .tflite or .keras model file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    top_k: Annotated[int, typer.Option(help="Show the k most likely classes.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (ONNX).")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores).")] = None,
    batch_size: Annotated[int, typer.Option()] = 16,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels for models made elsewhere.")] = None,
    pixel_scale: Annotated[str | None, typer.Option(help="0..255 or 0..1, for models made elsewhere.")] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the sha256 in a manifest beside the model.")
    ] = True,
    allow_external_data: Annotated[
        bool, typer.Option(help="Let an ONNX model read external data files inside its own folder.")
    ] = False,
) -> None:
    """Classify images with an exported model (no TensorFlow needed for .onnx/.tflite)."""
    from toolkit.errors import DatasetError
    from toolkit.imaging import collect_images
    from toolkit.quiet import silenced
    from toolkit.runtime import load

    with silenced((2,)):  # LiteRT and TensorFlow announce themselves on stderr
        classifier = load(
            model,
            device=device,
            threads=threads,
            labels=labels.split(",") if labels else None,
            pixel_scale=pixel_scale,
            verify=verify,
            allow_external_data=allow_external_data,
        )
    paths, problems = collect_images(images)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    failed = len(problems)
    batch_paths: list[Path] = []
    batch_pixels: list = []

    def flush() -> None:
        if not batch_pixels:
            return
        import numpy as np

        probs = classifier.predict_arrays(np.stack(batch_pixels), batch_size)
        for path, p in zip(batch_paths, probs):
            result = classifier.to_prediction(p)
            if json_output:
                typer.echo(
                    json.dumps(
                        {
                            "image": str(path),
                            "label": result.label,
                            "score": result.score,
                            "probabilities": result.probabilities,
                        }
                    )
                )
            else:
                ranked = ", ".join(f"{label} {score:.3f}" for label, score in result.top_k(top_k))
                typer.echo(f"{path}\t{ranked}")
        batch_paths.clear()
        batch_pixels.clear()

    for path in paths:
        try:
            batch_pixels.append(classifier.preprocess(path))
            batch_paths.append(path)
        except DatasetError as exc:
            typer.echo(f"error: {path}: {exc}", err=True)
            failed += 1
        if len(batch_pixels) >= batch_size:
            flush()
    flush()
    if not json_output:
        typer.echo(f"[{classifier.format} on {classifier.provider}; labels from {classifier.label_source}]", err=True)
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help=".keras, .onnx or .tflite model file.")],
    data_dir: Annotated[Path, typer.Argument(help="A labelled folder: DATA_DIR/<class>/images.")],
    out: Annotated[Path | None, typer.Option(help="Write metrics.json and confusion.png here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (ONNX).")] = "auto",
    threads: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    allow_external_data: Annotated[
        bool, typer.Option(help="Let an ONNX model read external data files inside its own folder.")
    ] = False,
) -> None:
    """Accuracy, AUC, per-class precision/recall/F1 and the confusion matrix on a labelled folder."""
    if model.suffix.lower() == ".keras":
        from toolkit.tf_setup import import_tensorflow

        import_tensorflow()
    from toolkit.evaluate import evaluate_model, format_metrics
    from toolkit.quiet import silenced
    from toolkit.runtime import load

    with silenced((2,)):  # LiteRT and TensorFlow announce themselves on stderr
        classifier = load(model, device=device, threads=threads, verify=verify, allow_external_data=allow_external_data)
    result = evaluate_model(classifier, data_dir, out, batch_size=batch_size)
    typer.echo(format_metrics(result.metrics))
    if result.skipped:
        typer.echo(f"{len(result.skipped)} files skipped (unreadable or not images)", err=True)
    if out:
        plots = "confusion.png" + (", roc.png" if classifier.decision or len(classifier.labels) == 2 else "")
        typer.echo(f"wrote {out / 'metrics.json'}, {plots} into {out}")


@app.command()
@user_errors
def bench(
    targets: Annotated[list[Path], typer.Argument(help="A run folder, or one or more model files.")],
    formats: Annotated[
        str | None, typer.Option(help="Comma-separated subset, e.g. keras,onnx,tflite-int8 (default: all).")
    ] = None,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 3,
    runs: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 20,
    seconds: Annotated[float | None, typer.Option(help="Time each batch size for this long instead of --runs.")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads everywhere (default: all cores).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Labelled folder for accuracy (default: the run's validation set).")
    ] = None,
    cuda: Annotated[
        bool, typer.Option("--cuda/--no-cuda", help="Add ONNX CUDA rows where the provider exists.")
    ] = True,
) -> None:
    """Latency, throughput, memory, size and accuracy of every format, side by side."""
    from rich.console import Console
    from rich.progress import Progress

    from toolkit.bench import BenchOptions, run_bench
    from toolkit.console import print_bench_report

    try:
        batches = tuple(int(b) for b in batch.split(",") if b.strip())
    except ValueError:
        raise BenchError(f"--batch takes comma-separated integers, got {batch}") from None
    if not batches or min(batches) < 1 or runs < 1:
        raise BenchError("--batch sizes and --runs must be at least 1")
    run_dir = targets[0] if len(targets) == 1 and targets[0].is_dir() else None
    files = [] if run_dir else targets
    for f in files:
        if not f.is_file():
            raise BenchError(f"not found: {f}")
    options = BenchOptions(
        formats=[f.strip() for f in formats.split(",")] if formats else None,
        batches=batches,
        warmup=warmup,
        runs=runs,
        seconds=seconds,
        threads=threads,
        data_dir=str(data) if data else None,
        cuda=cuda,
    )
    console = Console(width=max(Console().width, 140))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("benchmarking", total=None)

        def progress(name: str, index: int, total: int) -> None:
            bar.update(task, total=total, completed=index, description=f"benchmarking {name}")

        report = run_bench(run_dir, files, options, progress)
    print_bench_report(console, report, batches)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
