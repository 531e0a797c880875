"""What the command line shows: one-line errors with their exit codes, results, tables (rich on a terminal).

Imports stay light (typer, rich): `toolkit --help` must not load TensorFlow or onnxruntime.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # Typer >= 0.29 vendors click
from typer.core import TyperGroup

from toolkit.errors import ToolkitError

if TYPE_CHECKING:
    from toolkit.bench import BenchReport
    from toolkit.facts import ModelFacts
    from toolkit.runtime import Prediction
    from toolkit.train import TrainResult


def use_progress(quiet: bool) -> None:
    """Progress bars on a terminal, one line per phase elsewhere, nothing when quiet."""
    from toolkit import progress

    progress.use(progress.for_terminal(quiet))


def load_classifier(model: Path, **kwargs):
    """The runtime's classifier, with LiteRT's and TensorFlow's start-up lines kept off the terminal."""
    from toolkit.quiet import silenced
    from toolkit.runtime import load

    if model.suffix.lower() == ".keras":
        from toolkit.tf_setup import import_tensorflow

        import_tensorflow()
    with silenced((2,)):
        classifier = load(model, **kwargs)
    if kwargs.get("verify", True) and not classifier.verified and classifier.format != "keras":
        typer.echo(f"warning: {model.name} carries no content digest: unverified (--no-verify silences this)", err=True)
    return classifier


def print_predictions(classifier, paths: list, problems: list[str], options, json_output: bool) -> int:
    """Stream `toolkit predict`'s results (one line or JSON object per image); returns how many failed."""
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    failed = len(problems)
    for path, prediction, error in classifier.predict_files(paths, options.batch_size):
        if error is not None:
            typer.echo(f"error: {path}: {error}", err=True)
            failed += 1
        else:
            print_prediction(path, prediction, options.top_k, json_output, classifier.info)
    if not json_output:
        typer.echo(
            f"[{classifier.format} on {classifier.provider}; labels from {classifier.label_source}; "
            f"probabilities {classifier.info.score_note}]",
            err=True,
        )
    return failed


def print_export_table(manifest: dict) -> None:
    table = Table(title="exports (parity against the Keras model)")
    for column in (
        "format",
        "precision",
        "size (MB)",
        "max diff",
        "agreement (flips/N)",
        "accuracy",
        "keras acc",
        "ECE (keras)",
        "Brier (keras)",
        "parity",
    ):
        table.add_column(column, justify="right" if column not in ("format", "precision") else "left")
    for a in manifest.get("artifacts", []):
        p = a["parity"]
        table.add_row(
            a["format"],
            " ".join(filter(None, (a["precision"], a.get("variant")))),  # as layout.artifact_name, format apart
            f"{a['size_bytes'] / 1e6:.1f}",
            f"{p['max_abs_diff']:.1e}",
            f"{p['top1_agreement']:.1%} ({p.get('flips', 0)}/{p['images']})",
            f"{p['accuracy']:.1%}",
            f"{p['reference_accuracy']:.1%}",
            f"{p.get('ece', 0):.1%} ({p.get('reference_ece', 0):.1%})",
            f"{p.get('brier', 0):.3f} ({p.get('reference_brier', 0):.3f})",
            "[green]pass[/green]" if p["passed"] else "[red]FAIL[/red]",
        )
    Console(width=max(Console().width, 140)).print(table)
    for a in manifest.get("artifacts", []):
        if "int8_fix" in a:
            typer.echo(int8_fix_line(a))


