"""The commands that run an exported model for others: `predict` (here or on a Ray cluster) and `serve`.

Registered on `cli.app` like the rest; kept apart so each command module stays readable.
Defaults come from the library's dataclasses (LoadOptions, PredictOptions, BatchOptions,
ServeOptions), as everywhere in the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.batch.options import BatchOptions, Engine
from toolkit.cli_flags import Arg, DeviceFlag, ExternalData, Opt, ThreadsFlag, VerifyFlag, options_from
from toolkit.console import load_classifier, user_errors
from toolkit.errors import ToolkitError
from toolkit.runtime import LoadOptions, PredictOptions
from toolkit.runtime.base import PixelScale
from toolkit.serve.options import ServeOptions

LOAD = LoadOptions()
PREDICT = PredictOptions()
BATCH = BatchOptions()
SERVE = ServeOptions()
RAY_TABLE = Path("predictions.parquet")  # --engine ray writes a table; this one unless --out names another


@user_errors
def predict(
    model: Annotated[Path, Arg(help=".onnx, .tflite, .xml (OpenVINO IR) or .keras model file.")],
    images: Annotated[list[Path], Arg(help="Image files or folders.")],
    top_k: Annotated[int, Opt(min=1, help="Show the k most likely classes.")] = PREDICT.top_k,
    json_output: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    device: DeviceFlag = LOAD.device,
    threads: ThreadsFlag = LOAD.threads,
    batch_size: Annotated[int, Opt(min=1)] = PREDICT.batch_size,
    labels: Annotated[str | None, Opt(help="Comma-separated labels for models made elsewhere.")] = LOAD.labels,
    pixel_scale: Annotated[PixelScale | None, Opt(help="For models made elsewhere.")] = LOAD.pixel_scale,
    verify: VerifyFlag = LOAD.verify,
    allow_external_data: ExternalData = LOAD.allow_external_data,
    engine: Annotated[Engine, Opt(help="local: this process; ray: a Ray actor pool (the [ray] extra).")] = BATCH.engine,
    address: Annotated[str | None, Opt(help="ray: the cluster to join (default: start a local one).")] = BATCH.address,
    workers: Annotated[int, Opt(min=1, help="ray: actors, one loaded model and one CPU each.")] = BATCH.workers,
    out: Annotated[
        Path | None, Opt(help="Write one row per file to this .parquet or .csv (ray default: predictions.parquet).")
    ] = None,
) -> None:
    """Classify images with an exported model (no TensorFlow needed for .onnx/.tflite); exit 2 if any failed."""
    from toolkit.imaging import collect_images

    load_options = {
        "device": device.value,
        "threads": threads,
        "labels": labels.split(",") if labels else None,
        "pixel_scale": pixel_scale.value if pixel_scale else None,
        "verify": verify,
        "allow_external_data": allow_external_data,
    }
    if engine != Engine.ray and (address is not None or workers != BATCH.workers):
        raise ToolkitError("--address and --workers are for --engine ray")
    classifier = load_classifier(model, **load_options)
    paths, problems = collect_images(images)
    if engine == Engine.ray or out is not None:
        options = BatchOptions(engine=engine.value, address=address, workers=workers)
        failed = _predict_to_table(classifier, paths, problems, out or RAY_TABLE, batch_size, load_options, options)
    else:
        from toolkit.console import print_predictions

        failed = print_predictions(classifier, paths, problems, PredictOptions(top_k, batch_size), json_output)
    if failed:
        raise typer.Exit(2)


def _predict_to_table(
    classifier, paths, problems, out: Path, batch_size: int, load_options: dict, options: BatchOptions
) -> int:
    """The table form of predict (either engine); returns how many inputs failed."""
    from toolkit.batch.run import predict_to_table

    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if options.engine == Engine.ray and load_options["threads"] is None:
        load_options = {**load_options, "threads": 1}  # each actor holds one CPU
    summary = predict_to_table(classifier, [str(p) for p in paths], out, options, batch_size, load_options)
    typer.echo(
        f"wrote {summary.rows} rows to {summary.out} ({summary.failed} unreadable; {classifier.format} "
        f"on {options.engine}{f' x{options.workers}' if options.engine == Engine.ray else ''})",
        err=True,
    )
    return summary.failed + len(problems)


@user_errors
def serve(
    model: Annotated[Path, Arg(help=".onnx, .tflite, .xml (OpenVINO IR) or .keras model file.")],
    host: Annotated[str, Opt(help="Address to listen on (0.0.0.0: every interface).")] = SERVE.host,
    port: Annotated[int, Opt(help="TCP port (0: any free port; the chosen one is printed).")] = SERVE.port,
    max_batch_size: Annotated[int, Opt(help="Images per model run (dynamic batching).")] = SERVE.max_batch_size,
    max_wait_ms: Annotated[float, Opt(help="How long a batch waits for more requests.")] = SERVE.max_wait_ms,
    workers: Annotated[int, Opt(help="Loaded model copies, one batch at a time each.")] = SERVE.workers,
    model_name: Annotated[str | None, Opt(help="Name in the URLs (default: the file's stem).")] = SERVE.model_name,
    device: DeviceFlag = SERVE.device,
    threads: Annotated[int | None, Opt(min=1, help="Threads per worker (default: cores / workers).")] = SERVE.threads,
    verify: VerifyFlag = SERVE.verify,
    max_body_mb: Annotated[float, Opt(help="Larger request bodies get 413.")] = SERVE.max_body_mb,
    max_decode_mb: Annotated[
        float, Opt(help="Memory all requests may hold at once while read and decoded (beyond: 413 or 503).")
    ] = SERVE.max_decode_mb,
    header_timeout_s: Annotated[
        float, Opt(help="Close a connection whose request head has not arrived in this long.")
    ] = SERVE.header_timeout_s,
    body_timeout_s: Annotated[
        float, Opt(help="A request body not received in this long gets 408.")
    ] = SERVE.body_timeout_s,
    drain_s: Annotated[
        float, Opt(help="On SIGTERM/SIGINT, readiness answers 503 this long before the listener closes.")
    ] = SERVE.drain_s,
    graceful_timeout_s: Annotated[
        float, Opt(help="Then finish in-flight requests for at most this long (later ones get 503).")
    ] = SERVE.graceful_timeout_s,
) -> None:
    """Serve a model over HTTP on the Open Inference Protocol (KServe v2), with /classify and /metrics."""
    from toolkit.serve.server import serve as run_server

    options = options_from(ServeOptions, locals())

    def announce(listening) -> None:
        typer.echo(f"serving {listening.model_name} ({listening.description}) at {listening.url}", err=True)
        typer.echo(f"  {listening.url}/v2/models/{listening.model_name}/infer  (Open Inference Protocol v2)", err=True)
        typer.echo(f"  {listening.url}/v2/models/{listening.model_name}/classify  (image bytes)", err=True)
        typer.echo(f"  {listening.url}/metrics  (Prometheus); Ctrl-C or SIGTERM stops it gracefully", err=True)

    run_server(model, options, announce, load_classifier)
    typer.echo("stopped", err=True)
