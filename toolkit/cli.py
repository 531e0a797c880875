"""The `toolkit` command line: parse flags, call the library, print results.

Heavy imports (TensorFlow, onnxruntime) happen inside the commands that need
them so `toolkit --help` stays instant. User errors arrive as `ToolkitError`
and are printed here, once, as a single line.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any TensorFlow import

import typer

from toolkit.errors import ParityError, ToolkitError

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
    val_split: Annotated[float, typer.Option(help="Validation share for a flat DATA_DIR/<class>/ folder.")] = 0.2,
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
    from toolkit.train import TrainConfig, configure_tensorflow_logging
    from toolkit.train import train as run_training

    configure_tensorflow_logging()
    if out is None:
        if resume:
            raise ToolkitError("--resume needs --out RUN_DIR")
        import datetime

        out = Path("models") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    config = TrainConfig(
        data_dir=str(data_dir),
        out=str(out),
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_split=val_split,
        augment=augment,
        aug_views=aug_views,
        cache_features=cache_features,
        precision=precision,
        head=head,
        weights=weights,
        allow_random_weights=allow_random_weights,
        monitor=monitor,
        patience=patience,
        class_weight=class_weight,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_lr=fine_tune_lr,
        strategy=strategy,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    result = run_training(config, resume=resume, log=typer.echo, verbose=0 if quiet else 1)
    typer.echo("")
    if result.val_accuracy != result.val_accuracy:  # NaN: a non-chief multi-worker task
        typer.echo("worker finished; the chief worker writes the run folder")
        return
    typer.echo(f"best epoch {result.best_epoch} ({result.monitor} {result.best_value:.4f})")
    auc = f"{result.val_auc:.3f}" if result.val_auc is not None else "n/a"
    typer.echo(f"validation accuracy {result.val_accuracy:.3f}, AUC {auc} (best model)")
    typer.echo(
        f"weights: {result.weights_source}; mode: {result.mode}; precision: {result.precision}; {result.seconds:.0f} s"
    )
    for warning in result.warnings:
        typer.secho(warning, fg=typer.colors.YELLOW, err=True)
    typer.echo(f"run folder: {result.run_dir} (best.keras, run.json, metrics.json, curves.png, confusion.png)")


def _print_export_table(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="exports (parity against the Keras model)")
    for column in ("format", "precision", "size (MB)", "max diff", "agreement", "accuracy", "keras acc", "parity"):
        table.add_column(column, justify="right" if column not in ("format", "precision") else "left")
    for a in manifest.get("artifacts", []):
        p = a["parity"]
        table.add_row(
            a["format"],
            a["precision"],
            f"{a['size_bytes'] / 1e6:.1f}",
            f"{p['max_abs_diff']:.1e}",
            f"{p['top1_agreement']:.1%}",
            f"{p['accuracy']:.1%}",
            f"{p['reference_accuracy']:.1%}",
            "[green]pass[/green]" if p["passed"] else "[red]FAIL[/red]",
        )
    Console(width=max(Console().width, 110)).print(table)


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
        _print_export_table(report.manifest)
        typer.echo(f"manifest: {report.manifest_path}")
    if report.failed:
        raise ParityError(parity_failure_message(report.failed))


def _collect_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    from toolkit.imaging import image_extensions

    extensions = image_extensions()
    images: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
            )
            if not found:
                problems.append(f"{item}: no image files in folder")
            images += found
        elif item.exists():
            images.append(item)
        else:
            problems.append(f"{item}: file not found")
    return images, problems


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
    from toolkit.runtime import load

    classifier = load(
        model,
        device=device,
        threads=threads,
        labels=labels.split(",") if labels else None,
        pixel_scale=pixel_scale,
        verify=verify,
        allow_external_data=allow_external_data,
    )
    paths, problems = _collect_images(images)
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

    result = evaluate_model(
        model,
        data_dir,
        out,
        device=device,
        threads=threads,
        batch_size=batch_size,
        verify=verify,
        allow_external_data=allow_external_data,
    )
    typer.echo(format_metrics(result.metrics))
    if result.skipped:
        typer.echo(f"{len(result.skipped)} files skipped (unreadable or not images)", err=True)
    if out:
        typer.echo(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}")


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
    from rich.table import Table

    from toolkit.bench import BenchError, BenchOptions, best_rows, run_bench

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
    m = report.machine
    console.print(
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    )
    console.print(
        f"float32 matrix peak (numpy {m['fp32_matmul_size']}x{m['fp32_matmul_size']} sgemm, this run): "
        f"{m['fp32_matmul_peak_gflops']:.0f} GFLOP/s; model: {m['model_gflop_per_image']:.2f} GFLOP per image, "
        f"so the float32 floor is {m['fp32_floor_ms']:.0f} ms per image"
    )
    for b in batches:
        fastest, best_accurate = best_rows(report.records, b)
        table = Table(title=f"batch {b}")
        for column in (
            "backend",
            "provider",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "img/s",
            "load s",
            "peak MB",
            "size MB",
            "accuracy",
            "vs keras",
            "GFLOP/s",
            "% peak",
        ):
            table.add_column(column, justify="left" if column in ("backend", "provider") else "right")
        for r in (r for r in report.records if r.batch == b):
            provider = (
                r.provider
                if r.requested_device == r.provider
                else f"{r.provider} (asked {r.requested_device}; fell back)"
            )
            style = "bold green" if r is fastest else "bold cyan" if r is best_accurate else None
            table.add_row(
                r.name,
                provider,
                f"{r.p50_ms:.1f}",
                f"{r.p90_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.throughput_ips:.1f}",
                f"{r.load_s:.2f}",
                f"{r.peak_rss_mb:.0f}",
                f"{r.size_mb:.1f}",
                "n/a" if r.accuracy is None else f"{r.accuracy:.1%}",
                "" if r.speedup_vs_keras is None else f"{r.speedup_vs_keras:.2f}x",
                f"{r.gflops:.0f}",
                f"{r.percent_of_peak:.0f}%",
                style=style,
            )
        console.print(table)
    console.print("[bold green]green[/]: fastest; [bold cyan]cyan[/]: fastest within 1 point of the best accuracy")
    if report.out_dir:
        console.print(f"wrote {report.out_dir}/bench.json, bench.csv, bench.png")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