def print_check_report(report, out: Path | None, shown: int = 5) -> None:
    """`toolkit check`'s summary: counts, sizes, what is wrong, and the first pairs of each leak named."""
    table = Table(title=f"{report.root} ({report.layout})")
    table.add_column("split", justify="left")
    for cls in report.classes:
        table.add_column(cls, justify="right")
    for split, counts in report.counts.items():
        table.add_row(split, *(str(counts[c]) for c in report.classes))
    Console(width=max(Console().width, 100)).print(table)
    w, h, a = report.sizes["width"], report.sizes["height"], report.sizes["aspect"]
    typer.echo(
        f"sizes: width {w['min']:.0f}..{w['max']:.0f} (median {w['median']:.0f}), height {h['min']:.0f}..{h['max']:.0f} "
        f"(median {h['median']:.0f}), aspect {a['min']:.2f}..{a['max']:.2f}; imbalance {report.imbalance:.1f}:1 in train"
    )
    typer.echo(
        f"duplicates within a split: {len(report.duplicates)}; across splits: {len(report.leaks)} "
        f"({', '.join(f'{k} {n}' for k, n in sorted(report.leak_counts.items())) or 'none'}); "
        f"unreadable files: {len(report.unreadable)}"
    )
    for leak in report.leaks[:shown]:
        typer.echo(f"  {leak.kind} ({leak.split_a} / {leak.split_b}): {leak.a}  ==  {leak.b}")
    if len(report.leaks) > shown:
        typer.echo(f"  ... and {len(report.leaks) - shown} more (check_report.json: leaks)")
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if out is not None:
        typer.echo(f"wrote check_report.json and samples.png into {out}")


def int8_fix_line(entry: dict) -> str:
    """What `--int8-max-drop` did for one artifact, in one line."""
    fix = entry["int8_fix"]
    outcome = "passed" if entry["parity"]["passed"] else "still FAILS"
    calibrated = f", calibration {fix['calibration']['method']}" if "calibration" in fix else ""  # dynamic: none
    line = f"{entry['format']} {entry['precision']}: {outcome} after {len(fix['attempts'])} attempts{calibrated}"
    cost = f"{fix['latency_ms']['cost']:+.1f} ms batch-1" if "latency_ms" in fix else ""
    head = f"; the head kept in float ({cost})" if fix.get("float_head") else ""
    nodes = f"; {len(fix['float_layers'])} nodes kept in float ({cost}): {', '.join(fix['float_layers'])}"
    return line + head + (nodes if fix["float_layers"] else "")


def print_quant_report(path: Path, worst: int = 5) -> None:
    """The layers int8 hurts most, per artifact, from export/quant_report.json."""
    report = json.loads(Path(path).read_text())
    console = Console(width=max(Console().width, 110))
    for d in report["artifacts"]:
        table = Table(title=f"int8: the {worst} noisiest layers of {d['artifact']} ({report['images']} images)")
        table.add_column("tensor", justify="left")
        table.add_column(d["meaning"].split(":")[0], justify="right")
        for row in d["layers"][:worst]:
            table.add_row(row["tensor"][-70:], f"{row[d['metric']]:.3g}")
        console.print(table)
    typer.echo(f"full report: {path} and {Path(path).with_suffix('.png').name}")


BENCH_COLUMNS = ("backend", "provider", "p50 ms", "p90 ms", "p99 ms", "img/s", "load s", "peak MB", "size MB")
BENCH_COLUMNS += ("accuracy", "bal. acc", "vs keras", "GFLOP/s", "floor", "% floor")


def _bench_table(report: BenchReport, batch: int) -> Table:
    """One batch size's rows; green the fastest, cyan the fastest within 1 point of the best accuracy."""
    from toolkit.bench import best_rows

    fastest, best_accurate = best_rows(report.records, batch)
    table = Table(title=f"batch {batch}")
    for column in BENCH_COLUMNS:
        table.add_column(column, justify="left" if column in ("backend", "provider") else "right")
    for r in (r for r in report.records if r.batch == batch):
        asked = r.requested_device
        provider = r.provider if asked == r.provider else f"{r.provider} (asked {asked}; fell back)"
        style = "bold green" if r is fastest else "bold cyan" if r is best_accurate else None
        accuracy = "n/a" if r.accuracy is None else f"{r.accuracy:.1%}"
        balanced = "n/a" if r.balanced_accuracy is None else f"{r.balanced_accuracy:.1%}"
        speedup = "" if r.speedup_vs_keras is None else f"{r.speedup_vs_keras:.2f}x"
        timings = (
            f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.throughput_ips:.1f}",
            f"{r.load_s:.2f}",
        )
        sizes = (f"{r.peak_rss_mb:.0f}", f"{r.size_mb:.1f}")
        rate = "-" if r.gflops is None else f"{r.gflops:.0f}"
        share = "-" if r.percent_of_peak is None else f"{r.percent_of_peak:.0f}%"
        rates = (accuracy, balanced, speedup, rate, r.floor_precision, share)
        table.add_row(r.name, provider, *timings, *sizes, *rates, style=style)
    return table


def _recommendation_line(rec: dict | None) -> str:
    if rec is None:
        return "recommended: none (no exported artifact with a passed gate was benchmarked)"
    accuracy = "" if rec["accuracy"] is None else f", accuracy {rec['accuracy']:.1%}"
    floor = (
        ""
        if rec["floor_ms"] is None
        else f", {rec['percent_of_floor']:.0f}% of the {rec['floor_precision']} floor of {rec['floor_ms']:.1f} ms"
    )
    return (
        f"[bold]recommended on this machine[/]: {rec['name']} ({rec['p50_ms']:.1f} ms p50 at batch {rec['batch']}"
        f"{floor}{accuracy}; the fastest artifact that passed its gate)"
    )


def print_bench_report(report: BenchReport, batches: tuple[int, ...]) -> None:
    """The machine line, the float32 floor, then one table per batch size."""
    console = Console(width=max(Console().width, 140))
    m = report.machine
    console.print(
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    )
    console.print(f"matrix instruction sets: {', '.join(m.get('instruction_sets') or ['none found'])}")
    size = m["peak_matmul_size"]
    for precision, peak in m["peaks"].items():
        runtimes = ", ".join(f"{k} {v:.0f}" for k, v in peak["by_runtime"].items())
        kernels = "; ".join(f"{k}: {', '.join(used)}" for k, used in peak.get("kernels", {}).items())
        floor = (
            f", so the {precision} floor is {m['floor_ms'][precision]:.1f} ms per image "
            f"({m['model_gflop_per_image']:.2f} GFLOP)"
            if precision in m["floor_ms"]
            else " (no floor: counting the model's FLOPs needs Keras, toolkit[train])"
        )
        console.print(
            f"{precision} matrix peak ({size}x{size} matmul, best of {runtimes}): {peak['gflops']:.0f} GFLOP/s"
            + floor
            + (f"; kernels: {kernels}" if kernels else "")
        )
    for b in batches:
        console.print(_bench_table(report, b))
    console.print(
        "[bold green]green[/]: fastest; [bold cyan]cyan[/]: fastest within 1 point of the best accuracy; "
        "% floor: achieved rate over the peak of the row's own precision"
    )
    for r in report.records:
        if r.kernels and r.batch == batches[0]:
            used = ", ".join(f"{n} x {kernel}" for kernel, n in r.kernels.items())
            console.print(f"{r.name} kernels (OpenVINO's runtime model): {used}")
    console.print(_recommendation_line(report.recommendation))
    if report.out_dir:
        console.print(f"wrote {report.out_dir}/bench.json, bench.csv, bench.png")


def print_train_result(result: TrainResult) -> None:
    typer.echo("")
    if result.val_accuracy != result.val_accuracy:  # NaN: a non-chief multi-worker task
        typer.echo("worker finished; the chief worker writes the run folder")
        return
    typer.echo(f"best epoch {result.best_epoch} ({result.monitor} {result.best_value:.4f})")
    auc = f"{result.val_auc:.3f}" if result.val_auc is not None else "n/a"
    typer.echo(f"validation accuracy {result.val_accuracy:.3f}, AUC {auc} (best model); {result.val_summary}")
    if result.test_accuracy is not None:
        typer.echo(
            f"test accuracy {result.test_accuracy:.3f} (held out, evaluated once; see metrics.json); {result.test_summary}"
        )
    if result.calibration_summary:
        typer.echo(f"calibrated scores, {result.calibration_summary} (reliability.png)")
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
    typer.echo(f"run folder: {result.run_dir} (best.keras, run.json, metrics.json, curves.png, roc.png)")


def print_prediction(path: Path, prediction: Prediction, top_k: int, as_json: bool, facts: ModelFacts) -> None:
    """One image: its ranked probabilities and, beside them, whether they are calibrated."""
    if as_json:
        row = {"image": str(path), "label": prediction.label, "score": prediction.score}
        calibrated = facts.calibrated if facts.score_calibration is not None else None
        typer.echo(json.dumps({**row, "probabilities": prediction.probabilities, "calibrated": calibrated}))
    else:
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k(top_k))
        typer.echo(f"{path}\t{ranked}\t{facts.score_note.split(' (')[0]}")


INTERNAL_ERROR = 3
_debug = [False]


def set_debug(on: bool) -> None:
    """`toolkit --debug ...`: internal errors keep their traceback."""
    _debug[0] = on


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """The app's group: usage errors in one line (exit 2), and `--debug` keeping the documented codes.

    Typer would print a usage line, a hint and a boxed panel; the README promises one line.
    `--help` still shows the full help. An internal error under `--debug` shows its traceback
    and exits 3, as without `--debug`.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(2)
        except ClickException as exc:
            where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
            typer.echo(f"error: {where}{' '.join(exc.format_message().split())}", err=True)
            sys.exit(2 if isinstance(exc, UsageError) else exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        except Exception:  # only reached under --debug: user_errors turns everything else into one line
            traceback.print_exc()
            sys.exit(INTERNAL_ERROR)
        sys.exit(code if isinstance(code, int) else 0)


def user_errors(func):
    """One line on stderr and a documented exit code for everything but success."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ToolkitError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (typer.Exit, typer.Abort):
            raise
        except OSError as exc:  # an unwritable folder, a vanished file: the user's environment, not a bug
            _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 2)
        except Exception as exc:
            if _debug[0]:
                raise
            text = " ".join(str(exc).split())[:200]
            _fail(f"internal error ({type(exc).__name__}: {text}); run with --debug for the traceback", INTERNAL_ERROR)

    return wrapper


def echo_json(obj) -> None:
    from toolkit.fileio import to_json

    typer.echo(to_json(obj), nl=False)


def csv_choices(enum: type[Enum]):
    """A callback that splits "a,b" and checks each against `enum` before any work starts."""

    def parse(value: str | None) -> list[str] | None:
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        allowed = [e.value for e in enum]
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise typer.BadParameter(f"{', '.join(bad) or value!r} not among {', '.join(allowed)}")
        return items

    return parse


def print_bases(rows: list) -> None:
    """`toolkit bases` as a table (top-1 is the published ImageNet figure, not measured here)."""
    table = Table("base", "GFLOP", "params", "size", "min", "--fine-tune-from", "ImageNet top-1", "weights here")
    for r in rows:
        cuts = ", ".join(r.cuts)
        top1 = "" if r.imagenet_top1 is None else f"{r.imagenet_top1:.1f}%"
        table.add_row(
            r.name,
            f"{r.gflop:.2f}",
            f"{r.parameters / 1e6:.1f} M",
            str(r.default_size),
            str(r.min_size),
            cuts,
            top1,
            r.weights_here,
        )
    Console(width=max(Console().width, 120)).print(table)
    typer.echo(
        "GFLOP: counted on the graph, one image at the default size with a 2-class pooled head. "
        "--fine-tune-from: the first is the default (--json names each cut's last frozen layer). "
        "Top-1: as published (keras.io applications table, the ConvNeXt paper), not measured here."
    )
